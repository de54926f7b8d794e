// The internal HTTP client (hub -> agent admin, later hub -> gateway) against real loopback
// servers: context headers, the deadline, retries only for idempotent calls, the bounded LRU of
// pools and their idle TTL; and the signature scheme of direct requests.
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { InternalHttpClient } from "../../src/hub/internal/index.js";
import {
  DIRECT_MAX_SKEW_MS,
  directKey,
  FlotillaError,
  signDirect,
  traceIdOf,
  verifyDirect,
} from "../../src/shared/index.js";

interface Seen {
  method: string;
  headers: IncomingHttpHeaders;
}

const servers: Server[] = [];
async function serve(
  answer: (n: number) => number | "hang",
): Promise<{ url: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    seen.push({ method: req.method ?? "", headers: req.headers });
    req.resume();
    const status = answer(seen.length);
    if (status === "hang") return; // never answers
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify({ n: seen.length }));
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

const clients: InternalHttpClient[] = [];
const client = (o: ConstructorParameters<typeof InternalHttpClient>[0] = {}) => {
  const c = new InternalHttpClient({ retryBaseMs: 5, retryCapMs: 20, ...o });
  clients.push(c);
  return c;
};

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
});
afterAll(() => {
  for (const s of servers) s.closeAllConnections?.();
  for (const s of servers) s.close();
});

describe("internal HTTP client", () => {
  it("injects the correlation id, a child of the traceparent, and the tenant", async () => {
    const peer = await serve(() => 200);
    const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const res = await client().call({
      method: "GET",
      url: `${peer.url}/status`,
      deadlineMs: 5000,
      idempotent: true,
      context: { correlationId: "corr-1", traceparent, tenant: "org-1" },
    });
    expect(res.status).toBe(200);
    const h = peer.seen[0]!.headers;
    expect(h["x-correlation-id"]).toBe("corr-1");
    expect(h["x-tenant-id"]).toBe("org-1");
    expect(traceIdOf(String(h.traceparent))).toBe("4bf92f3577b34da6a3ce929d0e0e4736");
    expect(h.traceparent).not.toBe(traceparent); // a new span of the same trace
  });

  it("retries an idempotent call on 503 and returns the answer that came", async () => {
    const peer = await serve((n) => (n < 3 ? 503 : 200));
    const res = await client().call({
      method: "GET",
      url: `${peer.url}/status`,
      deadlineMs: 5000,
      idempotent: true,
    });
    expect(res).toMatchObject({ status: 200, attempts: 3 });
    expect(peer.seen).toHaveLength(3);
  });

  it("never retries a call that is not idempotent", async () => {
    const peer = await serve(() => 503);
    const res = await client().call({
      method: "POST",
      url: `${peer.url}/drain`,
      body: "{}",
      deadlineMs: 5000,
      idempotent: false,
    });
    expect(res).toMatchObject({ status: 503, attempts: 1 });
    expect(peer.seen).toHaveLength(1);
  });

  it("gives up on an idempotent call after its retry cap", async () => {
    const peer = await serve(() => 503);
    const res = await client().call({
      method: "GET",
      url: `${peer.url}/status`,
      deadlineMs: 5000,
      idempotent: true,
      retries: 1,
    });
    expect(res).toMatchObject({ status: 503, attempts: 2 });
    expect(peer.seen).toHaveLength(2);
  });

  it("ends a call that gets no answer at its deadline with agent.unavailable", async () => {
    const peer = await serve(() => "hang");
    const err = await client()
      .call({ method: "GET", url: `${peer.url}/status`, deadlineMs: 300, idempotent: true })
      .catch((e) => e);
    expect(err).toBeInstanceOf(FlotillaError);
    expect(err.code).toBe("agent.unavailable");
    expect(err.message).toContain("within 300 ms");
  });

  it("refuses a call without a usable deadline or with another scheme", async () => {
    for (const deadlineMs of [0, -1, Number.NaN, 3 * 3600_000]) {
      await expect(
        client().call({ method: "GET", url: "http://127.0.0.1:1/", deadlineMs, idempotent: true }),
      ).rejects.toThrow(/deadline/);
    }
    await expect(
      client().call({
        method: "GET",
        url: "file:///etc/passwd",
        deadlineMs: 100,
        idempotent: true,
      }),
    ).rejects.toThrow(/http/);
  });

  it("reports a refused connection, retried only when idempotent", async () => {
    const closed = await serve(() => 200);
    const url = closed.url;
    const server = servers.pop()!;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const err = await client()
      .call({
        method: "POST",
        url: `${url}/v1/dispatch`,
        body: "{}",
        deadlineMs: 2000,
        idempotent: false,
      })
      .catch((e) => e);
    expect(err.code).toBe("agent.unavailable");
  });

  it("keeps at most maxOrigins pools, evicting the least recently used", async () => {
    const peers = await Promise.all([serve(() => 200), serve(() => 200), serve(() => 200)]);
    const c = client({ maxOrigins: 2 });
    const get = (i: number) =>
      c.call({ method: "GET", url: `${peers[i]!.url}/status`, deadlineMs: 2000, idempotent: true });
    await get(0);
    await get(1);
    await get(0); // 0 is now the most recently used
    await get(2);
    expect(c.origins()).toEqual([peers[0]!.url, peers[2]!.url]);
  });

  it("closes a pool left idle past its TTL", async () => {
    const peer = await serve(() => 200);
    const c = client({ idleTtlMs: 200 });
    await c.call({ method: "GET", url: `${peer.url}/status`, deadlineMs: 2000, idempotent: true });
    expect(c.origins()).toEqual([peer.url]);
    const until = Date.now() + 10_000;
    while (c.origins().length > 0 && Date.now() < until)
      await new Promise((r) => setTimeout(r, 50));
    expect(c.origins()).toEqual([]);
  });
});

