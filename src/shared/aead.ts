// AES-256-GCM boxes (12-byte nonce | ciphertext | 16-byte tag): the one sealing primitive for
// config secrets on the hub and for the env an agent keeps in its pid files.
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";

const NONCE_BYTES = 12;
const TAG_BYTES = 16;

/** Seals plaintext under a 32-byte key; the associated data binds the box to where it belongs. */
export function sealBox(key: Buffer, plaintext: string, aad = ""): Buffer {
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv("aes-256-gcm", key, nonce);
  cipher.setAAD(Buffer.from(aad));
  const body = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
  return Buffer.concat([nonce, body, cipher.getAuthTag()]);
}

/** Opens a box sealed by sealBox with the same key and associated data; throws if tampered. */
export function openBox(key: Buffer, box: Buffer | Uint8Array, aad = ""): string {
  const buf = Buffer.from(box);
  const decipher = createDecipheriv("aes-256-gcm", key, buf.subarray(0, NONCE_BYTES));
  decipher.setAAD(Buffer.from(aad));
  decipher.setAuthTag(buf.subarray(buf.length - TAG_BYTES));
  return Buffer.concat([
    decipher.update(buf.subarray(NONCE_BYTES, buf.length - TAG_BYTES)),
    decipher.final(),
  ]).toString("utf8");
}
