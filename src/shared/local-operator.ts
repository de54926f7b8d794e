// Telling the local operator from look-alikes on a loopback-only admin port: a proxy on the same
// host, a web page in a local browser, or one whose DNS name was rebound to 127.0.0.1, all
// connect from 127.0.0.1.
import { readFile } from "node:fs/promises";
import type { IncomingHttpHeaders } from "node:http";
import { isIPv4, isIPv6 } from "node:net";

/** localhost, a 127/8 address or [::1], with or without a port. */
const LOOPBACK_HOST = /^(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d{1,5})?$/i;

/**
 * Why an unsigned request that arrived from loopback is not the local operator's, or undefined.
 * A gateway route whose upstream is 127.0.0.1 relays a stranger's request (every proxy adds
 * x-forwarded-for, Forwarded or Via; Flotilla's gateway always adds x-forwarded-for); a page open
 * in a browser on the host can send requests to localhost (browsers add Origin or
 * Sec-Fetch-Site to those that could do harm); a page whose DNS name was rebound to 127.0.0.1
 * sends its own name as Host. curl, the CLI and probes send none of these, and name the
 * address they connect to.
 */
export function notLocalOperator(
  headers: IncomingHttpHeaders,
  { hostMustBeLoopback = true }: { hostMustBeLoopback?: boolean } = {},
): string | undefined {
  if (
    headers["x-forwarded-for"] !== undefined ||
    headers.forwarded !== undefined ||
    headers.via !== undefined
  )
    return "it was relayed by a proxy";
  if (headers.origin !== undefined || headers["sec-fetch-site"] !== undefined)
    return "it was sent by a web page";
  if (hostMustBeLoopback && !LOOPBACK_HOST.test(headers.host ?? ""))
    return "its Host header names another site than this host";
  return undefined;
}

/** The ends of a TCP connection as Node reports them on the accepted socket. */
export interface ConnectionEnds {
  localAddress?: string | undefined;
  localPort?: number | undefined;
  remoteAddress?: string | undefined;
  remotePort?: number | undefined;
}

/**
 * Why a loopback caller is not the operator's user, or undefined: workloads and jobs run on this
 * host as an unprivileged user and reach loopback too, so a call must come from a process of
 * this one's user or root. Where there is no /proc (macOS) nothing is checked. When the agent
 * is not root, its workloads run as its own user, and this cannot tell them apart.
 */
export async function notOperatorsUser(c: ConnectionEnds): Promise<string | undefined> {
  const uid = await loopbackPeerUid(c);
  if (uid === null) return "its caller's user could not be told";
  if (uid !== undefined && uid !== 0 && uid !== process.getuid?.())
    return `it came from another user's process (uid ${uid})`;
  return undefined;
}

const hex2 = (n: number) => n.toString(16).toUpperCase().padStart(2, "0");

/** An IPv4 address's four bytes as /proc/net/tcp writes them: one little-endian word. */
const v4Word = (address: string) => address.split(".").map(Number).reverse().map(hex2).join("");

/**
 * The forms an address takes in /proc/net/tcp and tcp6: four 32-bit words, each little-endian.
 * An IPv4 address appears as itself (tcp) or v4-mapped (tcp6).
 */
function procAddresses(address: string): string[] {
  const v4 = address.startsWith("::ffff:") ? address.slice(7) : address;
  if (isIPv4(v4)) return [v4Word(v4), `0000000000000000FFFF0000${v4Word(v4)}`];
  if (!isIPv6(address)) return [];
  const [head, tail] = address.split("::") as [string, string | undefined];
  const groups = (part: string | undefined) => (part ? part.split(":") : []);
  const given = [...groups(head), ...groups(tail)];
  const words = [
    ...groups(head),
    ...Array(tail === undefined ? 0 : 8 - given.length).fill("0"),
    ...groups(tail),
  ].map((g) => g.padStart(4, "0"));
  const bytes = words.flatMap((w) => [w.slice(0, 2), w.slice(2)]);
  let out = "";
  for (let i = 0; i < 16; i += 4)
    out += `${bytes[i + 3]}${bytes[i + 2]}${bytes[i + 1]}${bytes[i]}`.toUpperCase();
  return [out];
}

/**
 * The user owning the caller's end of a TCP connection on this host, read from Linux's
 * /proc/net/tcp and tcp6: the established socket (state 01, a real inode) whose local address
 * and port are the connection's remote ones and whose remote address and port are its local
 * ones. Whole addresses, not ports alone: a caller bound to 127.0.0.2 and the same port as the
 * admin API would otherwise match the agent's own accepted socket. undefined where there is
 * no /proc, null when no row matches (the caller is not on this host, or gone already).
 */
export async function loopbackPeerUid(c: ConnectionEnds): Promise<number | null | undefined> {
  if (process.platform !== "linux") return undefined;
  if (!c.localAddress || !c.remoteAddress || !c.localPort || !c.remotePort) return null;
  const port = (p: number) => p.toString(16).toUpperCase().padStart(4, "0");
  const callerLocal = new Set(
    procAddresses(c.remoteAddress).map((a) => `${a}:${port(c.remotePort!)}`),
  );
  const callerRemote = new Set(
    procAddresses(c.localAddress).map((a) => `${a}:${port(c.localPort!)}`),
  );
  let readAny = false;
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch {
      continue;
    }
    readAny = true;
    // Columns: sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
    for (const line of text.split("\n")) {
      const f = line.trim().split(/\s+/);
      if (
        f.length > 9 &&
        f[3] === "01" &&
        f[9] !== "0" &&
        callerLocal.has(f[1]!) &&
        callerRemote.has(f[2]!)
      )
        return Number(f[7]);
    }
  }
  return readAny ? null : undefined;
}
