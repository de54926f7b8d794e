// Identifier generation: UUIDv7 (time-ordered, so primary-key indexes stay append-mostly) and
// random hex for trace and correlation ids.
import { randomFillSync } from "node:crypto";

// Every request draws ~40 random bytes for its ids (trace, span, correlation, request); one
// randomBytes call each cost ~5% of the hub's CPU per WhoAmI. Drawing them from a pool refilled 4 KiB
// at a time from the same CSPRNG is what crypto.randomUUID does too. Ids only: keys, tokens and
// secrets keep calling randomBytes directly.
const POOL_BYTES = 4096;
const pool = Buffer.alloc(POOL_BYTES);
let poolOffset = POOL_BYTES;

/** Where the next n pooled bytes start (n <= 4096), refilling the pool when it runs out. */
function reserve(n: number): number {
  if (poolOffset + n > POOL_BYTES) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const at = poolOffset;
  poolOffset += n;
  return at;
}

/** n random bytes (n <= 4096) for identifiers; a copy the caller may keep. */
export function randomIdBytes(n: number): Buffer {
  const at = reserve(n);
  return Buffer.from(pool.subarray(at, at + n));
}

/**
 * Ids in hex are cut from a window of 256 pooled bytes turned into hex at once: one encoding call
 * per ~6 requests' ids, not three per request (~1,400 instructions each in the gateway). A cut id
 * may share its window's 512 characters in memory, so no id keeps more than that alive.
 */
const HEX_WINDOW_BYTES = 256;
let hexWindow = "";
let hexWindowAt = 0;

/** n random bytes as 2n lowercase hex characters, for identifiers. */
export function randomIdHex(n: number): string {
  const chars = 2 * n;
  if (hexWindowAt + chars > hexWindow.length) {
    if (n > HEX_WINDOW_BYTES) return randomIdBytes(n).toString("hex");
    const at = reserve(HEX_WINDOW_BYTES);
    hexWindow = pool.toString("hex", at, at + HEX_WINDOW_BYTES);
    hexWindowAt = 0;
  }
  const hex = hexWindow.slice(hexWindowAt, hexWindowAt + chars);
  hexWindowAt += chars;
  return hex;
}

/** RFC 9562 UUIDv7, generated here because PostgreSQL 15 has no uuidv7(). */
export function uuidv7(now: number = Date.now()): string {
  const bytes = randomIdBytes(16);
  bytes[0] = Math.floor(now / 2 ** 40) & 0xff;
  bytes[1] = Math.floor(now / 2 ** 32) & 0xff;
  bytes[2] = (now >>> 24) & 0xff;
  bytes[3] = (now >>> 16) & 0xff;
  bytes[4] = (now >>> 8) & 0xff;
  bytes[5] = now & 0xff;
  bytes[6] = 0x70 | (bytes[6]! & 0x0f);
  bytes[8] = 0x80 | (bytes[8]! & 0x3f);
  const hex = bytes.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isUuid(value: string): boolean {
  return UUID.test(value);
}
