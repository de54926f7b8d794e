import { createServer, type IncomingMessage, type Server } from "node:http";
import { type AddressInfo, createServer as createNetServer } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket, { WebSocketServer } from "ws";
import type { Gateway } from "../../src/gateway/index.js";
import { deployedRow, type StoredGateway, startStoredGateway } from "../support/gateway.js";
import { sendRaw } from "../support/http.js";

let upstream: Server;
let declining: Server;
let bystander: Server;
let gateway: Gateway;
let stored: StoredGateway;
const upgrades: IncomingMessage[] = [];
let bystanderHits = 0;
const closedOnUpstream: number[] = [];

const row = (apiId: string, definition: Record<string, unknown>, kind = "RestApi") =>
  deployedRow(apiId, definition, kind, kind === "LlmProvider" ? { credential: "sk-up" } : {});

const listen = (s: Server) =>
  new Promise<string>((r) =>
    s.listen(0, "127.0.0.1", () => r(`http://127.0.0.1:${(s.address() as AddressInfo).port}`)),
  );

beforeAll(async () => {
  // Plain requests too: an upgrade other than WebSocket is served as the plain request it is.
  upstream = createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (c: string) => {
      body += c;
    });
    req.on("end", () => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(`${req.method} ${req.url} ${body} upgrade=${req.headers.upgrade ?? "none"}`);
    });
  });
  const wss = new WebSocketServer({ server: upstream });
  wss.on("connection", (socket, req) => {
    upgrades.push(req);
    socket.send("welcome");
    socket.on("message", (data) => socket.send(`echo:${String(data)}`));
    socket.on("close", (code) => closedOnUpstream.push(code));
  });
  const up = await listen(upstream);
  declining = createServer((_req, res) => {
    res.writeHead(426, { "content-type": "text/plain", "x-why": "no-sockets-here" });
    res.end("upgrade declined");
  });
  const decliningUrl = await listen(declining);
  bystander = createServer((_req, res) => {
    bystanderHits++;
    res.end("bystander");
  });
  bystander.on("upgrade", (_req, socket) => {
    bystanderHits++;
    socket.destroy();
  });
  await listen(bystander);
  const closedPort = await new Promise<number>((resolve) => {
    const s = createNetServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  stored = await startStoredGateway([
    row("ws-main", { contextPath: "/ws", upstream: { url: `${up}/base` } }),
    row("ws-ops", {
      contextPath: "/ops",
      upstream: { url: up },
      operations: [{ method: "POST", path: "/only-post" }],
    }),
    row("ws-down", { contextPath: "/down", upstream: { url: `http://127.0.0.1:${closedPort}` } }),
    row("ws-declining", { contextPath: "/declining", upstream: { url: decliningUrl } }),
    row("ws-llm", { contextPath: "/llm", upstreamUrl: `${up}/v1`, models: ["m"] }, "LlmProvider"),
  ]);
  gateway = stored.gateway;
});

afterAll(async () => {
  await stored?.close();
  for (const s of [upstream, declining, bystander]) {
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
});

const wsUrl = (path: string) => `${gateway.url.replace(/^http/, "ws")}${path}`;

/** A WebSocket whose messages queue from the start (one may arrive with the 101 itself). */
interface Opened {
  ws: WebSocket;
  next(): Promise<string>;
}
type Refused = { status: number; body: string; headers: IncomingMessage["headers"] };

/** Opens a WebSocket and resolves with it, or with the HTTP answer that refused it. */
function open(path: string, headers: Record<string, string> = {}): Promise<Opened | Refused> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl(path), { headers });
    const queue: string[] = [];
    const waiting: Array<(m: string) => void> = [];
    ws.on("message", (d) => {
      const w = waiting.shift();
      if (w) w(String(d));
      else queue.push(String(d));
    });
    const next = () =>
      new Promise<string>((r) => {
        const m = queue.shift();
        if (m !== undefined) r(m);
        else waiting.push(r);
      });
    ws.once("open", () => resolve({ ws, next }));
    ws.once("unexpected-response", (_req, res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        body += c;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
    });
    ws.once("error", (err) => {
      if (!String(err.message).includes("Unexpected server response")) reject(err);
    });
  });
}