describe("signed direct requests", () => {
  const key = directKey("server-secret-0123456789", "01a23296-061d-7e17-80ed-9bbb4c559c4a");
  const body = '{"v":1}';

  it("accepts what was signed, with this key, for this method, path and body", () => {
    const h = signDirect(key, "POST", "/v1/dispatch", body);
    const check = (k: Buffer, m: string, p: string, b: string) =>
      verifyDirect(k, m, p, b, h["x-flotilla-timestamp"], h["x-flotilla-signature"]);
    expect(check(key, "POST", "/v1/dispatch", body)).toBeNull();
    expect(check(key, "GET", "/v1/dispatch", body)).toBe("signature mismatch");
    expect(check(key, "POST", "/drain", body)).toBe("signature mismatch");
    expect(check(key, "POST", "/v1/dispatch", '{"v":2}')).toBe("signature mismatch");
    const otherServer = directKey(
      "server-secret-0123456789",
      "01a23296-061d-7e17-80ed-9bbb4c559c4b",
    );
    expect(check(otherServer, "POST", "/v1/dispatch", body)).toBe("signature mismatch");
  });

  it("refuses stale, future, missing and malformed signatures", () => {
    const old = signDirect(key, "POST", "/x", body, Date.now() - DIRECT_MAX_SKEW_MS - 1000);
    expect(
      verifyDirect(
        key,
        "POST",
        "/x",
        body,
        old["x-flotilla-timestamp"],
        old["x-flotilla-signature"],
      ),
    ).toMatch(/window/);
    const future = signDirect(key, "POST", "/x", body, Date.now() + DIRECT_MAX_SKEW_MS + 1000);
    expect(
      verifyDirect(
        key,
        "POST",
        "/x",
        body,
        future["x-flotilla-timestamp"],
        future["x-flotilla-signature"],
      ),
    ).toMatch(/window/);
    expect(verifyDirect(key, "POST", "/x", body, undefined, undefined)).toMatch(/timestamp/);
    expect(verifyDirect(key, "POST", "/x", body, "12ab", "00")).toMatch(/timestamp/);
    expect(verifyDirect(key, "POST", "/x", body, String(Date.now()), "zz".repeat(32))).toMatch(
      /signature/,
    );
  });

  it("derives a key that is not the secret", () => {
    expect(key.toString("utf8")).not.toContain("server-secret");
    expect(key).toHaveLength(32);
  });
});
