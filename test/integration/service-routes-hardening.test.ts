// Public service routes under load and across tenants: derived hostnames never collide (project in
// the label, a hash when cut or taken, decided under a lock), route events are written only when a
// route changes and the sweep runs on one replica, custom domains stay within their limit under
// concurrent adds and do not reveal other tenants' domains, and a loopback endpoint is handed only
// to the gateway on the hub's own host.
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defaultAdvertiseHost } from "../../src/agent/agent.js";
import { GatewayService } from "../../src/gen/flotilla/v1/apis_pb.js";
import { ServerService } from "../../src/gen/flotilla/v1/servers_pb.js";
import { Visibility } from "../../src/gen/flotilla/v1/services_pb.js";
import { isLoopbackEndpoint, routeHostname } from "../../src/hub/gateways/service-routes.js";
import { LOCK_KEYS } from "../../src/store/index.js";
import {
  api,
  eventually,
  execSpec,
  organizationIdOf,
  secondTenant,
  suffix,
} from "../support/core.js";
import { bootstrapOwner, startTestHub, type TestHub } from "../support/hub.js";

const BASE = "apps.example.test";

interface Tenant {
  token: string;
  org: string;
  serverId: string;
  gateways: ReturnType<typeof createClient<typeof GatewayService>>;
  localGateway: string;
  edgeGateway: string;
}

