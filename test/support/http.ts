// One HTTP(S) request with exactly the headers given (fetch may not set Host, nor trust a test CA).
import { request as httpRequest, type IncomingHttpHeaders } from "node:http";
import { request as httpsRequest } from "node:https";

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
