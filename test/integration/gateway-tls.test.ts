// The gateway's data port over TLS: both data paths (the fast path for plain GETs, node:http for
// the rest) and WebSockets work on the decrypted stream, upstreams are told x-forwarded-proto
// https, and plain HTTP on the TLS port gets no answer.
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket, { WebSocketServer } from "ws";
import { deployedRow, type StoredGateway, startStoredGateway } from "../support/gateway.js";
import { requestText } from "../support/http.js";
import { selfSignedCert } from "../support/tls.js";

let dir: string;
let cert: Buffer;
let upstream: Server;
let stored: StoredGateway;
const seen: IncomingHttpHeaders[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "flotilla-gw-tls-"));
  const pair = selfSignedCert(dir);
  cert = pair.cert;
  upstream = createServer((req, res) => {
    seen.push(req.headers);
    req.resume();
    req.on("end", () => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(`${req.method} ${req.url}`);
    });
  });
  const wss = new WebSocketServer({ server: upstream });
  wss.on("connection", (socket, req) => {
    seen.push(req.headers);
    socket.on("message", (m) => socket.send(`echo:${String(m)}`));
  });
  await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", () => r()));
  const up = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
  stored = await startStoredGateway(
    [deployedRow("tls-api", { contextPath: "/api", upstream: { url: up } })],
    { tls: { cert, key: pair.key } },
  );
});

afterAll(async () => {
  await stored?.close();
  upstream.closeAllConnections();
  await new Promise<void>((r) => upstream.close(() => r()));
  rmSync(dir, { recursive: true, force: true });
});

/** One HTTPS request trusting the test certificate: its status and body. */
const call = async (method: string, path: string, body?: string) => {
  const { status, text } = await requestText(`${stored.gateway.url}${path}`, {
    method,
    ca: cert,
    ...(body ? { body, headers: { "content-length": body.length } } : {}),
  });
  return { status, text };
};

describe("the gateway over TLS", () => {
  it("serves its URL as https, on the fast path and on node:http, telling upstreams it was https", async () => {
    expect(stored.gateway.url).toMatch(/^https:\/\//);
    const before = seen.length;
    expect(await call("GET", "/api/items?x=1")).toEqual({ status: 200, text: "GET /items?x=1" });
    expect(await call("POST", "/api/items", "{}")).toEqual({ status: 200, text: "POST /items" });
    const forwarded = seen.slice(before);
    expect(forwarded).toHaveLength(2);
    for (const h of forwarded) expect(h["x-forwarded-proto"]).toBe("https");
  });

  it("carries a WebSocket (wss) through to its upstream", async () => {
    const ws = new WebSocket(`${stored.gateway.url.replace(/^https/, "wss")}/api/socket`, {
      ca: cert,
    });
    await new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject));
    const answer = new Promise<string>((r) => ws.once("message", (m) => r(String(m))));
    ws.send("hi");
    expect(await answer).toBe("echo:hi");
    expect(seen.at(-1)!["x-forwarded-proto"]).toBe("https");
    ws.close();
  });

  it("answers nothing to plain HTTP on its TLS port", async () => {
    const plain = stored.gateway.url.replace(/^https/, "http");
    await expect(fetch(`${plain}/api/items`)).rejects.toThrow();
  });
});
