// What kind of address an IP is (loopback, link-local, private, ...): where a connection to it leads.
import { BlockList, isIP } from "node:net";

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
