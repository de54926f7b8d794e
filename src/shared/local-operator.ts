// Telling the local operator from look-alikes on a loopback-only admin port: a proxy on the same
// host or a web page in a local browser also connect from 127.0.0.1.
import type { IncomingHttpHeaders } from "node:http";

/**
 * Why an unsigned request that arrived from loopback is not the local operator's, or undefined.
 * A gateway route whose upstream is 127.0.0.1 relays a stranger's request (every proxy adds
 * x-forwarded-for, Forwarded or Via; Flotilla's gateway always adds x-forwarded-for); a page open
 * in a browser on the host can POST to localhost (browsers add Origin or Sec-Fetch-Site). curl,
 * the CLI and probes send none of these.
 */
export function notLocalOperator(headers: IncomingHttpHeaders): string | undefined {
  if (
    headers["x-forwarded-for"] !== undefined ||
    headers.forwarded !== undefined ||
    headers.via !== undefined
  )
    return "it was relayed by a proxy";
  if (headers.origin !== undefined || headers["sec-fetch-site"] !== undefined)
    return "it was sent by a web page";
  return undefined;
}