describe("WebSockets through the gateway", () => {
  it("joins client and upstream: prefix stripped, context headers added, frames both ways, closes together", async () => {
    const opened = await open("/ws/chat?room=7", { "x-correlation-id": "corr-ws-1" });
    if (!("ws" in opened)) throw new Error(`refused with ${opened.status}: ${opened.body}`);
    const { ws, next } = opened;
    expect(await next()).toBe("welcome");
    const seen = upgrades.at(-1)!;
    expect(seen.url).toBe("/base/chat?room=7");
    expect(seen.headers["x-correlation-id"]).toBe("corr-ws-1");
    expect(seen.headers["x-forwarded-for"]).toBe("127.0.0.1");
    expect(seen.headers.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    ws.send("hello");
    expect(await next()).toBe("echo:hello");
    const big = "x".repeat(200_000);
    ws.send(big);
    expect(await next()).toBe(`echo:${big}`);
    const before = closedOnUpstream.length;
    ws.close(1000, "bye");
    await new Promise((r) => ws.once("close", r));
    for (let i = 0; i < 100 && closedOnUpstream.length === before; i++)
      await new Promise((r) => setTimeout(r, 10));
    expect(closedOnUpstream.length).toBe(before + 1);
  });

  it("answers what it refuses over HTTP: 404, 400 for dot segments and LLM routes, 405, 502", async () => {
    const cases: Array<[string, number, string]> = [
      ["/nowhere", 404, "route.not_found"],
      ["/llm/chat", 400, "route.upgrade_refused"],
      ["/ops/anything", 405, "route.operation_not_allowed"],
      ["/down/x", 502, "upstream.unavailable"],
    ];
    for (const [path, status, code] of cases) {
      const answer = await open(path);
      if ("ws" in answer) throw new Error(`${path} was upgraded`);
      expect(answer.status, path).toBe(status);
      expect(JSON.parse(answer.body).code, path).toBe(code);
      expect(answer.headers["x-correlation-id"], path).toBeTruthy();
    }
  });

  it("refuses an upgrade whose path has an encoded dot segment (400), before any upstream sees it", async () => {
    // Sent raw: a WebSocket client normalizes the URL (%2e%2e is a dot segment to it) first.
    const port = Number(new URL(gateway.url).port);
    const before = upgrades.length;
    const answer = await sendRaw(
      port,
      "GET /ws/a/%2e%2e/admin HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n" +
        "sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect(answer).toContain('"code":"request.malformed"');
    expect(upgrades.length).toBe(before);
  });

  it("ends open WebSockets when the gateway stops, so its shutdown never waits on them", async () => {
    const up = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
    const stoppable = await startStoredGateway([
      row("ws-stop", { contextPath: "/ws", upstream: { url: up } }),
    ]);
    const second = stoppable.gateway;
    try {
      const ws = new WebSocket(`${second.url.replace(/^http/, "ws")}/ws/long`);
      await new Promise((r, j) => ws.once("open", r).once("error", j));
      const closed = new Promise((r) => ws.once("close", r));
      const started = Date.now();
      await second.close();
      await closed;
      // The cut for busy connections comes after 5 s; an open WebSocket must not wait for it.
      expect(Date.now() - started).toBeLessThan(4_000);
    } finally {
      await stoppable.close();
    }
  });

  it("serves an upgrade other than WebSocket (h2c) as the plain request, never as a tunnel", async () => {
    const port = Number(new URL(gateway.url).port);
    const exchange = (payload: string, done: string) =>
      sendRaw(port, payload, (text) => text.includes(done));
    // What `curl --http2 -d hello` sends to an http:// URL.
    const h2c = await exchange(
      "POST /ws/echo HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n" +
        "http2-settings: AAMAAABkAAQAAP__\r\ncontent-length: 5\r\n\r\nhello",
      "upgrade=",
    );
    expect(h2c).toMatch(/^HTTP\/1\.1 200 /);
    expect(h2c).toContain("POST /base/echo hello upgrade=none");
    // A route that allows POST /only-post only: an h2c GET is that GET, refused, no tunnel.
    const refused = await exchange(
      "GET /ops/anything HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n",
      "operation_not_allowed",
    );
    expect(refused).toMatch(/^HTTP\/1\.1 405 /);
  });

  it("keeps an h2c request's body its body when Connection names its framing (no smuggled request)", async () => {
    const port = Number(new URL(gateway.url).port);
    const smuggled = "GET /ws/smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    for (const framing of [
      `content-length: ${smuggled.length}\r\n\r\n${smuggled}`,
      `transfer-encoding: chunked\r\n\r\n${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`,
    ]) {
      const named = framing.startsWith("content-length") ? "Content-Length" : "Transfer-Encoding";
      const text = await sendRaw(
        port,
        `POST /ws/echo HTTP/1.1\r\nhost: x\r\nupgrade: h2c\r\nconnection: Upgrade, ${named}\r\n${framing}`,
        (t) => t.includes("upgrade="),
      );
      expect(text, named).toMatch(/^HTTP\/1\.1 200 /);
      expect(text, named).toContain(`POST /base/echo ${smuggled} upgrade=none`);
      // One answer: the body did not become a request of its own.
      expect(text.match(/HTTP\/1\.1 \d{3} /g), named).toHaveLength(1);
    }
  });

  it("relays an upstream that declines the upgrade as it answered", async () => {
    const answer = await open("/declining/x");
    if ("ws" in answer) throw new Error("upgraded");
    expect(answer.status).toBe(426);
    expect(answer.body).toBe("upgrade declined");
    expect(answer.headers["x-why"]).toBe("no-sockets-here");
  });

  it("never sends a //host path to another host", async () => {
    const bystanderHost = `127.0.0.1:${(bystander.address() as AddressInfo).port}`;
    const opened = await open(`/ws//${bystanderHost}/x`);
    if (!("ws" in opened)) throw new Error(`refused with ${opened.status}`);
    expect(upgrades.at(-1)!.url).toBe(`/base//${bystanderHost}/x`);
    expect(bystanderHits).toBe(0);
    opened.ws.close();
  });
});
