// Outgoing webhooks on the NATS backbone: an endpoint that fails three times then succeeds gets
// the event once, signed, with the same delivery id each time; deliveries are recorded with their
// status; bad input and other tenants' ids change nothing; the secret is sealed at rest.
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebhooksService } from "../../src/gen/flotilla/v1/events_pb.js";
import { Keyring } from "../../src/hub/index.js";
import { verifyWebhook, WebhooksService as Webhooks } from "../../src/hub/webhooks/index.js";
import { createLogger, traceIdOf } from "../../src/shared/index.js";
import { api, createFixture, eventually, expectError, secondTenant } from "../support/core.js";
import { bootstrapOwner, startTestHub, TEST_MASTER_KEY, type TestHub } from "../support/hub.js";

const NATS_URL = "nats://127.0.0.1:4222";

interface Received {
  headers: IncomingMessage["headers"];
  body: string;
  answered: number;
}

let t: TestHub;
let token: string;
let receiver: Server;
let receiverUrl: string;
const received: Received[] = [];
let failuresLeft = 3;
const stream = `T${randomBytes(5).toString("hex")}`;

const webhooksClient = (tok: string) =>
  createClient(
    WebhooksService,
    createConnectTransport({
      baseUrl: t.hub.url,
      httpVersion: "1.1",
      interceptors: [
        (next) => async (req) => {
          req.header.set("authorization", `Bearer ${tok}`);
          return next(req);
        },
      ],
    }),
  );

beforeAll(async () => {
  receiver = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => {
      body += c;
    });
    req.on("end", () => {
      const answered = failuresLeft > 0 ? 503 : 204;
      if (failuresLeft > 0) failuresLeft--;
      received.push({ headers: req.headers, body, answered });
      res.statusCode = answered;
      res.end();
    });
  });
  await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", () => r()));
  receiverUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;
  t = await startTestHub("postgres", {
    nats: { url: NATS_URL, stream, subjectRoot: stream.toLowerCase() },
    // The fake receiver listens on loopback, which webhooks refuse unless the operator allows it.
    webhooks: {
      backoffBaseMs: 50,
      backoffMaxMs: 200,
      pollIntervalMs: 50,
      allowHosts: ["127.0.0.1"],
    },
  });
  token = (await bootstrapOwner(t.hub)).token;
});

afterAll(async () => {
  await t?.stop();
  await new Promise<void>((r) => receiver.close(() => r()));
  const nc = await connect({ servers: NATS_URL });
  await (await jetstreamManager(nc)).streams.delete(stream).catch(() => {});
  await nc.close();
});

