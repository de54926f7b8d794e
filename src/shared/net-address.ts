// What kind of address an IP is (loopback, link-local, private, ...): where a connection to it leads.
import { lookup as dnsLookup } from "node:dns";
import { BlockList, isIP, type LookupFunction } from "node:net";

export type AddressClass =
  | "loopback"
  | "link-local"
  | "unspecified"
  | "private"
  | "reserved"
  | "public";

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
  // Multicast, broadcast and the reserved 240/4: never an HTTP server.
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

/**
 * Cloud metadata services outside link-local: GCP's names, and AWS's IPv6 address (in fd00::/8,
 * private by class) and Alibaba's (in 100.64/10, private by class), checked as addresses so that
 * any spelling of them (::ffff:100.100.100.200, 64:ff9b::6464:64c8, fd00:ec2:0::254) is caught.
 */
const METADATA_NAMES = new Set(["metadata.google.internal", "metadata.goog"]);
const METADATA_ADDRESSES = blockList([
  ["100.100.100.200", 32, "ipv4"],
  ["fd00:ec2::254", 128, "ipv6"],
]);

/** A host as written in a URL or a setting, compared as: no IPv6 brackets, no trailing dot, lowercase. */
export function hostKey(host: string): string {
  return host
    .trim()
    .replace(/^\[|\]$/g, "")
    .replace(/\.$/, "")
    .toLowerCase();
}

/**
 * Why a proxied upstream may not be at `host` (an address, or a name as written), or undefined.
 * Loopback and private networks are where upstreams live; link-local is the cloud metadata
 * service (169.254.169.254: the gateway host's credentials), and unspecified and reserved
 * addresses are no HTTP server. A name is refused here only if it is a metadata service's.
 */
export function upstreamRefusal(host: string): string | undefined {
  const h = hostKey(host);
  if (METADATA_NAMES.has(h)) return "a cloud metadata service";
  if (isIP(h) === 0) return undefined;
  const a = unmapped(h);
  if (METADATA_ADDRESSES.check(a, isIP(a) === 6 ? "ipv6" : "ipv4"))
    return "a cloud metadata service";
  const kind = classifyAddress(a);
  if (kind === "link-local" || kind === "unspecified" || kind === "reserved")
    return `${kind} address`;
  return undefined;
}

/** The shape of dns.lookup with `all: true`, for a resolver other than the system's. */
export type ResolveAll = (
  hostname: string,
  options: { all: true; family?: number | "IPv4" | "IPv6"; hints?: number },
  callback: (
    err: NodeJS.ErrnoException | null,
    addresses: Array<{ address: string; family: number }>,
  ) => void,
) => void;

const systemResolveAll: ResolveAll = (hostname, options, callback) =>
  dnsLookup(hostname, options, callback);

/**
 * A socket `lookup` that refuses a name resolving to an address upstreamRefusal refuses, with
 * code UPSTREAM_ADDRESS_REFUSED: an upstream URL is checked when it is defined, but a name's
 * addresses are known only when the connection is made (and may change after). Every address is
 * checked (a name answering a public and a metadata address would otherwise reach the second by
 * luck), and the socket connects to exactly the addresses checked, so a DNS answer that changes
 * in between is never used. Address literals are not looked up by Node; they were checked when
 * the URL was defined.
 */
export function guardedLookup(resolveAll: ResolveAll = systemResolveAll): LookupFunction {
  return (hostname, options, callback) => {
    const { family, hints } = options;
    resolveAll(
      hostname,
      { all: true, ...(family ? { family } : {}), ...(hints ? { hints } : {}) },
      (err, addresses) => {
        if (err) return callback(err, "", 0);
        if (addresses.length === 0) {
          const none: NodeJS.ErrnoException = new Error(`${hostname} has no address`);
          none.code = "ENOTFOUND";
          return callback(none, "", 0);
        }
        for (const a of addresses) {
          const why = upstreamRefusal(a.address);
          if (why) {
            const refused: NodeJS.ErrnoException = new Error(
              `${hostname} resolves to ${a.address} (${why}), which the gateway does not connect to`,
            );
            refused.code = "UPSTREAM_ADDRESS_REFUSED";
            return callback(refused, "", 0);
          }
        }
        if (options.all) return callback(null, addresses);
        const first = addresses[0]!;
        callback(null, first.address, first.family);
      },
    );
  };
}
