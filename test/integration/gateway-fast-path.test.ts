import { createServer, type IncomingMessage, type Server } from "node:http";
import { type AddressInfo, createServer as createNetServer, connect as tcpConnect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Gateway } from "../../src/gateway/index.js";
import { deployedRow, type StoredGateway, startStoredGateway } from "../support/gateway.js";
import { sendRaw } from "../support/http.js";

let upstreamBase: string;
const seen: Array<{
  method: string;
  url: string;
  headers: IncomingMessage["headers"];
  body: string;
}> = [];
let upstream: Server;
let silent: ReturnType<typeof createNetServer>;
let gateway: Gateway;
let stored: StoredGateway;

const row = (apiId: string, path: string, url: string, extra: Record<string, unknown> = {}) =>
  deployedRow(apiId, { contextPath: path, upstream: { url }, ...extra });

beforeAll(async () => {
  upstream = createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (c) => {
      body += c;
    });
    req.on("end", () => {
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body });
      if (req.url!.startsWith("/base/chunked")) {
        res.writeHead(200, { "content-type": "text/plain", "x-up": "1", connection: "x-up" });
        res.write("first-");
        setTimeout(() => res.end("second"), 20);
      } else if (req.url!.startsWith("/base/early-hints")) {
        res.writeEarlyHints({ link: "</style.css>; rel=preload; as=style" });
        res.writeHead(200, { "content-type": "text/plain", "content-length": 5 });
        res.end("final");
      } else if (req.url!.startsWith("/base/empty")) {
        res.writeHead(204, { "x-empty": "yes" });
        res.end();
      } else {
        const text = JSON.stringify({ url: req.url });
        res.writeHead(200, {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(text),
        });
        res.end(text);
      }
    });
  });
  await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", () => r()));
  // Accepts connections and never answers: the timeout case.
  silent = createNetServer((s) => s.resume());
  await new Promise<void>((r) => silent.listen(0, "127.0.0.1", () => r()));
  const up = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
  upstreamBase = `${up}/base`;
  const closedPort = await new Promise<number>((resolve) => {
    const s = createNetServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  stored = await startStoredGateway([
    row("api-main", "/main", `${up}/base`),
    row("api-root", "/root", up),
    row("api-down", "/down", `http://127.0.0.1:${closedPort}`),
    row("api-slow", "/slow", `http://127.0.0.1:${(silent.address() as AddressInfo).port}`, {
      timeoutMs: 300,
    }),
  ]);
  gateway = stored.gateway;
});

afterAll(async () => {
  await stored?.close();
  await new Promise<void>((r) => upstream.close(() => r()));
  await new Promise<void>((r) => silent.close(() => r()));
});

/** Sends raw bytes on one connection and reads until `until` holds (or the gateway closes it). */
function raw(payload: string, until: (text: string) => boolean): Promise<string> {
  return sendRaw(Number(new URL(gateway.url).port), payload, until);
}

/** The value of the sample `name{labels}` in a /metrics text, 0 when absent. */
/**
 * A GET (no body: the fast path's) or a POST with `{}` (node:http's) on its own connection, read
 * until its JSON answer ends.
 */
