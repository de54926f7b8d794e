// Where webhooks may be sent: no loopback, link-local (cloud metadata), unspecified or private address unless the operator allows it.
import { lookup } from "node:dns/promises";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { isIP, type LookupFunction } from "node:net";
import { classifyAddress, hostKey, invalid } from "../../shared/index.js";

/** The operator's exceptions to the default refusal (FLOTILLA_WEBHOOK_ALLOW_PRIVATE, FLOTILLA_WEBHOOK_ALLOW_HOSTS). */
export interface DestinationPolicy {
  /** Allow loopback and private networks (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7): receivers on the hub's own host or LAN. */
  allowPrivateNetworks?: boolean;
  /** Host names or IP addresses allowed whatever they resolve to (matched against the URL's host, case-insensitive). */
  allowHosts?: string[];
}

function allowedHost(host: string, policy: DestinationPolicy): boolean {
  return (policy.allowHosts ?? []).some((h) => hostKey(h) === host);
}

function refusal(address: string, policy: DestinationPolicy): string | undefined {
  const kind = classifyAddress(address);
  if (kind === "public") return undefined;
  if (policy.allowPrivateNetworks && (kind === "private" || kind === "loopback")) return undefined;
  return kind;
}

const HINT =
  "webhooks are sent from the hub, so they may not reach its own host, its cloud metadata service or private networks; an operator can allow private networks (FLOTILLA_WEBHOOK_ALLOW_PRIVATE=true) or this host (FLOTILLA_WEBHOOK_ALLOW_HOSTS)";

/**
 * The check when an endpoint is created: an address literal, or a localhost name, that the
 * policy refuses is a validation error on `url`. Other names are checked at every delivery,
 * after resolution (a name's addresses can change after it was registered).
 */
export function checkDestinationUrl(raw: string, policy: DestinationPolicy): void {
  const url = new URL(raw);
  const host = hostKey(url.hostname);
  if (allowedHost(host, policy)) return;
  if (host === "localhost" || host.endsWith(".localhost")) {
    if (!policy.allowPrivateNetworks)
      throw invalid("url", `must not point at ${host} (loopback): ${HINT}`);
    return;
  }
  if (isIP(host) === 0) return;
  const kind = refusal(host, policy);
  if (kind) throw invalid("url", `must not point at ${host} (${kind} address): ${HINT}`);
}

export interface ResolvedDestination {
  address: string;
  family: 4 | 6;
}

/**
 * The check at delivery: resolves the URL's host and returns the address to connect to, refusing
 * when ANY of its addresses is refused (a name answering both a public and a private address
 * would otherwise reach the private one by luck). The caller connects to exactly this address,
 * so a DNS answer that changes between this check and the connection (a rebind) is never used.
 */
export async function resolveDestination(
  url: URL,
  policy: DestinationPolicy,
): Promise<ResolvedDestination> {
  const host = hostKey(url.hostname);
  const literal = isIP(host);
  const addresses = literal
    ? [{ address: host, family: literal as 4 | 6 }]
    : ((await lookup(host, { all: true, verbatim: true })) as ResolvedDestination[]);
  if (addresses.length === 0) throw new Error(`${host} has no address`);
  if (!allowedHost(host, policy)) {
    for (const a of addresses) {
      const kind = refusal(a.address, policy);
      if (kind)
        throw new DestinationRefused(
          `destination refused: ${host} resolves to ${a.address} (${kind} address); ${HINT}`,
        );
    }
  }
  return addresses[0]!;
}

/** A delivery the policy refused: recorded as the attempt's error, like a connection failure. */
export class DestinationRefused extends Error {
  override name = "DestinationRefused";
}

/**
 * POSTs to `url` over a fresh connection to exactly `to` (the checked address): the socket's
 * lookup answers with it instead of asking DNS again; TLS still verifies the URL's host name.
 * Redirects are not followed. Resolves with the status code once the response headers arrive.
 */
export function postPinned(
  url: URL,
  to: ResolvedDestination,
  o: { headers: Record<string, string>; body: string; timeoutMs: number },
): Promise<number> {
  const pinned: LookupFunction = (_host, options, callback) => {
    if (options.all) callback(null, [to]);
    else callback(null, to.address, to.family);
  };
  return new Promise<number>((resolve, reject) => {
    const req = (url.protocol === "https:" ? httpsRequest : httpRequest)(
      url,
      {
        method: "POST",
        headers: { ...o.headers, "content-length": String(Buffer.byteLength(o.body)) },
        lookup: pinned,
        // No pooled socket: one connected earlier (to an address checked then) is never reused.
        agent: false,
      },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    const timer = setTimeout(() => {
      const err = new Error(`no answer within ${o.timeoutMs} ms`);
      err.name = "TimeoutError";
      req.destroy(err);
    }, o.timeoutMs);
    req.once("close", () => clearTimeout(timer));
    req.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.end(o.body);
  });
}
