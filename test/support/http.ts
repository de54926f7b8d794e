// One HTTP(S) request with exactly the headers given (fetch may not set Host, nor trust a test CA),
// and raw bytes on one connection (what no client would send as is).
import { request as httpRequest, type IncomingHttpHeaders } from "node:http";
import { request as httpsRequest } from "node:https";
import { connect } from "node:net";

/**
 * Sends `payload` on a new connection to 127.0.0.1:`port` and resolves with what came back (as
 * latin1) once `until` holds for it (the connection is then cut) or the server closes it.
 */
export function sendRaw(
  port: number,
  payload: string,
  until: (text: string) => boolean = () => false,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, "127.0.0.1");
    let text = "";
    s.setEncoding("latin1");
    s.on("data", (d) => {
      text += d;
      if (until(text)) {
        s.destroy();
        resolve(text);
      }
    });
    s.on("error", reject);
    s.on("close", () => resolve(text));
    s.write(payload);
  });
}

export function requestText(
  url: string,
  o: {
    method?: string;
    headers?: Record<string, string | number>;
    body?: string | Buffer;
    ca?: Buffer;
  } = {},
): Promise<{ status: number; text: string; headers: IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const send = url.startsWith("https:") ? httpsRequest : httpRequest;
    const req = send(
      url,
      { method: o.method ?? "GET", headers: o.headers ?? {}, ...(o.ca ? { ca: o.ca } : {}) },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => {
          text += c;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text, headers: res.headers }));
      },
    );
    req.on("error", reject);
    req.end(o.body);
  });
}
