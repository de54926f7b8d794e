// Webhook signatures: HMAC-SHA256 over "<unix seconds>.<body>", sent as `flotilla-signature: t=<s>,v1=<hex>`.
import { createHmac, timingSafeEqual } from "node:crypto";

export const SIGNATURE_HEADER = "flotilla-signature";

export function signWebhook(secret: string, body: string, unixSeconds: number): string {
  const mac = createHmac("sha256", secret).update(`${unixSeconds}.${body}`).digest("hex");
  return `t=${unixSeconds},v1=${mac}`;
}

/**
 * What a receiver does: recompute and compare in constant time, and refuse old timestamps
 * (default 5 minutes) so a captured request cannot be replayed later.
 */
export function verifyWebhook(
  secret: string,
  body: string,
  header: string,
  nowSeconds = Math.floor(Date.now() / 1000),
  toleranceSeconds = 300,
): boolean {
  const parts = Object.fromEntries(
    header.split(",").map((p) => p.split("=", 2) as [string, string]),
  );
  const t = Number(parts.t);
  if (!Number.isInteger(t) || !parts.v1 || Math.abs(nowSeconds - t) > toleranceSeconds)
    return false;
  const expected = Buffer.from(signWebhook(secret, body, t).split("v1=")[1]!, "hex");
  const given = Buffer.from(parts.v1, "hex");
  return given.length === expected.length && timingSafeEqual(given, expected);
}
