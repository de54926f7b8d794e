// Signed hub-to-agent HTTP requests (route() "direct", admin calls): an HMAC over the request
// under a key derived from the server's secret, so the secret itself never crosses the wire; a
// direct dispatch and its answer are also sealed (AES-256-GCM) under a second derived key, since
// the admin endpoint is plain HTTP and a dispatch carries decrypted service secrets.
import { createHash, createHmac, hkdfSync, timingSafeEqual } from "node:crypto";
import { openBox, sealBox } from "./aead.js";

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

/**
 * The sealing key of direct dispatches and their answers: HKDF over the same secret with its own
 * label, so it is never the signing key (one key, one use).
 */
export function directSealKey(secret: string, serverId: string): Buffer {
  return Buffer.from(hkdfSync("sha256", secret, serverId, "flotilla/agent-direct-seal/v1", 32));
}

/** What goes over the wire for a sealed direct dispatch or answer: the AEAD box, base64. */
interface SealedBody {
  v: 1;
  sealed: string;
}

/**
 * Associated data: the direction and where the box belongs, so a request cannot be reflected as
 * an answer, nor an answer to one dispatch passed off as another's.
 */
const requestAad = (path: string) => `flotilla/agent-direct/request\n${path}`;
const answerAad = (dispatchId: string) => `flotilla/agent-direct/answer\n${dispatchId}`;

function sealedText(body: string | Buffer): Buffer | null {
  try {
    const parsed = JSON.parse(body.toString()) as Partial<SealedBody>;
    if (parsed?.v !== 1 || typeof parsed.sealed !== "string") return null;
    return Buffer.from(parsed.sealed, "base64");
  } catch {
    return null;
  }
}

/** The body of a direct dispatch POST to `path`: the frame's JSON, sealed. */
export function sealDirectRequest(key: Buffer, path: string, frame: string): string {
  return JSON.stringify({ v: 1, sealed: sealBox(key, frame, requestAad(path)).toString("base64") });
}

/** The frame's JSON from a sealed dispatch body, or null when it is not sealed under `key`. */
export function openDirectRequest(key: Buffer, path: string, body: string | Buffer): string | null {
  const box = sealedText(body);
  if (!box) return null;
  try {
    return openBox(key, box, requestAad(path));
  } catch {
    return null;
  }
}

/** An agent's outcome for a dispatch, as the hub records it. */
export interface DirectOutcome {
  ok: boolean;
  result?: unknown;
  error?: string;
}

/** The agent's answer to dispatch `dispatchId`, sealed and stamped with when it was given. */
export function sealDirectAnswer(
  key: Buffer,
  dispatchId: string,
  outcome: DirectOutcome,
  now = Date.now(),
): string {
  const inner = JSON.stringify({ id: dispatchId, at: now, outcome });
  return JSON.stringify({
    v: 1,
    sealed: sealBox(key, inner, answerAad(dispatchId)).toString("base64"),
  });
}

/**
 * The outcome in an answer to `dispatchId`, or why it is refused: not sealed under `key`, about
 * another dispatch, stamped outside DIRECT_MAX_SKEW_MS, or not an outcome.
 */
export function openDirectAnswer(
  key: Buffer,
  dispatchId: string,
  body: string,
  now = Date.now(),
): { outcome: DirectOutcome } | { refused: string } {
  const box = sealedText(body);
  if (!box) return { refused: "the answer is not sealed" };
  let inner: { id?: unknown; at?: unknown; outcome?: Partial<DirectOutcome> };
  try {
    inner = JSON.parse(openBox(key, box, answerAad(dispatchId)));
  } catch {
    return { refused: "the answer does not open under this server's key" };
  }
  if (inner.id !== dispatchId) return { refused: "the answer is about another dispatch" };
  if (typeof inner.at !== "number" || Math.abs(now - inner.at) > DIRECT_MAX_SKEW_MS)
    return { refused: "the answer's timestamp is outside the accepted window" };
  const o = inner.outcome;
  if (!o || typeof o.ok !== "boolean" || (o.error !== undefined && typeof o.error !== "string"))
    return { refused: "the answer carries no outcome" };
  return {
    outcome: {
      ok: o.ok,
      ...(o.result !== undefined ? { result: o.result } : {}),
      ...(o.error !== undefined ? { error: o.error } : {}),
    },
  };
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

/** The header an agent signs its answer to a signed admin request in. */
export const DIRECT_ANSWER_SIGNATURE_HEADER = "x-flotilla-answer-signature";

/**
 * The agent's signature over its answer (status and body) to a signed admin request, bound to
 * that request's signature: an answer forged on the path, or replayed from an earlier request
 * (each request's signature differs by its timestamp), does not verify.
 */
export function signDirectAnswer(
  key: Buffer,
  requestSignature: string,
  status: number,
  body: string | Buffer,
): string {
  return createHmac("sha256", key)
    .update(`flotilla/agent-admin/answer\n${requestSignature}\n${status}\n`)
    .update(body)
    .digest("hex");
}

/** Whether an admin answer carries the agent's signature for this request. */
export function verifyDirectAnswer(
  key: Buffer,
  requestSignature: string,
  status: number,
  body: string | Buffer,
  signature: string | undefined,
): boolean {
  if (!signature || !/^[0-9a-f]{64}$/.test(signature)) return false;
  const expected = Buffer.from(signDirectAnswer(key, requestSignature, status, body), "hex");
  return timingSafeEqual(expected, Buffer.from(signature, "hex"));
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
