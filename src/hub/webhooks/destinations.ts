// Where webhooks may be sent: no loopback, link-local (cloud metadata), unspecified or private address unless the operator allows it.
import { lookup } from "node:dns/promises";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { BlockList, isIP, type LookupFunction } from "node:net";
import { invalid } from "../../shared/index.js";

/** The operator's exceptions to the default refusal (FLOTILLA_WEBHOOK_ALLOW_PRIVATE, FLOTILLA_WEBHOOK_ALLOW_HOSTS). */
export interface DestinationPolicy {
  /** Allow loopback and private networks (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7): receivers on the hub's own host or LAN. */
  allowPrivateNetworks?: boolean;
  /** Host names or IP addresses allowed whatever they resolve to (matched against the URL's host, case-insensitive). */
  allowHosts?: string[];
}

type AddressClass = "loopback" | "link-local" | "unspecified" | "private" | "reserved" | "public";

function blockList(subnets: Array<[string, number, "ipv4" | "ipv6"]>): BlockList {
  const list = new BlockList();
  for (const [net, prefix, type] of subnets) list.addSubnet(net, prefix, type);
  return list;
}

const CLASSES: Array<[Exclude<AddressClass, "public">, BlockList]> = [
  [
    "unspecified",
    blockList([
      ["0.0.0.0", 8, "ipv4"],
      ["::", 128, "ipv6"],
    ]),
  ],
  [
    "loopback",
    blockList([
      ["127.0.0.0", 8, "ipv4"],
      ["::1", 128, "ipv6"],
    ]),
  ],
  // 169.254.169.254 is the metadata service of AWS, GCP, Azure and OpenStack.
  [
    "link-local",
    blockList([
      ["169.254.0.0", 16, "ipv4"],
      ["fe80::", 10, "ipv6"],
    ]),
  ],
  [
    "private",
    blockList([
      ["10.0.0.0", 8, "ipv4"],
      ["172.16.0.0", 12, "ipv4"],
      ["192.168.0.0", 16, "ipv4"],
      ["100.64.0.0", 10, "ipv4"],
      ["fc00::", 7, "ipv6"],
    ]),
  ],
  // Multicast, broadcast and the reserved 240/4: never a webhook receiver.
  [
    "reserved",
    blockList([
      ["224.0.0.0", 4, "ipv4"],
      ["240.0.0.0", 4, "ipv4"],
      ["ff00::", 8, "ipv6"],
    ]),
  ],
];

/**
 * An IPv6 address carrying an IPv4 one (mapped ::ffff:127.0.0.1 or ::ffff:7f00:1, the deprecated
 * compatible ::7f00:1, NAT64 64:ff9b::7f00:1) as that IPv4 address: classified by where it leads.
 */
function unmapped(address: string): string {
  const m = /^(?:::ffff:(?:0:)?|64:ff9b::|::)(.+)$/i.exec(address);
  if (!m) return address;
  const rest = m[1]!;
  if (isIP(rest) === 4) return rest;
  const hex = /^([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(rest);
  if (!hex) return address;
  const hi = Number.parseInt(hex[1]!, 16);
  const lo = Number.parseInt(hex[2]!, 16);
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

export function classifyAddress(address: string): AddressClass {
  const a = unmapped(address);
  const type = isIP(a) === 6 ? "ipv6" : "ipv4";
  for (const [name, list] of CLASSES) if (list.check(a, type)) return name;
  return "public";
}

/** The URL's host as an address or name: no IPv6 brackets, lowercase, no trailing dot. */
function hostOf(url: URL): string {
  return url.hostname
    .replace(/^\[|\]$/g, "")
    .replace(/\.$/, "")
    .toLowerCase();
}

function allowedHost(host: string, policy: DestinationPolicy): boolean {
  return (policy.allowHosts ?? []).some(
    (h) =>
      h
        .trim()
        .toLowerCase()
        .replace(/^\[|\]$/g, "")
        .replace(/\.$/, "") === host,
  );
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
  const host = hostOf(url);
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
  const host = hostOf(url);
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
