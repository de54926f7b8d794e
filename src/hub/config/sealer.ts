// Sealing secrets at rest: AES-256-GCM under a master key, with the key id stored beside each value.
import { createHash, randomBytes } from "node:crypto";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { FlotillaError, openBox, sealBox } from "../../shared/index.js";

export interface MasterKey {
  id: string;
  key: Buffer;
}

/** A key from its base64 text (32 bytes); its id is a short hash, so ids never reveal keys. */
export function masterKeyFrom(text: string, source: string): MasterKey {
  const key = Buffer.from(text.trim(), "base64");
  if (key.length !== 32) {
    throw new FlotillaError(
      "config.invalid",
      `${source} must be 32 bytes in base64 (e.g. \`openssl rand -base64 32\`), got ${key.length} bytes`,
    );
  }
  return { id: createHash("sha256").update(key).digest("hex").slice(0, 16), key };
}

/** Embedded mode: a generated key in a 0600 file, created on first use. */
export function loadOrCreateKeyFile(path: string): MasterKey {
  if (!existsSync(path))
    writeFileSync(path, `${randomBytes(32).toString("base64")}\n`, { mode: 0o600 });
  chmodSync(path, 0o600);
  return masterKeyFrom(readFileSync(path, "utf8"), path);
}

/**
 * The current key seals; older keys still open what they sealed until `rotate-key` re-seals it.
 * The associated data binds a ciphertext to its row, so a value copied onto another key does not open.
 */
export class Keyring {
  private readonly byId: Map<string, MasterKey>;

  constructor(
    readonly current: MasterKey,
    previous: MasterKey[] = [],
  ) {
    this.byId = new Map([...previous, current].map((k) => [k.id, k]));
  }

  seal(plaintext: string, aad: string): { sealed: Buffer; keyId: string } {
    return { sealed: sealBox(this.current.key, plaintext, aad), keyId: this.current.id };
  }

  open(sealed: Buffer | Uint8Array, keyId: string, aad: string): string {
    const key = this.byId.get(keyId);
    if (!key) {
      throw new FlotillaError(
        "internal",
        `a secret was sealed with master key ${keyId}, which is not configured; add it to FLOTILLA_MASTER_KEYS_PREVIOUS`,
      );
    }
    return openBox(key.key, sealed, aad);
  }
}