describe("webhooks", () => {
  it("an endpoint failing three times then succeeding receives the deployment event once, signed", async () => {
    const hooks = webhooksClient(token);
    const { endpoint, secret } = await hooks.createWebhookEndpoint({
      url: receiverUrl,
      eventTypes: ["deployment.*"],
    });
    expect(secret).toMatch(/^whsec_/);
    // Sealed at rest: the secret's bytes are not in the row.
    const row = await t.hub.db.query<{ secret_sealed: Buffer }>(
      "SELECT secret_sealed FROM webhook_endpoints WHERE id = $1",
      [endpoint!.id],
    );
    expect(row.rows[0]!.secret_sealed.includes(Buffer.from(secret))).toBe(false);

    const traceparent = `00-${randomBytes(16).toString("hex")}-${randomBytes(8).toString("hex")}-01`;
    const a = api(t.hub.url, token, () => ({ traceparent }));
    const fx = await createFixture(a, "hook");
    const deployed = await a.services.deploy({ serviceId: fx.serviceId });
    const deploymentId = deployed.deployment!.id;

    const deliveries = await eventually(
      async () => {
        const r = await hooks.listWebhookDeliveries({ endpointId: endpoint!.id });
        return r.deliveries[0]?.status === "succeeded" ? r.deliveries : undefined;
      },
      30_000,
      "the delivery to succeed",
    );
    expect(deliveries).toHaveLength(1);
    expect(deliveries![0]).toMatchObject({
      eventType: "deployment.created",
      status: "succeeded",
      attempts: 4,
      lastStatusCode: 204,
      lastError: "",
    });
    expect(received.map((r) => r.answered)).toEqual([503, 503, 503, 204]);
    const deliveryIds = new Set(received.map((r) => r.headers["flotilla-delivery-id"]));
    expect(deliveryIds.size).toBe(1);
    const success = received[3]!;
    const body = JSON.parse(success.body) as {
      id: string;
      type: string;
      subject_id: string;
      data: Record<string, unknown>;
    };
    expect(body.type).toBe("deployment.created");
    expect(success.headers["flotilla-event-id"]).toBe(body.id);
    expect(`${body.subject_id} ${JSON.stringify(body.data)}`).toContain(deploymentId);
    expect(verifyWebhook(secret, success.body, String(success.headers["flotilla-signature"]))).toBe(
      true,
    );
    expect(
      verifyWebhook("whsec_wrong", success.body, String(success.headers["flotilla-signature"])),
    ).toBe(false);
    expect(traceIdOf(String(success.headers.traceparent))).toBe(traceIdOf(traceparent));
    // Project and service events are not deployment events: nothing else was sent.
    expect(new Set(received.map((r) => JSON.parse(r.body).id)).size).toBe(1);
  });

  it("key rotation re-seals endpoint secrets, which still sign the same", async () => {
    const hooks = webhooksClient(token);
    const { endpoint, secret } = await hooks.createWebhookEndpoint({
      url: "https://example.com/rot",
    });
    const next = { id: "test-key-2", key: Buffer.alloc(32, 3) };
    const rotated = new Webhooks(
      t.hub.db,
      new Keyring(next, [TEST_MASTER_KEY]),
      async () => {},
      createLogger({ level: "silent" }),
    );
    expect(await rotated.resealSecrets()).toBeGreaterThanOrEqual(1);
    const row = await t.hub.db.query<{ secret_sealed: Buffer; secret_key_id: string }>(
      "SELECT secret_sealed, secret_key_id FROM webhook_endpoints WHERE id = $1",
      [endpoint!.id],
    );
    expect(row.rows[0]!.secret_key_id).toBe("test-key-2");
    expect(
      new Keyring(next).open(row.rows[0]!.secret_sealed, "test-key-2", `webhook:${endpoint!.id}`),
    ).toBe(secret);
    expect(await rotated.resealSecrets()).toBe(0);
    await hooks.deleteWebhookEndpoint({ id: endpoint!.id });
  });

  it("rejects bad endpoints with the field named, writing nothing", async () => {
    const hooks = webhooksClient(token);
    const before = (await hooks.listWebhookEndpoints({})).endpoints.length;
    const bad: Array<[Record<string, unknown>, string]> = [
      [{ url: "" }, "url"],
      [{ url: "ftp://example.com/x" }, "url"],
      [{ url: "not a url" }, "url"],
      [{ url: `https://example.com/${"x".repeat(2001)}` }, "url"],
      [{ url: "https://user:pw@example.com/" }, "url"],
      [{ url: "https://example.com/", eventTypes: ["project.*"] }, "event_types"],
      [{ url: "https://example.com/", eventTypes: ["deployment.>"] }, "event_types"],
      [{ url: "https://example.com/", description: "d".repeat(201) }, "description"],
    ];
    for (const [req, field] of bad) {
      await expectError(hooks.createWebhookEndpoint(req), "validation.failed", field);
    }
    expect((await hooks.listWebhookEndpoints({})).endpoints.length).toBe(before);
    await expectError(hooks.deleteWebhookEndpoint({ id: "nope" }), "validation.failed", "id");
    await expectError(
      hooks.deleteWebhookEndpoint({ id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b" }),
      "resource.not_found",
    );
  });

  it("another tenant's endpoint answers not-found and stays", async () => {
    const hooks = webhooksClient(token);
    const { endpoint } = await hooks.createWebhookEndpoint({ url: "https://example.com/a" });
    const other = await secondTenant(t.hub, token);
    const theirs = webhooksClient(other.token);
    await expectError(theirs.deleteWebhookEndpoint({ id: endpoint!.id }), "resource.not_found");
    await expectError(
      theirs.listWebhookDeliveries({ endpointId: endpoint!.id }),
      "resource.not_found",
    );
    expect((await theirs.listWebhookEndpoints({})).endpoints).toEqual([]);
    expect((await hooks.listWebhookEndpoints({})).endpoints.map((e) => e.id)).toContain(
      endpoint!.id,
    );
    await hooks.deleteWebhookEndpoint({ id: endpoint!.id });
    expect((await hooks.listWebhookEndpoints({})).endpoints.map((e) => e.id)).not.toContain(
      endpoint!.id,
    );
  });
});
