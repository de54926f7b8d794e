// APIs, gateways and API deployments on a real hub: bad input gets a typed error naming its field
// and changes nothing; another tenant's ids answer not-found; the LLM credential is sealed and
// never shown; deployedAt has millisecond precision and moves forward on every state change; the
// gateway sync endpoints refuse bad tokens and malformed bodies.
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { ApiKind, ApiService, GatewayService } from "../../src/gen/flotilla/v1/apis_pb.js";
import { GATEWAY_SYNC } from "../../src/shared/index.js";
import type { Queryable } from "../../src/store/index.js";
import { expectError, secondTenant } from "../support/core.js";
import { bootstrapOwner, startTestHub, type TestHub } from "../support/hub.js";

const TABLES = [
  "apis",
  "api_consumer_keys",
  "gateways",
  "api_deployments",
  "api_deployment_status",
  "outbox_events",
  "audit_log",
];
const UNKNOWN = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
const CREDENTIAL = "sk-sealed-credential-that-must-never-show-9f8e7d";

async function state(db: Queryable): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const t of TABLES) {
    // last_seen_at is observed state the gateway's own calls stamp: not a change a request made.
    const from =
      t === "gateways"
        ? "(SELECT id, organization_id, data_plane_id, name, token_hash, created_at FROM gateways)"
        : t;
    const { rows } = await db.query<{ d: string }>(
      `SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') AS d FROM ${from} t`,
    );
    out[t] = rows[0]!.d;
  }
  return out;
}

const clientsFor = (url: string, token: string) => {
  const transport = createConnectTransport({
    baseUrl: url,
    httpVersion: "1.1",
    interceptors: [
      (next) => async (req) => {
        req.header.set("authorization", `Bearer ${token}`);
        return next(req);
      },
    ],
  });
  return {
    apis: createClient(ApiService, transport),
    gateways: createClient(GatewayService, transport),
  };
};

