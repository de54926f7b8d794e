// An upstream URL names a host; the gateway learns its addresses only when it connects. A name
// that resolves to the cloud metadata service (or another address upstreams may not have) must be
// refused there, on every path to an upstream: the fast path (GET), node:http with undici (a body)
// and WebSocket upgrades. The machine's resolver cannot be given records by a test, so names
// resolve through FAKE_DNS, a fake resolver passed to the gateway; everything else is real.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ResolveAll } from "../../src/shared/index.js";
import { deployedRow, type StoredGateway, startStoredGateway } from "../support/gateway.js";
import { sendRaw } from "../support/http.js";

/** Fake DNS: the records this test needs, and nothing else. */
const FAKE_DNS: Record<string, Array<{ address: string; family: number }>> = {
  "upstream.test": [{ address: "127.0.0.1", family: 4 }],
  "metadata-alias.test": [{ address: "169.254.169.254", family: 4 }],
  "aws-v6-metadata.test": [{ address: "fd00:ec2::254", family: 6 }],
  // Alibaba's metadata address written as an IPv4-mapped IPv6 address.
  "mapped-metadata.test": [{ address: "::ffff:100.100.100.200", family: 6 }],
  // A resolver that answers with no address at all.
  "empty.test": [],
  // A name with a good address first and a metadata one second is refused all the same.
  "mixed.test": [
    { address: "127.0.0.1", family: 4 },
    { address: "169.254.169.254", family: 4 },
  ],
};
const lookups: string[] = [];
const fakeDns: ResolveAll = (hostname, _options, callback) => {
  lookups.push(hostname);
  const records = FAKE_DNS[hostname];
  setImmediate(() => {
    if (records) callback(null, records);
    else
      callback(
        Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: "ENOTFOUND" }),
        [],
      );
  });
};

let upstream: Server;
let stored: StoredGateway;
let hits = 0;

beforeAll(async () => {
  upstream = createServer((req, res) => {
    hits++;
    req.resume();
    req.on("end", () => res.end("from upstream"));
  });
  await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", () => r()));
  const port = (upstream.address() as AddressInfo).port;
  const api = (name: string, host: string) =>
    deployedRow(`api-${name}`, {
      contextPath: `/${name}`,
      upstream: { url: `http://${host}:${port}` },
    });
  stored = await startStoredGateway(
    [
      api("good", "upstream.test"),
      api("metadata", "metadata-alias.test"),
      api("v6", "aws-v6-metadata.test"),
      api("mixed", "mixed.test"),
      api("mapped", "mapped-metadata.test"),
      api("empty", "empty.test"),
    ],
    { resolveUpstream: fakeDns },
  );
});

afterAll(async () => {
  await stored?.close();
  await new Promise<void>((r) => upstream.close(() => r()));
});

/** The request is answered 502 for a refused address, and the upstream never sees it. */
async function expectRefused(send: () => Promise<Response>): Promise<void> {
  const before = hits;
  const res = await send();
  expect(res.status).toBe(502);
  const body = (await res.json()) as { code: string; message: string };
  expect(body.code).toBe("upstream.unavailable");
  expect(body.message).toContain("UPSTREAM_ADDRESS_REFUSED");
  expect(hits).toBe(before);
}

describe("upstream names are resolved and checked when the gateway connects", () => {
  it("proxies to a name that resolves to loopback, through the fake DNS", async () => {
    const res = await fetch(`${stored.gateway.url}/good/x`);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe("from upstream");
    expect(lookups).toContain("upstream.test");
  });

  for (const name of ["metadata", "v6", "mixed", "mapped"]) {
    it(`answers 502 and never connects for a name resolving to a metadata address (${name}, GET on the fast path)`, async () => {
      await expectRefused(() => fetch(`${stored.gateway.url}/${name}/latest/meta-data/`));
    });
  }

  it("answers 502 for a name the resolver gives no address, and keeps serving", async () => {
    const res = await fetch(`${stored.gateway.url}/empty/x`);
    expect(res.status).toBe(502);
    expect(((await res.json()) as { message: string }).message).toContain("ENOTFOUND");
    expect((await fetch(`${stored.gateway.url}/good/x`)).status).toBe(200);
  });

  // mixed.test's first address answers: without the check these would reach the upstream.
  it("refuses such a name for a request with a body (node:http and undici)", async () => {
    await expectRefused(() =>
      fetch(`${stored.gateway.url}/mixed/x`, { method: "POST", body: "{}" }),
    );
  });

  it("refuses such a name for a WebSocket upgrade", async () => {
    const before = hits;
    const port = Number(new URL(stored.gateway.url).port);
    const answer = await sendRaw(
      port,
      "GET /mixed/socket HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n" +
        "sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
      (text) => text.includes("\r\n\r\n"),
    );
    expect(answer.split("\r\n")[0]).toBe("HTTP/1.1 502 Bad Gateway");
    expect(hits).toBe(before);
  });
});
