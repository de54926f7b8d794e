// The internal HTTP client reads at most maxResponseBytes of an answer: an endless or oversized
// body from a peer (an endpoint an agent advertised) is cut off with a typed error, not retried.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { InternalHttpClient, InternalResponseTooLarge } from "../../src/hub/internal/index.js";

const servers: Server[] = [];
const clients: InternalHttpClient[] = [];
afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
  for (const s of servers) s.closeAllConnections();
  for (const s of servers) s.close();
});

/** A fake peer: `declared` sends a Content-Length; else it streams 64 KiB chunks until cut off. */
async function peer(declared?: number): Promise<{ url: string; requests: () => number }> {
  let n = 0;
  const server = createServer((_req, res) => {
    n++;
    if (declared !== undefined) {
      res.writeHead(200, { "content-length": String(declared) });
      res.write(Buffer.alloc(1024, "a")); // the rest never comes: the header alone decides
      return;
    }
    res.writeHead(200, { "content-type": "application/json" });
    const chunk = Buffer.alloc(64 * 1024, "a");
    const pump = () => {
      while (!res.destroyed && res.write(chunk)) {}
      if (!res.destroyed) res.once("drain", pump);
    };
    pump();
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests: () => n,
  };
}

describe("internal HTTP client answer cap", () => {
  it("cuts off an endless answer past the cap with InternalResponseTooLarge, without retrying", async () => {
    const p = await peer();
    const client = new InternalHttpClient();
    clients.push(client);
    const err = await client
      .call({ method: "GET", url: `${p.url}/status`, deadlineMs: 10_000, idempotent: true })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InternalResponseTooLarge);
    expect(err).toMatchObject({ code: "agent.unavailable", limitBytes: 1024 * 1024 });
    expect(p.requests()).toBe(1);
  });

  it("refuses an answer whose declared length is past the cap before reading it", async () => {
    const p = await peer(4096);
    const client = new InternalHttpClient();
    clients.push(client);
    const err = await client
      .call({
        method: "GET",
        url: `${p.url}/status`,
        deadlineMs: 10_000,
        idempotent: true,
        maxResponseBytes: 2048,
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InternalResponseTooLarge);
    expect(p.requests()).toBe(1);
  });
});
