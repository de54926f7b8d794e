// Signed hub-to-agent HTTP requests (route() "direct", admin calls): an HMAC over the request
// under a key derived from the server's secret, so the secret itself never crosses the wire.
import { createHash, createHmac, hkdfSync, timingSafeEqual } from "node:crypto";

/** Headers of a signed request: when it was signed (ms since the epoch) and the HMAC. */
export const DIRECT_TIMESTAMP_HEADER = "x-flotilla-timestamp";
export const DIRECT_SIGNATURE_HEADER = "x-flotilla-signature";
/** The agent's path that takes a dispatch directly (a signed POST of the dispatch frame). */
export const AGENT_DIRECT_DISPATCH_PATH = "/v1/dispatch";
/**
 * A signature older or newer than this is refused: wide enough for clock skew between a hub
 * and its servers (NTP keeps them within a second), narrow enough that a captured request is
 * useless soon. A replay inside the window changes nothing: a dispatch is answered from the
 * agent's ledger, and status is read-only.
 */
export const DIRECT_MAX_SKEW_MS = 60_000;

/** The signing key: HKDF over the server's secret, domain-separated from its other uses. */
export function directKey(secret: string, serverId: string): Buffer {
  return Buffer.from(hkdfSync("sha256", secret, serverId, "flotilla/agent-direct/v1", 32));
}

function canonical(timestamp: string, method: string, path: string, body: string | Buffer) {
  const bodyHash = createHash("sha256").update(body).digest("hex");
  return `${timestamp}\n${method.toUpperCase()}\n${path}\n${bodyHash}`;
}

/** The two headers that sign a request with `key`. */
export function signDirect(
  key: Buffer,
  method: string,
  path: string,
  body: string | Buffer,
  now = Date.now(),
): Record<string, string> {
  const timestamp = String(now);
  const signature = createHmac("sha256", key)
    .update(canonical(timestamp, method, path, body))
    .digest("hex");
  return { [DIRECT_TIMESTAMP_HEADER]: timestamp, [DIRECT_SIGNATURE_HEADER]: signature };
}

/** Why a signed request is refused, or null when it is good. */
export function verifyDirect(
  key: Buffer,
  method: string,
  path: string,
  body: string | Buffer,
  timestamp: string | undefined,
  signature: string | undefined,
  now = Date.now(),
): string | null {
  if (!timestamp || !/^\d{1,16}$/.test(timestamp)) return "missing or malformed timestamp";
  if (!signature || !/^[0-9a-f]{64}$/.test(signature)) return "missing or malformed signature";
  if (Math.abs(now - Number(timestamp)) > DIRECT_MAX_SKEW_MS)
    return "timestamp outside the accepted window";
  const expected = createHmac("sha256", key)
    .update(canonical(timestamp, method, path, body))
    .digest();
  return timingSafeEqual(expected, Buffer.from(signature, "hex")) ? null : "signature mismatch";
}
