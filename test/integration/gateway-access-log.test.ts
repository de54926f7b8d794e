// The gateway's access log: one JSON line per request, on the fast path (plain GETs, and the 404 of
// a path no route matches) and on node:http (a POST), each with the request's correlation id, its
// status and duration; lines wait in a batch and are all written when the gateway stops.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deployedRow, type StoredGateway, startStoredGateway } from "../support/gateway.js";
import { requestText, sendRaw } from "../support/http.js";

let upstream: Server;
let stored: StoredGateway | undefined;
const batches: string[] = [];

beforeAll(async () => {
  upstream = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("ok");
    });
  });
  await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", () => r()));
  const up = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
  stored = await startStoredGateway(
    [deployedRow("logged-api", { contextPath: "/api", upstream: { url: up } })],
    { accessLog: { write: (batch: Buffer) => batches.push(batch.toString("utf8")) } },
  );
});

afterAll(async () => {
  await stored?.close();
  upstream.closeAllConnections();
  await new Promise<void>((r) => upstream.close(() => r()));
});

describe("the gateway's access log", () => {
  it("writes one parseable line per request on both data paths, all of them by the time it stops", async () => {
    const url = stored!.gateway.url;
    // No duration series before a first request (as prom-client's own histograms).
    const metrics = await (await fetch(`${stored!.gateway.adminUrl}/metrics`)).text();
    expect(metrics).toContain("# TYPE flotilla_gateway_request_duration_seconds histogram");
    expect(metrics).not.toContain("flotilla_gateway_request_duration_seconds_count");
    const started = Date.now();
    const get = await requestText(`${url}/api/items?x=1`, {
      headers: { "x-correlation-id": "access-log-get" },
    });
    const post = await requestText(`${url}/api/items`, {
      method: "POST",
      headers: { "x-correlation-id": "access-log-post", "content-length": 2 },
      body: "{}",
    });
    const missing = await requestText(`${url}/nowhere`, {
      headers: { "x-correlation-id": "access-log-404" },
    });
    // A quote in the path and the host, a tab and bytes beyond ASCII in the host: escaped in JSON
    // (and such a Host is refused, 400: it is no host name).
    const odd = await sendRaw(
      Number(new URL(url).port),
      'GET /api/q"uote HTTP/1.1\r\nhost: we"ird\tcaf\u00e9\r\nx-correlation-id: access-log-odd\r\n\r\n',
      (t) => t.endsWith("}"),
    );
    expect(odd).toMatch(/^HTTP\/1\.1 400 /);
    expect(odd).toContain('"code":"request.malformed"');
    // Hosts are logged without their port; an IPv6 literal keeps its colons.
    for (const [host, id] of [
      ["[::1]:8080", "access-log-v6-port"],
      ["[::1]", "access-log-v6"],
    ]) {
      const answer = await sendRaw(
        Number(new URL(url).port),
        `GET /api/items HTTP/1.1\r\nhost: ${host}\r\nx-correlation-id: ${id}\r\n\r\n`,
        (t) => t.endsWith("\r\n0\r\n\r\n"),
      );
      expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    }
    expect([get.status, post.status, missing.status]).toEqual([200, 200, 404]);
    // Batched: nothing has to be written yet; stopping writes the rest.
    await stored!.close();
    stored = undefined;
    const text = batches.join("").split("\n").filter(Boolean);
    const lines = text.map((l) => JSON.parse(l) as Record<string, unknown>);
    // Each line is exactly what JSON.stringify gives for its fields, in pino's order.
    for (const [i, line] of lines.entries()) expect(JSON.stringify(line)).toBe(text[i]);
    const byCorrelation = new Map(lines.map((l) => [l.correlation, l]));
    expect(byCorrelation.get("access-log-get")).toMatchObject({
      level: 30,
      method: "GET",
      path: "/api/items",
      status: 200,
      api: "logged-api",
    });
    expect(byCorrelation.get("access-log-get")?.host).toBe("127.0.0.1");
    expect(byCorrelation.get("access-log-v6-port")?.host).toBe("[::1]");
    expect(byCorrelation.get("access-log-v6")?.host).toBe("[::1]");
    expect(byCorrelation.get("access-log-post")).toMatchObject({
      method: "POST",
      status: 200,
      api: "logged-api",
    });
    // The client sent "é" as UTF-8; a head is read as latin1 and a host lowercased: "ã©".
    expect(byCorrelation.get("access-log-odd")).toMatchObject({
      host: 'we"ird\tcaf\u00e3\u00a9',
      path: '/api/q"uote',
      status: 400,
    });
    expect(byCorrelation.get("access-log-404")).toMatchObject({
      method: "GET",
      path: "/nowhere",
      status: 404,
      api: null,
    });
    for (const line of lines) {
      expect(typeof line.ms).toBe("number");
      expect(line.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/);
      const at = Date.parse(line.time as string);
      expect(new Date(at).toISOString()).toBe(line.time);
      expect(at).toBeGreaterThanOrEqual(started - 1000);
      expect(at).toBeLessThanOrEqual(Date.now());
    }
  });
});
