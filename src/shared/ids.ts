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

/** n random bytes (n <= 4096) for identifiers; a copy the caller may keep. */
export function randomIdBytes(n: number): Buffer {
  if (poolOffset + n > POOL_BYTES) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const out = Buffer.from(pool.subarray(poolOffset, poolOffset + n));
  poolOffset += n;
  return out;
}

/** n random bytes as 2n lowercase hex characters, for identifiers. */
export function randomIdHex(n: number): string {
  if (poolOffset + n > POOL_BYTES) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const hex = pool.toString("hex", poolOffset, poolOffset + n);
  poolOffset += n;
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