function jsonAnswer(method: "GET" | "POST", target: string, host: string): Promise<string> {
  const body = method === "POST" ? "{}" : "";
  return raw(
    `${method} ${target} HTTP/1.1\r\nHost: ${host}\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
    (t) => t.includes("\r\n\r\n") && t.includes("}"),
  );
}

async function metric(sample: string): Promise<number> {
  const text = await (await fetch(`${gateway.adminUrl}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${sample} `));
  return line ? Number(line.slice(sample.length + 1)) : 0;
}

describe("gateway fast path", () => {
  it("counts requests by API and status class, with their durations, in /metrics", async () => {
    const samples = [
      'flotilla_gateway_requests_total{api="api-main",status="2xx"}',
      'flotilla_gateway_requests_total{api="api-down",status="5xx"}',
      'flotilla_gateway_requests_total{api="(none)",status="4xx"}',
      'flotilla_gateway_request_duration_seconds_count{api="api-main"}',
      'flotilla_gateway_request_duration_seconds_bucket{le="+Inf",api="api-main"}',
      'flotilla_gateway_request_duration_seconds_bucket{le="10",api="api-main"}',
    ];
    const before = await Promise.all(samples.map(metric));
    for (const path of ["/main/m1", "/main/m2", "/main/m3", "/down/m", "/none/m"])
      await (await fetch(`${gateway.url}${path}`)).arrayBuffer();
    const after = await Promise.all(samples.map(metric));
    expect(after.map((v, i) => v - before[i]!)).toEqual([3, 1, 1, 3, 3, 3]);
    const sum = await metric('flotilla_gateway_request_duration_seconds_sum{api="api-main"}');
    expect(sum).toBeGreaterThan(0);
    expect(sum).toBeLessThan(after[3]! * 10);
  });

  it("forwards a GET with the same header rewriting as node:http: hop-by-hop out, context in", async () => {
    const res = await fetch(`${gateway.url}/main/items?x=1`, {
      headers: {
        "x-correlation-id": "corr-123",
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-forwarded-for": "10.0.0.9",
        "x-custom": "kept",
        "proxy-authorization": "Basic c2VjcmV0",
      },
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ url: "/base/items?x=1" });
    expect(res.headers.get("x-correlation-id")).toBe("corr-123");
    expect(res.headers.get("traceparent")).toMatch(
      /^00-0af7651916cd43dd8448eb211c80319c-[0-9a-f]{16}-01$/,
    );
    const up = seen.at(-1)!;
    expect(up.headers.host).toBe(`127.0.0.1:${(upstream.address() as AddressInfo).port}`);
    expect(up.headers["x-forwarded-for"]).toBe("10.0.0.9, 127.0.0.1");
    expect(up.headers["x-forwarded-host"]).toBe(new URL(gateway.url).host);
    expect(up.headers["x-forwarded-proto"]).toBe("http");
    expect(up.headers["x-correlation-id"]).toBe("corr-123");
    expect(up.headers["x-custom"]).toBe("kept");
    expect(up.headers["proxy-authorization"]).toBeUndefined();
    expect(up.headers.traceparent).toBe(res.headers.get("traceparent"));
  });

  it("leaves a request line it does not take (HTTP/1.0, a space in the target) to node:http", async () => {
    const host = new URL(gateway.url).host;
    const old = await raw(`GET /main/v10 HTTP/1.0\r\nHost: ${host}\r\n\r\n`, (t) =>
      t.includes("}"),
    );
    expect(old.split("\r\n")[0]).toBe("HTTP/1.1 200 OK");
    expect(seen.at(-1)!.url).toBe("/base/v10");
    const spaced = await raw(`GET /main/a b HTTP/1.1\r\nHost: ${host}\r\n\r\n`, () => false);
    expect(spaced.split("\r\n")[0]).toBe("HTTP/1.1 400 Bad Request");
    const bare = await raw(`GET HTTP/1.1\r\nHost: ${host}\r\n\r\n`, () => false);
    expect(bare.split("\r\n")[0]).toBe("HTTP/1.1 400 Bad Request");
  });

  it("hands a head over 16 KB to node:http (431) even when it ends within the same read", async () => {
    const before = seen.length;
    const host = new URL(gateway.url).host;
    const text = await raw(
      `GET /main/big HTTP/1.1\r\nHost: ${host}\r\nX-Pad: ${"a".repeat(20_000)}\r\n\r\n`,
      () => false,
    );
    expect(text.split("\r\n")[0]).toBe("HTTP/1.1 431 Request Header Fields Too Large");
    expect(seen.length).toBe(before);
  });

  it("answers 408 and closes when a head trickles in for longer than the headers timeout", async () => {
    const quick = await startStoredGateway([row("api-main", "/main", upstreamBase)], {
      headersTimeoutMs: 300,
    });
    try {
      const port = Number(new URL(quick.gateway.url).port);
      const socket = tcpConnect(port, "127.0.0.1");
      let got = "";
      socket.on("data", (d) => {
        got += d.toString("latin1");
      });
      const closed = new Promise<void>((r) => socket.once("close", () => r()));
      socket.write("GET /main/slow-head HTTP/1.1\r\nHost: x\r\n");
      // A header line every 100 ms: the idle timeout never fires, the head never ends.
      const drip = setInterval(() => socket.write("X-Drip: 1\r\n"), 100);
      const started = Date.now();
      await closed;
      clearInterval(drip);
      expect(got.split("\r\n")[0]).toBe("HTTP/1.1 408 Request Timeout");
      expect(Date.now() - started).toBeLessThan(3_000);
      // On a keep-alive connection, each head that comes in two pieces is timed from its own
      // first bytes, not from an earlier head's, however long the connection idled between.
      const kept = tcpConnect(port, "127.0.0.1");
      let keptText = "";
      kept.on("data", (d) => {
        keptText += d.toString("latin1");
      });
      await new Promise<void>((r) => kept.once("connect", () => r()));
      kept.write("GET /main/first HTTP/1.1\r\n");
      await new Promise((r) => setTimeout(r, 50));
      kept.write("Host: x\r\n\r\n");
      await new Promise((r) => setTimeout(r, 500));
      kept.write("GET /main/second HTTP/1.1\r\n");
      await new Promise((r) => setTimeout(r, 50));
      kept.write("Host: x\r\n\r\n");
      const deadline = Date.now() + 3_000;
      while ((keptText.match(/HTTP\/1\.1 \d{3} /g) ?? []).length < 2 && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 20));
      kept.destroy();
      expect(keptText.match(/HTTP\/1\.1 \d{3} [A-Za-z ]+/g)).toEqual([
        "HTTP/1.1 200 OK",
        "HTTP/1.1 200 OK",
      ]);
      // A head that ends in time is served.
      const served = await sendRaw(port, "GET /main/in-time HTTP/1.1\r\nHost: x\r\n\r\n", (t) =>
        t.includes("}"),
      );
      expect(served.split("\r\n")[0]).toBe("HTTP/1.1 200 OK");
    } finally {
      await quick.close();
    }
  });

  it("never sends an upstream without a base path a target starting with two slashes", async () => {
    for (const method of ["GET", "POST"] as const) {
      const text = await jsonAnswer(method, "/root//evil.example/x?y=1", "x");
      expect(text.split("\r\n")[0], method).toBe("HTTP/1.1 200 OK");
      expect(seen.at(-1)!.url, method).toBe("/evil.example/x?y=1");
    }
    // With a base path the slashes stay where they were: no authority can be read there.
    await raw("GET /main//evil.example/x HTTP/1.1\r\nHost: x\r\n\r\n", (t) => t.includes("}"));
    expect(seen.at(-1)!.url).toBe("/base//evil.example/x");
  });

  it("refuses a Host that is not a host and a port (400), on every path, sending nothing upstream", async () => {
    const before = seen.length;
    for (const [method, host] of [
      ["GET", "x.example:1@evil.example"],
      ["GET", "x.example:80 evil.example"],
      ["GET", "x.example/evil"],
      ["POST", "x.example:1@evil.example"],
    ] as const) {
      const text = await jsonAnswer(method, "/main/h", host);
      expect(text.split("\r\n")[0], `${method} ${host}`).toBe("HTTP/1.1 400 Bad Request");
      expect(text).toContain('"code":"request.malformed"');
    }
    expect(seen.length).toBe(before);
    for (const host of ["x.example", "x.example:8080", "[::1]:8080", "127.0.0.1", "x.example:"])
      expect(
        (await raw(`GET /main/h HTTP/1.1\r\nHost: ${host}\r\n\r\n`, (t) => t.includes("}"))).split(
          "\r\n",
        )[0],
        host,
      ).toBe("HTTP/1.1 200 OK");
  });

  it("drops every hop-by-hop request header and sends its own Connection upstream", async () => {
    const host = new URL(gateway.url).host;
    const text = await raw(
      `GET /main/hop HTTP/1.1\r\nHost: ${host}\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n` +
        "Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n" +
        "Proxy-Authenticate: Basic\r\nTE: trailers\r\nTrailer: X-Sum\r\nX-Kept: yes\r\n\r\n",
      (t) => t.includes("}"),
    );
    expect(text.split("\r\n")[0]).toBe("HTTP/1.1 200 OK");
    const up = seen.at(-1)!;
    expect(up.url).toBe("/base/hop");
    expect(up.headers["x-kept"]).toBe("yes");
    expect(up.headers.connection).toBe("keep-alive");
    for (const gone of [
      "keep-alive",
      "proxy-authorization",
      "proxy-connection",
      "proxy-authenticate",
      "te",
      "trailer",
    ])
      expect(up.headers[gone], gone).toBeUndefined();
  });

  it("forwards a repeated header line by line, and sends a repeated header it reads to node:http", async () => {
    const host = new URL(gateway.url).host;
    const ask = (headers: string) =>
      raw(`GET /main/repeated HTTP/1.1\r\nHost: ${host}\r\n${headers}\r\n`, (t) => t.includes("}"));
    const repeated = await ask("X-Custom: a\r\nAccept: text/plain\r\nX-Custom: b\r\n");
    expect(repeated.split("\r\n")[0]).toBe("HTTP/1.1 200 OK");
    expect(seen.at(-1)!.headers["x-custom"]).toBe("a, b");
    // Two correlation ids: neither is the request's (node:http joins them into an invalid one).
    const twice = await ask("X-Correlation-Id: first\r\nX-Correlation-Id: second\r\n");
    expect(twice.split("\r\n")[0]).toBe("HTTP/1.1 200 OK");
    const correlation = /\r\nx-correlation-id: ([^\r]+)\r\n/i.exec(twice)?.[1];
    expect(correlation).toMatch(/^[0-9a-f]{32}$/);
    expect(seen.at(-1)!.headers["x-correlation-id"]).toBe(correlation);
  });

  it("generates a correlation id and a new trace when the client sends none (or a malformed one)", async () => {
    const res = await fetch(`${gateway.url}/main/a`, {
      headers: { "x-correlation-id": "bad id with spaces" },
    });
    expect(res.headers.get("x-correlation-id")).toMatch(/^[0-9a-f]{32}$/);
    expect(res.headers.get("traceparent")).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    await res.arrayBuffer();
  });

  it("re-frames a chunked upstream body as chunked, strips the headers its Connection names, and keeps the connection", async () => {
    const text = await raw(
      "GET /main/chunked HTTP/1.1\r\nhost: a.example\r\n\r\nGET /main/after HTTP/1.1\r\nhost: a.example\r\n\r\n",
      (t) => t.includes('{"url":"/base/after"}'),
    );
    const end = text.indexOf("\r\n0\r\n\r\n");
    const first = text.slice(0, end + 2);
    expect(first).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(first).toContain("transfer-encoding: chunked\r\n");
    expect(first).not.toContain("x-up:");
    let rest = first.slice(first.indexOf("\r\n\r\n") + 4);
    let body = "";
    while (rest.length > 0) {
      const eol = rest.indexOf("\r\n");
      const size = Number.parseInt(rest.slice(0, eol), 16);
      body += rest.slice(eol + 2, eol + 2 + size);
      rest = rest.slice(eol + 2 + size + 2);
    }
    expect(body).toBe("first-second");
    expect(text).toContain('{"url":"/base/after"}');
  });

  it("answers pipelined GETs in order on one connection", async () => {
    const text = await raw(
      "GET /main/1 HTTP/1.1\r\nhost: a\r\n\r\nGET /main/2 HTTP/1.1\r\nhost: a\r\n\r\nGET /main/3 HTTP/1.1\r\nhost: a\r\n\r\n",
      (t) => t.includes('"/base/3"'),
    );
    expect(text.indexOf('"/base/1"')).toBeLessThan(text.indexOf('"/base/2"'));
    expect(text.indexOf('"/base/2"')).toBeLessThan(text.indexOf('"/base/3"'));
  });

  it("answers with the upstream's final response after its 103 Early Hints, on both paths", async () => {
    const get = await fetch(`${gateway.url}/main/early-hints`);
    expect(get.status).toBe(200);
    expect(await get.text()).toBe("final");
    // A body sends the request down node:http and undici's path.
    const post = await fetch(`${gateway.url}/main/early-hints`, { method: "POST", body: "x" });
    expect(post.status).toBe(200);
    expect(await post.text()).toBe("final");
    expect(seen.at(-1)).toMatchObject({ method: "POST", body: "x" });
  });

  it("passes a 204 without a body and serves the next request on the connection", async () => {
    const text = await raw(
      "GET /main/empty HTTP/1.1\r\nhost: a\r\n\r\nGET /main/next HTTP/1.1\r\nhost: a\r\n\r\n",
      (t) => t.includes('"/base/next"'),
    );
    expect(text).toMatch(/^HTTP\/1\.1 204 No Content\r\n/);
    expect(text).toContain("x-empty: yes\r\n");
    expect(text).toContain('"/base/next"');
  });

  it("hands a POST with a body to node:http on the same connection, after a fast GET", async () => {
    const text = await raw(
      "GET /main/g HTTP/1.1\r\nhost: a\r\n\r\nPOST /main/p HTTP/1.1\r\nhost: a\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello",
      (t) => t.includes('"/base/p"'),
    );
    expect(text).toContain('"/base/g"');
    expect(text).toContain('"/base/p"');
    const post = seen.find((s) => s.url === "/base/p")!;
    expect(post.method).toBe("POST");
    expect(post.body).toBe("hello");
  });

  it("answers a GET to no route 404 itself, and serves the next request on that connection", async () => {
    const missing = await fetch(`${gateway.url}/nothing-here`, {
      headers: { "x-correlation-id": "corr-404" },
    });
    expect(missing.status).toBe(404);
    expect(missing.headers.get("x-correlation-id")).toBe("corr-404");
    // An origin with a clock dates its answers (RFC 9110), as node:http's path does.
    expect(Math.abs(Date.parse(missing.headers.get("date") ?? "") - Date.now())).toBeLessThan(
      60_000,
    );
    expect(await missing.json()).toEqual({
      code: "route.not_found",
      message: "no API is deployed at /nothing-here",
    });
    // Pipelined on one connection: the 404, then a routed GET, then a POST (node:http's).
    const text = await raw(
      "GET /nowhere HTTP/1.1\r\nhost: a\r\n\r\nGET /main/after-404 HTTP/1.1\r\nhost: a\r\n\r\n" +
        "POST /main/p2 HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nok",
      (t) => t.includes('"/base/p2"'),
    );
    const answers = text.split(/(?=HTTP\/1\.1 )/);
    expect(answers.map((a) => a.slice(0, 12))).toEqual([
      "HTTP/1.1 404",
      "HTTP/1.1 200",
      "HTTP/1.1 200",
    ]);
    expect(answers[0]).toContain('"code":"route.not_found"');
    // The fast path's own framing (its lowercase keep-alive header): the connection stayed there.
    expect(answers[1]).toContain("keep-alive: timeout=");
    expect(answers[1]).toContain('"/base/after-404"');
  });

  it("lets node:http answer what it must: 400 for a malformed request", async () => {
    const bad = await raw("GET /main/x HTTP/1.1\r\nhost: a\r\nbad header\r\n\r\n", (t) =>
      t.includes("\r\n\r\n"),
    );
    expect(bad).toMatch(/^HTTP\/1\.1 400 /);
    // Bare LF line endings never complete a CRLF head: node:http gets them at once, not at a timeout.
    const lf = await raw("GET /main/lf HTTP/1.1\nhost: a\n\n", (t) => t.includes("\r\n\r\n"));
    expect(lf).toMatch(/^HTTP\/1\.1 (200|400) /);
  });

  it("answers 502 when the upstream refuses and 504 when it does not answer in time", async () => {
    const down = await fetch(`${gateway.url}/down/x`);
    expect(down.status).toBe(502);
    expect(((await down.json()) as { code: string }).code).toBe("upstream.unavailable");
    const slow = await fetch(`${gateway.url}/slow/x`);
    expect(slow.status).toBe(504);
    expect(((await slow.json()) as { code: string }).code).toBe("upstream.timeout");
  });

  it("refuses a path with dot segments or encoded separators on both paths, sending nothing upstream", async () => {
    const before = seen.length;
    for (const [method, path] of [
      ["GET", "/main/files/../../admin"],
      ["GET", "/main/./x"],
      ["GET", "/main/%2e%2e/admin"],
      ["GET", "/main/a%2Fb"],
      ["POST", "/main/files/../../admin"],
      // A path parameter on a dot segment (Tomcat reads "..;" as ".."), a fragment.
      ["GET", "/main/files/..;/..;/admin"],
      ["GET", "/main/files/..#x"],
      // Absolute form: the upstream would take this authority over the Host the gateway sends.
      ["GET", "http://internal.example/main/x"],
      ["POST", "http://internal.example/main/x"],
    ] as const) {
      const text = await jsonAnswer(method, path, "x");
      expect(text.split("\r\n")[0], `${method} ${path}`).toBe("HTTP/1.1 400 Bad Request");
      expect(text).toContain('"code":"request.malformed"');
    }
    expect(seen.length).toBe(before);
    // A dot inside a segment is an ordinary name.
    expect((await fetch(`${gateway.url}/main/v1.2/.well-known`)).status).toBe(200);
  });
});
