// Public service routes: a PUBLIC service placed on a server that reports an endpoint gets a route
// at <service>-<env>-<project>.<base domain> on the gateways of its server's data plane (and no other); a
// PRIVATE service never holds a DEPLOYED route, and the database itself refuses one (also for a
// managed database service, which is always PRIVATE).
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GatewayService } from "../../src/gen/flotilla/v1/apis_pb.js";
import { ServerService } from "../../src/gen/flotilla/v1/servers_pb.js";
import { Visibility } from "../../src/gen/flotilla/v1/services_pb.js";
import { api, eventually, execSpec, organizationIdOf, suffix } from "../support/core.js";
import { bootstrapOwner, startTestHub, type TestHub } from "../support/hub.js";

describe("public service routes", () => {
  let t: TestHub;
  let token: string;
  let org: string;
  let serviceId: string;
  let defaultGateway: string;
  let euGateway: string;
  let derived: string;

  const routes = async (id: string) =>
    (
      await t.hub.db.query<{
        gateway_id: string;
        state: string;
        hostnames: string[];
        endpoint: string;
      }>(
        "SELECT gateway_id, state, hostnames, endpoint FROM service_routes WHERE service_id = $1 ORDER BY gateway_id",
        [id],
      )
    ).rows;

  beforeAll(async () => {
    t = await startTestHub("pglite", {
      gatewayBaseDomain: "apps.example.test",
      routeSweepIntervalMs: 3_600_000,
    });
    token = (await bootstrapOwner(t.hub)).token;
    org = await organizationIdOf(t.hub, token);
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
    await t.hub.dataPlanes.create(
      { organizationId: org, actor: { type: "user", id: "t" } },
      { name: "eu" },
    );
    defaultGateway = (await gateways.createGateway({ name: "edge-default" })).gateway!.id;
    euGateway = (await gateways.createGateway({ name: "edge-eu", dataPlane: "eu" })).gateway!.id;
    const join = await servers.createJoinToken({ name: `box-${suffix()}` });
    const joined = await fetch(`${t.hub.url}/agent/v1/join`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: join.token }),
    });
    const { server_id: serverId } = (await joined.json()) as { server_id: string };
    const a = api(t.hub.url, token);
    const { project, production } = await a.projects.createProject({
      name: "Shop",
      slug: `shop-${suffix()}`,
    });
    expect(project).toBeTruthy();
    derived = `web-production-${project!.slug}.apps.example.test`;
    const created = await a.services.createService({
      environmentId: production!.id,
      name: "Web",
      slug: "web",
      visibility: Visibility.PUBLIC,
      spec: execSpec(),
      serverId,
      deployNow: true,
    });
    serviceId = created.service!.id;
    // The agent-report path: the deployment runs at an endpoint.
    await t.hub.services.recordObservation(org, {
      serviceId,
      deploymentId: created.service!.desiredDeploymentId,
      status: "running",
      // Routable: a loopback endpoint goes to no gateway of a hub not run by `flotilla up`.
      endpoint: "10.0.0.5:41234",
      serverId,
    });
  }, 60_000);

  afterAll(async () => {
    await t?.stop();
  });

  it("a running PUBLIC service gets a route on its data plane's gateways only, at <service>-<env>-<project>.<base>", async () => {
    const rows = (await eventually(
      async () => {
        const r = await routes(serviceId);
        return r.some((x) => x.state === "DEPLOYED") ? r : null;
      },
      10_000,
      "route written after the status event",
    ))!;
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({
      gateway_id: defaultGateway,
      state: "DEPLOYED",
      hostnames: [derived],
      endpoint: "10.0.0.5:41234",
    });
    expect(rows.find((r) => r.gateway_id === euGateway)).toBeUndefined();
    // Converging again changes nothing.
    expect(await t.hub.serviceRoutes.reconcileService(org, serviceId)).toBe(0);
  });

  it("custom domains join the route's hostnames; bad, reserved, duplicate and foreign ones are refused", async () => {
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
    const added = await gateways.addServiceDomain({ serviceId, hostname: "Shop.Example.COM." });
    expect(added.domain!.hostname).toBe("shop.example.com");
    expect((await routes(serviceId))[0]!.hostnames).toEqual([derived, "shop.example.com"]);
    const before = await routes(serviceId);
    for (const [hostname, code] of [
      ["not a host", "validation.failed"],
      ["x".repeat(300), "validation.failed"],
      ["evil.apps.example.test", "validation.failed"],
      ["shop.example.com", "resource.already_exists"],
      ["", "validation.failed"],
    ] as const) {
      const err = await gateways.addServiceDomain({ serviceId, hostname }).catch((e) => e);
      expect(err.metadata?.get("flotilla-error-code"), String(err)).toBe(code);
    }
    const foreign = await gateways
      .addServiceDomain({
        serviceId: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        hostname: "other.example.com",
      })
      .catch((e) => e);
    expect(foreign.metadata.get("flotilla-error-code")).toBe("resource.not_found");
    expect(await routes(serviceId)).toEqual(before);
    await gateways.removeServiceDomain({ serviceId, hostname: "shop.example.com" });
    expect((await routes(serviceId))[0]!.hostnames).toEqual([derived]);
    expect((await gateways.listServiceDomains({ serviceId })).domains).toEqual([]);
  });

  it("the database refuses a DEPLOYED route for a PRIVATE service", async () => {
    const a = api(t.hub.url, token);
    const svc = (await a.services.getService({ serviceId })).service!;
    const priv = await a.services.createService({
      environmentId: svc.environmentId,
      name: "Internal",
      slug: "internal",
      visibility: Visibility.PRIVATE,
      spec: execSpec(),
    });
    await expect(
      t.hub.db.query(
        `INSERT INTO service_routes (route_id, organization_id, service_id, gateway_id, hostnames, endpoint, state, deployed_at)
         VALUES (gen_random_uuid(), $1, $2, $3, '["x.example.test"]', '127.0.0.1:1', 'DEPLOYED', date_trunc('milliseconds', now()))`,
        [org, priv.service!.id, defaultGateway],
      ),
    ).rejects.toThrow(/not PUBLIC/);
    // The controller writes none for it either.
    await t.hub.serviceRoutes.reconcileService(org, priv.service!.id);
    expect(await routes(priv.service!.id)).toEqual([]);
  });

  it("a managed database service (always PRIVATE) can never be routed", async () => {
    const svc = (await api(t.hub.url, token).services.getService({ serviceId })).service!;
    const dbId = "0190a000-0000-7000-8000-0000000000db";
    await t.hub.db.query(
      `INSERT INTO services (id, organization_id, project_id, environment_id, slug, name, kind, template_id, visibility, spec)
       VALUES ($1, $2, $3, $4, 'pg', 'PG', 'database', 'postgres16', 'PRIVATE', '{}')`,
      [dbId, org, svc.projectId, svc.environmentId],
    );
    await expect(
      t.hub.db.query("UPDATE services SET visibility = 'PUBLIC' WHERE id = $1", [dbId]),
    ).rejects.toThrow();
    await expect(
      t.hub.db.query(
        `INSERT INTO service_routes (route_id, organization_id, service_id, gateway_id, hostnames, endpoint, state, deployed_at)
         VALUES (gen_random_uuid(), $1, $2, $3, '["pg.example.test"]', '127.0.0.1:5432', 'DEPLOYED', date_trunc('milliseconds', now()))`,
        [org, dbId, defaultGateway],
      ),
    ).rejects.toThrow(/not PUBLIC/);
  });

  it("turning a service PRIVATE undeploys its routes in the same statement", async () => {
    const a = api(t.hub.url, token);
    const svc = (await a.services.getService({ serviceId })).service!;
    const before = (await routes(serviceId))[0]!;
    expect(before.state).toBe("DEPLOYED");
    await a.services.updateService({
      serviceId,
      name: svc.name,
      visibility: Visibility.PRIVATE,
      spec: svc.spec!,
      serverId: svc.serverId,
    });
    expect((await routes(serviceId))[0]).toMatchObject({ state: "UNDEPLOYED" });
    await expect(
      t.hub.db.query("UPDATE service_routes SET state = 'DEPLOYED' WHERE service_id = $1", [
        serviceId,
      ]),
    ).rejects.toThrow(/not PUBLIC/);
  });
});
