// Webhooks never reach the hub's own host, its cloud metadata service or private networks by
// default: refused at create time (address literals, localhost) with validation.failed on `url`,
// and at every delivery after DNS resolution (a name that now resolves to loopback gets nothing);
// the operator's allowances (private networks, listed hosts) open exactly what they name.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebhooksService } from "../../src/gen/flotilla/v1/events_pb.js";
import { DestinationRefused, resolveDestination } from "../../src/hub/webhooks/index.js";
import { classifyAddress, uuidv7 } from "../../src/shared/index.js";
import { expectError } from "../support/core.js";
import { bootstrapOwner, startTestHub, type TestHub } from "../support/hub.js";

describe("webhook destination addresses", () => {
  const cases: Array<[string, string]> = [
    ["127.0.0.1", "loopback"],
    ["127.8.9.10", "loopback"],
    ["::1", "loopback"],
    ["::ffff:127.0.0.1", "loopback"],
    ["::ffff:7f00:1", "loopback"],
    ["::7f00:1", "loopback"],
    ["64:ff9b::a9fe:a9fe", "link-local"],
    ["64:ff9b::808:808", "public"],
    ["169.254.169.254", "link-local"],
    ["fe80::1", "link-local"],
    ["::ffff:169.254.169.254", "link-local"],
    ["0.0.0.0", "unspecified"],
    ["::", "unspecified"],
    ["10.1.2.3", "private"],
    ["172.16.0.1", "private"],
    ["172.31.255.255", "private"],
    ["192.168.1.1", "private"],
    ["100.64.0.1", "private"],
    ["fd00::1", "private"],
    ["224.0.0.1", "reserved"],
    ["255.255.255.255", "reserved"],
    ["8.8.8.8", "public"],
    ["172.32.0.1", "public"],
    ["2606:4700::1111", "public"],
  ];
  for (const [address, kind] of cases)
    it(`classifies ${address} as ${kind}`, () => {
      expect(classifyAddress(address)).toBe(kind);
    });

  it("refuses a name resolving to loopback by default, and returns the checked address when allowed", async () => {
    const url = new URL("http://localhost:9/hook");
    await expect(resolveDestination(url, {})).rejects.toBeInstanceOf(DestinationRefused);
    await expect(resolveDestination(url, {})).rejects.toThrow(/localhost resolves to .*loopback/);
    const allowed = await resolveDestination(url, { allowPrivateNetworks: true });
    expect(classifyAddress(allowed.address)).toBe("loopback");
    expect((await resolveDestination(url, { allowHosts: ["LOCALHOST"] })).address).toBe(
      allowed.address,
    );
  });

  it("keeps the metadata address refused when private networks are allowed, unless the host is listed", async () => {
    const url = new URL("http://169.254.169.254/latest/meta-data/");
    await expect(resolveDestination(url, { allowPrivateNetworks: true })).rejects.toThrow(
      /169\.254\.169\.254 \(link-local address\)/,
    );
    expect(await resolveDestination(url, { allowHosts: ["169.254.169.254"] })).toMatchObject({
      address: "169.254.169.254",
      family: 4,
    });
  });
});

describe("a hub with the default destination policy", () => {
  let t: TestHub;
  let token: string;
  let receiver: Server;
  let port: number;
  let hits = 0;

  const hooks = () =>
    createClient(
      WebhooksService,
      createConnectTransport({
        baseUrl: t.hub.url,
        httpVersion: "1.1",
        interceptors: [
          (next) => async (req) => {
            req.header.set("authorization", `Bearer ${token}`);
            return next(req);
          },
        ],
      }),
    );

  beforeAll(async () => {
    receiver = createServer((_req, res) => {
      hits++;
      res.statusCode = 204;
      res.end();
    });
    await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", () => r()));
    port = (receiver.address() as AddressInfo).port;
    t = await startTestHub("postgres");
    token = (await bootstrapOwner(t.hub)).token;
  });
  afterAll(async () => {
    await t?.stop();
    await new Promise<void>((r) => receiver.close(() => r()));
  });

  it("refuses loopback, link-local, unspecified and private URLs with validation.failed on url, writing nothing", async () => {
    const refused = [
      `http://127.0.0.1:${port}/hook`,
      "http://[::1]/hook",
      "http://[::ffff:127.0.0.1]/hook",
      "http://2130706433/hook", // 127.0.0.1 written as one number
      "http://0x7f.1/hook",
      "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
      "http://[fe80::1]/hook",
      "http://0.0.0.0/hook",
      "http://10.0.0.5/hook",
      "http://192.168.1.10/hook",
      "http://localhost:8080/hook",
      "http://api.localhost/hook",
    ];
    for (const url of refused) {
      const err = await expectError(
        hooks().createWebhookEndpoint({ url }),
        "validation.failed",
        "url",
      );
      expect(err.message).toMatch(/must not point at/);
      expect(err.message).toContain("FLOTILLA_WEBHOOK_ALLOW_PRIVATE");
    }
    const { rows } = await t.hub.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM webhook_endpoints",
    );
    expect(rows[0]!.n).toBe(0);
  });

  it("at delivery, resolves the name again: an endpoint whose host now resolves to loopback is refused and the receiver gets nothing", async () => {
    const { endpoint } = await hooks().createWebhookEndpoint({
      url: "https://hooks.example.com/flotilla",
    });
    // As if hooks.example.com were re-pointed at the hub's own host after it was registered.
    await t.hub.db.query("UPDATE webhook_endpoints SET url = $2 WHERE id = $1", [
      endpoint!.id,
      `http://localhost:${port}/hook`,
    ]);
    const { rows: org } = await t.hub.db.query<{ organization_id: string }>(
      "SELECT organization_id FROM webhook_endpoints WHERE id = $1",
      [endpoint!.id],
    );
    const deliveryId = uuidv7();
    await t.hub.db.query(
      `INSERT INTO webhook_deliveries (id, organization_id, endpoint_id, event_id, event_type, body,
                                       correlation_id, traceparent)
       VALUES ($1, $2, $3, $4, 'deployment.created', '{}', 'corr-ssrf',
               '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01')`,
      [deliveryId, org[0]!.organization_id, endpoint!.id, uuidv7()],
    );
    expect(await t.hub.webhooks.deliverDue()).toBe(1);
    const { deliveries } = await hooks().listWebhookDeliveries({ endpointId: endpoint!.id });
    expect(deliveries).toHaveLength(1);
    expect(deliveries[0]).toMatchObject({ status: "pending", attempts: 1 });
    expect(deliveries[0]!.lastError).toMatch(
      /^destination refused: localhost resolves to \S+ \(loopback address\)/,
    );
    expect(hits).toBe(0);
  });
});