describe("APIs and gateways: bad input, isolation, sealing, timestamps", () => {
  let t: TestHub;
  let a: ReturnType<typeof clientsFor>;
  let b: ReturnType<typeof clientsFor>;
  let gatewayId: string;
  let gatewayToken: string;
  let restId: string;
  let providerId: string;
  let proxyId: string;

  beforeAll(async () => {
    t = await startTestHub("pglite");
    const owner = await bootstrapOwner(t.hub);
    a = clientsFor(t.hub.url, owner.token);
    b = clientsFor(t.hub.url, (await secondTenant(t.hub, owner.token)).token);
    const g = await a.gateways.createGateway({ name: "edge" });
    gatewayId = g.gateway!.id;
    gatewayToken = g.token;
    restId = (
      await a.apis.createApi({
        name: "orders",
        kind: ApiKind.REST_API,
        definitionJson: JSON.stringify({
          contextPath: "/orders",
          upstream: { url: "http://127.0.0.1:9" },
        }),
      })
    ).api!.id;
    providerId = (
      await a.apis.createApi({
        name: "llm",
        kind: ApiKind.LLM_PROVIDER,
        definitionJson: JSON.stringify({
          contextPath: "/llm",
          upstreamUrl: "http://127.0.0.1:9/v1",
          models: ["m"],
        }),
        credential: CREDENTIAL,
      })
    ).api!.id;
    proxyId = (
      await a.apis.createApi({
        name: "proxy",
        kind: ApiKind.LLM_PROXY,
        definitionJson: JSON.stringify({
          contextPath: "/ai",
          rateLimit: { requestsPerMinute: 10 },
        }),
        provider: providerId,
      })
    ).api!.id;
  }, 60_000);

  afterAll(async () => {
    await t?.stop();
  });

  const unchanged = async (fn: () => Promise<unknown>) => {
    const before = await state(t.hub.db);
    await fn();
    expect(await state(t.hub.db)).toEqual(before);
  };

  const rest = (def: unknown, name = "bad-api") => ({
    name,
    kind: ApiKind.REST_API,
    definitionJson: typeof def === "string" ? def : JSON.stringify(def),
  });

  /** A RestApi case whose upstream URL must be refused, naming that field. */
  const refusedUpstream = (url: string): [unknown, string] => [
    { contextPath: "/a", upstream: { url } },
    "definition_json.upstream.url",
  ];

  it("malformed, oversized and wrongly typed definitions are refused naming the field, changing nothing", async () => {
    const cases: Array<[unknown, string]> = [
      ["{not json", "definition_json"],
      [[], "definition_json"],
      [{ contextPath: "orders", upstream: { url: "http://x" } }, "definition_json.contextPath"],
      [{ contextPath: "/a/../b", upstream: { url: "http://x" } }, "definition_json.contextPath"],
      refusedUpstream("ftp://x"),
      refusedUpstream("http://u:p@x"),
      // The cloud metadata service (the gateway host's credentials), and no-server addresses.
      refusedUpstream("http://169.254.169.254/latest"),
      refusedUpstream("http://[fe80::1]:80"),
      refusedUpstream("http://0.0.0.0:80"),
      refusedUpstream("http://Metadata.Google.Internal./x"),
      refusedUpstream("http://[fd00:ec2::254]"),
      refusedUpstream("http://100.100.100.200"),
      refusedUpstream("http://[::ffff:169.254.169.254]"),
      refusedUpstream("http://[::ffff:100.100.100.200]"),
      refusedUpstream("http://[64:ff9b::6464:64c8]"),
      [{ contextPath: "/a", upstream: {} }, "definition_json.upstream"],
      [{ contextPath: 7, upstream: { url: "http://x" } }, "definition_json.contextPath"],
      [
        { contextPath: "/a", upstream: { url: "http://x" }, surprise: 1 },
        "definition_json.surprise",
      ],
      [
        {
          contextPath: "/a",
          upstream: { url: "http://x" },
          operations: [{ method: "BREW", path: "/" }],
        },
        "definition_json.operations[0].method",
      ],
      [
        { contextPath: "/a", upstream: { url: "http://x" }, timeoutMs: 1e9 },
        "definition_json.timeoutMs",
      ],
      [
        { contextPath: "/a", upstream: { url: "http://x" }, hosts: ["not a host"] },
        "definition_json.hosts[0]",
      ],
      [
        { contextPath: "/a", upstream: { url: "http://x" }, pad: "x".repeat(70_000) },
        "definition_json",
      ],
      [{ contextPath: "/a", upstream: { service: UNKNOWN } }, "definition_json.upstream.service"],
    ];
    await unchanged(async () => {
      for (const [def, field] of cases) {
        const code =
          field === "definition_json.upstream.service" ? "resource.not_found" : "validation.failed";
        await expectError(
          a.apis.createApi(rest(def)),
          code,
          code === "validation.failed" ? field : undefined,
        );
      }
    });
  });

  it("names, kinds, credentials and providers are checked; a duplicate name is refused", async () => {
    const llm = (over: Record<string, unknown>) => ({
      name: "llm-two",
      kind: ApiKind.LLM_PROVIDER,
      definitionJson: JSON.stringify({
        contextPath: "/l2",
        upstreamUrl: "http://x/v1",
        models: ["m"],
      }),
      credential: "k",
      ...over,
    });
    await unchanged(async () => {
      await expectError(
        a.apis.createApi(rest({ contextPath: "/a", upstream: { url: "http://x" } }, "Bad Name")),
        "validation.failed",
        "name",
      );
      await expectError(
        a.apis.createApi({ ...rest({}), kind: ApiKind.UNSPECIFIED }),
        "validation.failed",
        "kind",
      );
      await expectError(
        a.apis.createApi(rest({ contextPath: "/a", upstream: { url: "http://x" } }, "orders")),
        "resource.already_exists",
        "name",
      );
      await expectError(
        a.apis.createApi(llm({ credential: "" })),
        "validation.failed",
        "credential",
      );
      await expectError(
        a.apis.createApi(llm({ credential: "x".repeat(5000) })),
        "validation.failed",
        "credential",
      );
      await expectError(
        a.apis.createApi(llm({ credential: "a\nb" })),
        "validation.failed",
        "credential",
      );
      await expectError(
        a.apis.createApi(
          llm({
            definitionJson: JSON.stringify({
              contextPath: "/l",
              upstreamUrl: "http://x",
              models: [],
            }),
          }),
        ),
        "validation.failed",
        "definition_json.models",
      );
      await expectError(
        a.apis.createApi({
          ...rest({ contextPath: "/a", upstream: { url: "http://x" } }, "with-cred"),
          credential: "k",
        }),
        "validation.failed",
        "credential",
      );
      const proxy = {
        name: "p2",
        kind: ApiKind.LLM_PROXY,
        definitionJson: JSON.stringify({ contextPath: "/p", rateLimit: { requestsPerMinute: 1 } }),
      };
      await expectError(a.apis.createApi(proxy), "validation.failed", "provider");
      await expectError(
        a.apis.createApi({ ...proxy, provider: restId }),
        "validation.failed",
        "provider",
      );
      await expectError(a.apis.createApi({ ...proxy, provider: UNKNOWN }), "resource.not_found");
      await expectError(
        a.apis.createApi({
          ...proxy,
          definitionJson: JSON.stringify({
            contextPath: "/p",
            rateLimit: { requestsPerMinute: 0 },
          }),
          provider: providerId,
        }),
        "validation.failed",
        "definition_json.rateLimit.requestsPerMinute",
      );
    });
  });

  it("another tenant's APIs and gateways answer not-found and stay as they were", async () => {
    await unchanged(async () => {
      await expectError(b.apis.getApi({ api: restId }), "resource.not_found");
      await expectError(b.apis.getApi({ api: "orders" }), "resource.not_found");
      await expectError(b.apis.deleteApi({ api: restId }), "resource.not_found");
      await expectError(
        b.apis.createConsumerKey({ api: proxyId, name: "steal" }),
        "resource.not_found",
      );
      await expectError(
        b.apis.deployApi({ api: restId, gateway: gatewayId }),
        "resource.not_found",
      );
      await expectError(
        b.apis.undeployApi({ api: restId, gateway: gatewayId }),
        "resource.not_found",
      );
      await expectError(b.gateways.getGateway({ gateway: gatewayId }), "resource.not_found");
      await expectError(b.gateways.deleteGateway({ gateway: gatewayId }), "resource.not_found");
      await expectError(
        b.apis.createApi({
          name: "px",
          kind: ApiKind.LLM_PROXY,
          definitionJson: JSON.stringify({
            contextPath: "/p",
            rateLimit: { requestsPerMinute: 1 },
          }),
          provider: providerId,
        }),
        "resource.not_found",
      );
    });
    // B's own gateway cannot receive A's API either.
    const bg = await b.gateways.createGateway({ name: "b-edge" });
    const before = await state(t.hub.db);
    await expectError(
      b.apis.deployApi({ api: restId, gateway: bg.gateway!.id }),
      "resource.not_found",
    );
    expect(await state(t.hub.db)).toEqual(before);
  });

  it("unknown ids, malformed ids and a bad data plane are refused", async () => {
    await unchanged(async () => {
      await expectError(
        a.apis.deployApi({ api: UNKNOWN, gateway: gatewayId }),
        "resource.not_found",
      );
      await expectError(a.apis.deployApi({ api: restId, gateway: UNKNOWN }), "resource.not_found");
      await expectError(
        a.apis.deployApi({ api: "", gateway: gatewayId }),
        "validation.failed",
        "api",
      );
      await expectError(
        a.apis.undeployApi({ api: restId, gateway: gatewayId }),
        "resource.not_found",
      );
      await expectError(
        a.apis.deleteConsumerKey({ api: proxyId, consumerKeyId: "nope" }),
        "validation.failed",
        "consumer_key_id",
      );
      await expectError(
        a.apis.deleteConsumerKey({ api: proxyId, consumerKeyId: UNKNOWN }),
        "resource.not_found",
      );
      await expectError(
        a.apis.createConsumerKey({ api: restId, name: "k" }),
        "validation.failed",
        "api",
      );
      await expectError(
        a.gateways.createGateway({ name: "g2", dataPlane: "no-such-plane" }),
        "resource.not_found",
      );
      await expectError(
        a.gateways.createGateway({ name: "edge" }),
        "resource.already_exists",
        "name",
      );
    });
  });

  it("the credential is sealed at rest and appears in no response, event, audit row or log", async () => {
    const { rows } = await t.hub.db.query<{ credential_sealed: Uint8Array }>(
      "SELECT credential_sealed FROM apis WHERE id = $1",
      [providerId],
    );
    expect(Buffer.from(rows[0]!.credential_sealed).toString("latin1")).not.toContain(CREDENTIAL);
    const got = await a.apis.getApi({ api: providerId });
    expect(got.api!.hasCredential).toBe(true);
    expect(JSON.stringify(got, (_k, v) => (typeof v === "bigint" ? String(v) : v))).not.toContain(
      CREDENTIAL,
    );
    await a.apis.deployApi({ api: providerId, gateway: gatewayId });
    const dump = await t.hub.db.query<{ x: string }>(
      "SELECT (SELECT coalesce(string_agg(payload::text, ''), '') FROM outbox_events) || (SELECT coalesce(string_agg(details::text, ''), '') FROM audit_log) || (SELECT coalesce(string_agg(content::text, ''), '') FROM api_deployments) AS x",
    );
    expect(dump.rows[0]!.x).not.toContain(CREDENTIAL);
    expect(JSON.stringify(t.logs)).not.toContain(CREDENTIAL);
    // Only the gateway's content fetch opens it, for transit.
    const res = await fetch(`${t.hub.url}${GATEWAY_SYNC.deployments}`, {
      headers: { authorization: `Bearer ${gatewayToken}` },
    });
    const listed = (await res.json()) as {
      deployments: Array<{ deploymentId: string; apiId: string }>;
    };
    const dep = listed.deployments.find((d) => d.apiId === providerId)!;
    const archive = await fetch(`${t.hub.url}${GATEWAY_SYNC.content}`, {
      method: "POST",
      headers: { authorization: `Bearer ${gatewayToken}`, "content-type": "application/json" },
      body: JSON.stringify({ deploymentIds: [dep.deploymentId] }),
    });
    expect(Buffer.from(await archive.arrayBuffer()).toString("utf8")).toContain(CREDENTIAL);
    await a.apis.undeployApi({ api: providerId, gateway: gatewayId });
  });

  it("deployedAt has millisecond precision and moves forward on deploy, undeploy and redeploy; deletes wait for undeploy", async () => {
    const seen: number[] = [];
    const ids = new Set<string>();
    for (const op of ["deploy", "undeploy", "deploy", "deploy", "undeploy"] as const) {
      const r =
        op === "deploy"
          ? await a.apis.deployApi({ api: restId, gateway: "edge" })
          : await a.apis.undeployApi({ api: restId, gateway: "edge" });
      const d = r.deployment!;
      const ms = Number(d.deployedAt!.seconds) * 1000 + d.deployedAt!.nanos / 1e6;
      expect(Number.isInteger(ms)).toBe(true);
      seen.push(ms);
      ids.add(d.deploymentId);
      expect(d.state).toBe(op === "deploy" ? "DEPLOYED" : "UNDEPLOYED");
    }
    for (let i = 1; i < seen.length; i++) expect(seen[i]).toBeGreaterThan(seen[i - 1]!);
    // Three deploys, three deployment ids; an undeploy keeps the id it undeploys.
    expect(ids.size).toBe(3);
    // Undeploying again is idempotent: no new timestamp, no event.
    const again = await a.apis.undeployApi({ api: restId, gateway: "edge" });
    expect(
      Number(again.deployment!.deployedAt!.seconds) * 1000 +
        again.deployment!.deployedAt!.nanos / 1e6,
    ).toBe(seen.at(-1));
    await a.apis.deployApi({ api: restId, gateway: gatewayId });
    await expectError(a.apis.deleteApi({ api: restId }), "resource.in_use", "api");
    await expectError(a.apis.deleteApi({ api: providerId }), "resource.in_use", "api");
    await a.apis.undeployApi({ api: restId, gateway: gatewayId });
  });

  it("the database refuses deployedAt below millisecond precision and an unknown state", async () => {
    await expect(
      t.hub.db.query(
        "UPDATE api_deployments SET deployed_at = deployed_at + interval '1 microsecond' WHERE api_id = $1",
        [restId],
      ),
    ).rejects.toThrow();
    await expect(
      t.hub.db.query("UPDATE api_deployments SET state = 'deployed' WHERE api_id = $1", [restId]),
    ).rejects.toThrow();
  });

  it("the event stream refuses a bad token with a plain 401 before the upgrade: a refused gateway never sees an open stream", async () => {
    const wsUrl = `${t.hub.url.replace(/^http/, "ws")}${GATEWAY_SYNC.events}`;
    for (const token of ["fgw_wrong", ""]) {
      const socket = new WebSocket(wsUrl, { headers: { authorization: `Bearer ${token}` } });
      const outcome = await new Promise<string>((resolve) => {
        socket.on("open", () => resolve("open"));
        socket.on("unexpected-response", (_req, res) => {
          res.resume();
          resolve(`http ${res.statusCode}`);
          socket.terminate();
        });
        socket.on("error", (err) => resolve(`error ${err.message}`));
      });
      expect(outcome).toBe("http 401");
    }
    const good = new WebSocket(wsUrl, { headers: { authorization: `Bearer ${gatewayToken}` } });
    await new Promise((resolve, reject) => {
      good.once("open", resolve);
      good.once("error", reject);
    });
    good.close();
  });

  it("the sync endpoints refuse a bad token (401) and malformed bodies (400), changing nothing", async () => {
    const call = (path: string, token: string, body?: unknown, method = "POST") =>
      fetch(`${t.hub.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        ...(body === undefined
          ? {}
          : { body: typeof body === "string" ? body : JSON.stringify(body) }),
      });
    await unchanged(async () => {
      expect((await call(GATEWAY_SYNC.deployments, "fgw_wrong", undefined, "GET")).status).toBe(
        401,
      );
      expect((await call(GATEWAY_SYNC.deployments, "", undefined, "GET")).status).toBe(401);
      expect(
        (await call(`${GATEWAY_SYNC.deployments}?since=yesterday`, gatewayToken, undefined, "GET"))
          .status,
      ).toBe(400);
      expect((await call(GATEWAY_SYNC.content, gatewayToken, { deploymentIds: "x" })).status).toBe(
        400,
      );
      expect(
        (await call(GATEWAY_SYNC.content, gatewayToken, { deploymentIds: ["../etc"] })).status,
      ).toBe(400);
      expect(
        (
          await call(GATEWAY_SYNC.content, gatewayToken, {
            deploymentIds: Array(501).fill(UNKNOWN),
          })
        ).status,
      ).toBe(400);
      expect((await call(GATEWAY_SYNC.content, gatewayToken, "{broken")).status).toBe(400);
      expect((await call(GATEWAY_SYNC.exists, gatewayToken, {})).status).toBe(400);
      expect(
        (
          await call(GATEWAY_SYNC.status, gatewayToken, {
            reports: [{ apiId: restId, status: "great" }],
          })
        ).status,
      ).toBe(400);
      // Past what a Date holds: refused here, not failed in the database.
      expect(
        (
          await call(GATEWAY_SYNC.status, gatewayToken, {
            reports: [
              { apiId: restId, deploymentId: UNKNOWN, deployedAt: 9e15, status: "deployed" },
            ],
          })
        ).status,
      ).toBe(400);
      // Another gateway's (or nobody's) deployment ids: nothing exists, nothing is served.
      const exists = await call(GATEWAY_SYNC.exists, gatewayToken, { deploymentIds: [UNKNOWN] });
      expect(await exists.json()).toEqual({ existing: [] });
    });
  });

  it("a gateway's status report is observed state: an older report never overwrites a newer one", async () => {
    const d = (await a.apis.deployApi({ api: restId, gateway: gatewayId })).deployment!;
    const ms = Number(d.deployedAt!.seconds) * 1000 + d.deployedAt!.nanos / 1e6;
    const one = (deployedAt: number, status: string, reason?: string) => ({
      apiId: restId,
      deploymentId: d.deploymentId,
      deployedAt,
      status,
      ...(reason ? { reason } : {}),
    });
    const report = (...reports: ReturnType<typeof one>[]) =>
      fetch(`${t.hub.url}${GATEWAY_SYNC.status}`, {
        method: "POST",
        headers: { authorization: `Bearer ${gatewayToken}`, "content-type": "application/json" },
        body: JSON.stringify({ reports }),
      });
    expect((await report(one(ms, "deployed"))).status).toBe(200);
    await report(one(ms - 5000, "failed", "late news about an old deployment"));
    const listed = await a.apis.listApiDeployments({ api: restId });
    expect(listed.deployments[0]).toMatchObject({ observedStatus: "deployed", observedReason: "" });
    // One batch naming the API three times ends as applying them in order would: the last of
    // those with the latest deployedAt (a reason's NUL bytes dropped: PostgreSQL text has none).
    const batch = await report(
      one(ms, "failed", "first"),
      one(ms - 5000, "undeployed"),
      one(ms, "failed", "sec\u0000ond"),
    );
    expect(batch.status).toBe(200);
    const again = await a.apis.listApiDeployments({ api: restId });
    expect(again.deployments[0]).toMatchObject({
      observedStatus: "failed",
      observedReason: "second",
    });
    await a.apis.undeployApi({ api: restId, gateway: gatewayId });
  });

  it("a gateway that hangs up while its token is checked leaves no connection behind", async () => {
    const url = `${t.hub.url.replace(/^http/, "ws")}${GATEWAY_SYNC.events}`;
    // The embedded store runs one statement at a time: holding a transaction open keeps the hub
    // checking the tokens while ten gateways open the event stream and drop it.
    let release: () => void = () => {};
    const held = t.hub.db.tx(() => new Promise<void>((r) => (release = r)));
    await Promise.all(
      Array.from(
        { length: 10 },
        () =>
          new Promise<void>((resolve) => {
            const ws = new WebSocket(url, { headers: { authorization: `Bearer ${gatewayToken}` } });
            // The token is checked before the upgrade: they hang up while it is held.
            setTimeout(() => ws.terminate(), 200);
            ws.on("error", () => resolve());
            ws.on("close", () => resolve());
          }),
      ),
    );
    release();
    await held;
    // One that stays is registered, so the count below is not empty for want of trying.
    const stays = new WebSocket(url, { headers: { authorization: `Bearer ${gatewayToken}` } });
    await new Promise((resolve) => stays.once("message", resolve));
    for (let i = 0; i < 50 && t.hub.gatewaySync.connected().length !== 1; i++)
      await new Promise((r) => setTimeout(r, 20));
    expect(t.hub.gatewaySync.connected()).toEqual([gatewayId]);
    stays.close();
  });
});
