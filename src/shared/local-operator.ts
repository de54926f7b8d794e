// Telling the local operator from look-alikes on a loopback-only admin port: a proxy on the same
// host, a web page in a local browser, or one whose DNS name was rebound to 127.0.0.1, all
// connect from 127.0.0.1.
import { readFileSync } from "node:fs";
import type { IncomingHttpHeaders } from "node:http";

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
  {
    hostMustBeLoopback = true,
    connection,
  }: {
    hostMustBeLoopback?: boolean;
    /** The request's TCP connection: its caller must run as this process's user or as root. */
    connection?: { localPort?: number | undefined; remotePort?: number | undefined };
  } = {},
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
  if (connection?.localPort !== undefined && connection.remotePort !== undefined) {
    const uid = loopbackPeerUid(connection.localPort, connection.remotePort);
    // Workloads and jobs run on this host as an unprivileged user and reach loopback too.
    if (uid === null) return "its caller's user could not be told";
    if (uid !== undefined && uid !== 0 && uid !== process.getuid?.())
      return `it came from another user's process (uid ${uid})`;
  }
  return undefined;
}

const hexPort = (port: number) => `:${port.toString(16).toUpperCase().padStart(4, "0")}`;

/**
 * The user owning the caller's end of a loopback TCP connection, read from Linux's
 * /proc/net/tcp and tcp6 (the caller's socket is the row whose local port is the connection's
 * remote port, and the other way round). undefined where there is no /proc (macOS), null when
 * no row matches (the caller is gone already).
 */
export function loopbackPeerUid(localPort: number, remotePort: number): number | null | undefined {
  const callerLocal = hexPort(remotePort);
  const callerRemote = hexPort(localPort);
  let readAny = false;
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue;
    }
    readAny = true;
    // Columns: sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
    for (const line of text.split("\n")) {
      const f = line.trim().split(/\s+/);
      if (f.length > 7 && f[1]!.endsWith(callerLocal) && f[2]!.endsWith(callerRemote))
        return Number(f[7]);
    }
  }
  return readAny ? null : undefined;
}
