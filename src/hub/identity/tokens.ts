// API token secrets: random, prefixed so scanners and people recognize them, stored only as a hash.
import { createHash, randomBytes } from "node:crypto";

export const API_TOKEN_PREFIX = "flt_";

export function generateApiToken(): { secret: string; hash: Buffer; prefix: string } {
  const secret = `${API_TOKEN_PREFIX}${randomBytes(32).toString("base64url")}`;
  return {
    secret,
    hash: hashApiToken(secret),
    prefix: secret.slice(0, API_TOKEN_PREFIX.length + 6),
  };
}

export function hashApiToken(secret: string): Buffer {
  return createHash("sha256").update(secret).digest();
}

export function looksLikeApiToken(value: string): boolean {
  // 4-char prefix + 43 base64url chars for 32 bytes.
  return value.startsWith(API_TOKEN_PREFIX) && value.length === API_TOKEN_PREFIX.length + 43;
}