describe("public service routes: uniqueness, quiet sweeps, domain limits, loopback", () => {
  let t: TestHub;
  let a: Tenant;
  let b: Tenant;

  const routes = async (serviceId: string) =>
    (
      await t.hub.db.query<{ gateway_id: string; state: string; hostnames: string[] }>(
        "SELECT gateway_id, state, hostnames FROM service_routes WHERE service_id = $1 ORDER BY gateway_id",
        [serviceId],
      )
    ).rows;
  const undeployEvents = async (serviceId: string) =>
    (
      await t.hub.db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM outbox_events
         WHERE type = 'service_route.undeployed' AND payload->>'service_id' = $1`,
        [serviceId],
      )
    ).rows[0]!.n;

  async function tenant(token: string): Promise<Tenant> {
    const transport = createConnectTransport({
      baseUrl: t.hub.url,
      httpVersion: "1.1",
      interceptors: [
        (next) => async (req) => {
          req.header.set("authorization", `Bearer ${token}`);
          return next(req);
        },
      ],
    });
    const gateways = createClient(GatewayService, transport);
    const servers = createClient(ServerService, transport);
    // `local` plays the gateway of `flotilla up` (the hub's host); `edge` runs elsewhere.
    const localGateway = (await gateways.createGateway({ name: "local" })).gateway!.id;
    const edgeGateway = (await gateways.createGateway({ name: "edge" })).gateway!.id;
    const join = await servers.createJoinToken({ name: `box-${suffix()}` });
    const joined = await fetch(`${t.hub.url}/agent/v1/join`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: join.token }),
    });
    const { server_id: serverId } = (await joined.json()) as { server_id: string };
    return {
      token,
      org: await organizationIdOf(t.hub, token),
      serverId,
      gateways,
      localGateway,
      edgeGateway,
    };
  }

  /** A PUBLIC service running at `endpoint`, with its routes written. */
  async function publicService(
    who: Tenant,
    o: { project: string; slug: string; endpoint: string },
  ): Promise<{ id: string; environmentId: string }> {
    const c = api(t.hub.url, who.token);
    const { production } = await c.projects.createProject({ name: o.project, slug: o.project });
    const created = await c.services.createService({
      environmentId: production!.id,
      name: o.slug,
      slug: o.slug,
      visibility: Visibility.PUBLIC,
      spec: execSpec(),
      serverId: who.serverId,
      deployNow: true,
    });
    const id = created.service!.id;
    await t.hub.services.recordObservation(who.org, {
      serviceId: id,
      deploymentId: created.service!.desiredDeploymentId,
      status: "running",
      endpoint: o.endpoint,
      serverId: who.serverId,
    });
    await t.hub.serviceRoutes.reconcileService(who.org, id);
    return { id, environmentId: production!.id };
  }

  beforeAll(async () => {
    t = await startTestHub("postgres", {
      gatewayBaseDomain: BASE,
      routeSweepIntervalMs: 3_600_000,
      sameHostGateway: "local",
    });
    const owner = (await bootstrapOwner(t.hub)).token;
    a = await tenant(owner);
    b = await tenant((await secondTenant(t.hub, owner)).token);
  }, 60_000);

  afterAll(async () => {
    await t?.stop();
  });

  it("the derived label carries the project: one service and environment slug in two projects get two hostnames", async () => {
    const p1 = `alpha-${suffix()}`;
    const p2 = `beta-${suffix()}`;
    const s1 = await publicService(a, { project: p1, slug: "web", endpoint: "10.0.0.5:4001" });
    const s2 = await publicService(a, { project: p2, slug: "web", endpoint: "10.0.0.5:4002" });
    expect((await routes(s1.id))[0]!.hostnames).toEqual([`web-production-${p1}.${BASE}`]);
    expect((await routes(s2.id))[0]!.hostnames).toEqual([`web-production-${p2}.${BASE}`]);
  });

  it("two organizations deriving the same label at the same moment get distinct hostnames (the later one hashed)", async () => {
    const project = `shop-${suffix()}`;
    const sa = await publicService(a, { project, slug: "api", endpoint: "10.0.0.5:4003" });
    const sb = await publicService(b, { project, slug: "api", endpoint: "10.0.0.6:4003" });
    // Start from nothing, then converge both at once: the label lock orders them.
    await t.hub.db.query("DELETE FROM service_routes WHERE service_id = ANY($1::uuid[])", [
      [sa.id, sb.id],
    ]);
    await Promise.all([
      t.hub.serviceRoutes.reconcileService(a.org, sa.id),
      t.hub.serviceRoutes.reconcileService(b.org, sb.id),
    ]);
    const ha = (await routes(sa.id)).map((r) => r.hostnames[0]!);
    const hb = (await routes(sb.id)).map((r) => r.hostnames[0]!);
    expect(ha).toHaveLength(2);
    expect(hb).toHaveLength(2);
    expect(new Set(ha).size).toBe(1);
    expect(new Set(hb).size).toBe(1);
    expect(ha[0]).not.toBe(hb[0]);
    const plain = `api-production-${project}.${BASE}`;
    expect([ha[0], hb[0]]).toContain(plain);
    expect([ha[0], hb[0]].find((h) => h !== plain)).toMatch(
      new RegExp(`^api-production-${project}-[0-9a-f]{8}\\.`),
    );
    // Converging again keeps each one where it is.
    expect(await t.hub.serviceRoutes.reconcileService(a.org, sa.id)).toBe(0);
    expect(await t.hub.serviceRoutes.reconcileService(b.org, sb.id)).toBe(0);
  });

  it("a label over 63 characters is cut and given 8 hex of the service id, so two cut labels differ", () => {
    const label = `${"s".repeat(40)}-production-${"p".repeat(40)}`;
    const one = routeHostname(label, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a51", BASE);
    const two = routeHostname(label, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a52", BASE);
    expect(one.split(".")[0]!.length).toBeLessThanOrEqual(63);
    expect(one).toMatch(/-[0-9a-f]{8}\.apps\.example\.test$/);
    expect(one).not.toBe(two);
  });

  it("an already-UNDEPLOYED route gets one event, not one more per reconcile or sweep", async () => {
    const s = await publicService(a, {
      project: `quiet-${suffix()}`,
      slug: "web",
      endpoint: "10.0.0.5:4004",
    });
    expect((await routes(s.id)).every((r) => r.state === "DEPLOYED")).toBe(true);
    // The service loses its placement: its routes are undeployed, once each.
    await t.hub.db.query("UPDATE services SET server_id = NULL WHERE id = $1", [s.id]);
    expect(await t.hub.serviceRoutes.reconcileService(a.org, s.id)).toBe(2);
    expect(await undeployEvents(s.id)).toBe(2);
    for (let i = 0; i < 3; i++) await t.hub.serviceRoutes.reconcileService(a.org, s.id);
    await t.hub.serviceRoutes.sweep();
    expect(await undeployEvents(s.id)).toBe(2);
  });

  it("a service turned PRIVATE wakes each gateway once (the database undeployed its routes), and never again", async () => {
    const c = api(t.hub.url, a.token);
    const s = await publicService(a, {
      project: `priv-${suffix()}`,
      slug: "web",
      endpoint: "10.0.0.5:4005",
    });
    const svc = (await c.services.getService({ serviceId: s.id })).service!;
    await c.services.updateService({
      serviceId: s.id,
      name: svc.name,
      visibility: Visibility.PRIVATE,
      spec: svc.spec!,
      serverId: svc.serverId,
    });
    await eventually(
      async () => (await undeployEvents(s.id)) === 2,
      10_000,
      "one undeploy event per gateway after the service event",
    );
    await t.hub.serviceRoutes.reconcileService(a.org, s.id);
    await t.hub.serviceRoutes.sweep();
    expect(await undeployEvents(s.id)).toBe(2);
  });

  it("the periodic sweep runs on one replica at a time", async () => {
    await t.hub.db.tryExclusiveLock(LOCK_KEYS.routeSweep, async () => {
      expect((await t.hub.serviceRoutes.sweepExclusive()).ran).toBe(false);
    });
    expect((await t.hub.serviceRoutes.sweepExclusive()).ran).toBe(true);
  });

  it("concurrent custom-domain adds stop at 19 per service; the route keeps converging", async () => {
    const s = await publicService(a, {
      project: `many-${suffix()}`,
      slug: "web",
      endpoint: "10.0.0.5:4006",
    });
    const tag = suffix();
    for (let i = 0; i < 15; i++)
      await a.gateways.addServiceDomain({ serviceId: s.id, hostname: `d${i}-${tag}.example.com` });
    const outcomes = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) =>
        a.gateways.addServiceDomain({ serviceId: s.id, hostname: `c${i}-${tag}.example.com` }),
      ),
    );
    expect(outcomes.filter((o) => o.status === "fulfilled")).toHaveLength(4);
    for (const o of outcomes)
      if (o.status === "rejected")
        expect(o.reason.metadata.get("flotilla-error-code")).toBe("resource.conflict");
    expect((await a.gateways.listServiceDomains({ serviceId: s.id })).domains).toHaveLength(19);
    await t.hub.serviceRoutes.reconcileService(a.org, s.id);
    for (const r of await routes(s.id)) expect(r.hostnames).toHaveLength(20);
  });

  it("a hostname held by another organization is refused exactly as one held in the caller's own", async () => {
    const mine = await publicService(a, {
      project: `dom-${suffix()}`,
      slug: "web",
      endpoint: "10.0.0.5:4007",
    });
    const theirs = await publicService(b, {
      project: `dom-${suffix()}`,
      slug: "web",
      endpoint: "10.0.0.6:4007",
    });
    const tag = suffix();
    await a.gateways.addServiceDomain({ serviceId: mine.id, hostname: `own-${tag}.example.com` });
    await b.gateways.addServiceDomain({
      serviceId: theirs.id,
      hostname: `foreign-${tag}.example.com`,
    });
    const own = await a.gateways
      .addServiceDomain({ serviceId: mine.id, hostname: `own-${tag}.example.com` })
      .catch((e) => e);
    const foreign = await a.gateways
      .addServiceDomain({ serviceId: mine.id, hostname: `foreign-${tag}.example.com` })
      .catch((e) => e);
    for (const err of [own, foreign]) {
      expect(err.metadata.get("flotilla-error-code")).toBe("resource.already_exists");
      expect(err.rawMessage).not.toMatch(/routed|organization|service/);
    }
    expect(own.rawMessage.replace(`own-${tag}`, "X")).toBe(
      foreign.rawMessage.replace(`foreign-${tag}`, "X"),
    );
  });

  it("a loopback endpoint is routed only to the gateway on the hub's host, and withheld (logged) from the others", async () => {
    const s = await publicService(a, {
      project: `loop-${suffix()}`,
      slug: "web",
      endpoint: "127.0.0.1:4008",
    });
    const rows = await routes(s.id);
    expect(rows.filter((r) => r.state === "DEPLOYED").map((r) => r.gateway_id)).toEqual([
      a.localGateway,
    ]);
    expect(rows.find((r) => r.gateway_id === a.edgeGateway)).toBeUndefined();
    expect(
      t.logs.some(
        (l) =>
          String(l.msg).startsWith("public route withheld") &&
          l.serviceId === s.id &&
          l.gatewayId === a.edgeGateway,
      ),
    ).toBe(true);
  });

  it("isLoopbackEndpoint knows loopback in every spelling an agent reports", () => {
    for (const e of [
      "127.0.0.1:80",
      "127.1.2.3:80",
      "localhost:80",
      "http://localhost:80",
      "[::1]:80",
      "0.0.0.0:80",
    ])
      expect(isLoopbackEndpoint(e), e).toBe(true);
    for (const e of ["10.0.0.5:80", "http://app.internal:8080", "[2001:db8::1]:80"])
      expect(isLoopbackEndpoint(e), e).toBe(false);
  });

  it("an agent advertises its first non-internal IPv4 address by default, else loopback", () => {
    const lo = { address: "127.0.0.1", family: "IPv4", internal: true } as const;
    const v6 = { address: "fe80::1", family: "IPv6", internal: false } as const;
    const eth = { address: "10.1.2.3", family: "IPv4", internal: false } as const;
    const nic = (x: object) => ({ netmask: "", mac: "", cidr: null, ...x }) as never;
    expect(defaultAdvertiseHost({ lo: [nic(lo)], eth0: [nic(v6), nic(eth)] })).toBe("10.1.2.3");
    expect(defaultAdvertiseHost({ lo: [nic(lo)] })).toBe("127.0.0.1");
  });
});
