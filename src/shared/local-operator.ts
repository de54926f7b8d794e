// Telling the local operator from look-alikes on a loopback-only admin port: a proxy on the same
// host, a web page in a local browser, or one whose DNS name was rebound to 127.0.0.1, all
// connect from 127.0.0.1.
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
