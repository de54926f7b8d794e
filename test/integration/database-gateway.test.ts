// A managed database never reaches a gateway: every RPC that could expose or route a service
// (visibility PUBLIC, a custom domain, an API whose upstream is the service) refuses a database
// with a typed error and writes nothing, and the database itself refuses a DEPLOYED route row
// for it however the row is written.
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ApiKind, ApiService, GatewayService } from "../../src/gen/flotilla/v1/apis_pb.js";
import { DatabasesService } from "../../src/gen/flotilla/v1/databases_pb.js";
import { ServerService } from "../../src/gen/flotilla/v1/servers_pb.js";
import { Visibility } from "../../src/gen/flotilla/v1/services_pb.js";
import { api, expectError, organizationIdOf, suffix, tableState } from "../support/core.js";
import { ENGINES } from "../support/engines.js";
import { bootstrapOwner, startTestHub, type TestHub } from "../support/hub.js";

const GATEWAY_TABLES = ["service_routes", "service_domains", "apis", "api_deployments"];

for (const engine of ENGINES) {
  describe(`a managed database is never routed through a gateway [${engine}]`, () => {
    let t: TestHub;
    let token: string;
    let org: string;
    let gatewayId: string;
    let dbId: string;
    let clients: ReturnType<typeof connect>;

    function connect(baseUrl: string, bearer: string) {
      const transport = createConnectTransport({
        baseUrl,
        httpVersion: "1.1",
        interceptors: [
          (next) => async (req) => {
            req.header.set("authorization", `Bearer ${bearer}`);
            return next(req);
          },
        ],
      });
      return {
        databases: createClient(DatabasesService, transport),
        servers: createClient(ServerService, transport),
        gateways: createClient(GatewayService, transport),
        apis: createClient(ApiService, transport),
      };
    }

    /** Core tables plus the gateway module's: a refusal changes none of them. */
    const state = async () => {
      const extra: Record<string, string> = {};
      for (const table of GATEWAY_TABLES) {
        const { rows } = await t.hub.db.query<{ d: string }>(
          `SELECT count(*)::text || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') AS d FROM ${table} x`,
        );
        extra[table] = rows[0]!.d;
      }
      return { ...(await tableState(t.hub.db)), ...extra };
    };
    const routesOf = async (serviceId: string) =>
      (
        await t.hub.db.query<{ state: string }>(
          "SELECT state FROM service_routes WHERE service_id = $1",
          [serviceId],
        )
      ).rows;
    /** The statement is refused by a CHECK or a trigger (SQLSTATE 23514), on either engine. */
    const refusedByDatabase = async (sql: string, params: unknown[]) => {
      const err = await t.hub.db.query(sql, params).then(
        () => null,
        (e: { code?: string }) => e,
      );
      expect(err?.code, sql).toBe("23514");
    };

    beforeAll(async () => {
      t = await startTestHub(engine, {
        gatewayBaseDomain: "apps.example.test",
        routeSweepIntervalMs: 3_600_000,
        databaseSweepIntervalMs: 3_600_000,
      });
      token = (await bootstrapOwner(t.hub)).token;
      org = await organizationIdOf(t.hub, token);
      clients = connect(t.hub.url, token);
      gatewayId = (await clients.gateways.createGateway({ name: "edge" })).gateway!.id;
      const join = await clients.servers.createJoinToken({ name: `db-${suffix()}` });
      const joined = await fetch(`${t.hub.url}/agent/v1/join`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ token: join.token }),
      });
      const { server_id: serverId } = (await joined.json()) as { server_id: string };
      const { production } = await api(t.hub.url, token).projects.createProject({
        name: `Gw ${suffix()}`,
      });
      dbId = (
        await clients.databases.createDatabaseService({
          environmentId: production!.id,
          name: "Ledger",
          templateId: "postgres16",
          serverId,
          deployNow: true,
        })
      ).service!.id;
      // As if its agent reported the database running: a route would now have an endpoint.
      await t.hub.db.query("UPDATE services SET observed_endpoint = $2 WHERE id = $1", [
        dbId,
        "127.0.0.1:45432",
      ]);
    }, 60_000);

    afterAll(async () => {
      await t?.stop();
    });

    it("UpdateService to PUBLIC is refused (visibility), and the route controller writes no route", async () => {
      const s = (await api(t.hub.url, token).services.getService({ serviceId: dbId })).service!;
      const before = await state();
      await expectError(
        api(t.hub.url, token).services.updateService({
          serviceId: dbId,
          name: s.name,
          visibility: Visibility.PUBLIC,
          spec: s.spec,
        }),
        "validation.failed",
        "visibility",
      );
      expect(await state()).toEqual(before);
      await t.hub.serviceRoutes.reconcileService(org, dbId);
      await t.hub.serviceRoutes.sweep(org);
      expect(await routesOf(dbId)).toEqual([]);
    });

    it("AddServiceDomain on a database is refused (service_id) and writes nothing", async () => {
      const before = await state();
      const err = await expectError(
        clients.gateways.addServiceDomain({ serviceId: dbId, hostname: "ledger.example.com" }),
        "validation.failed",
        "service_id",
      );
      expect(err.message).toMatch(/managed database/);
      expect(await state()).toEqual(before);
      expect((await clients.gateways.listServiceDomains({ serviceId: dbId })).domains).toEqual([]);
    });

    it("CreateApi with the database as a RestApi upstream is refused (definition_json.upstream.service) and writes nothing", async () => {
      const before = await state();
      const err = await expectError(
        clients.apis.createApi({
          name: "ledger",
          kind: ApiKind.REST_API,
          definitionJson: JSON.stringify({ contextPath: "/ledger", upstream: { service: dbId } }),
        }),
        "validation.failed",
        "definition_json.upstream.service",
      );
      expect(err.message).toMatch(/managed database/);
      expect(await state()).toEqual(before);
    });

    it("an API row naming the database, written past the API, never hands its endpoint to a gateway", async () => {
      const apiId = "0190a000-0000-7000-8000-00000000a9db";
      await t.hub.db.query(
        `INSERT INTO apis (id, organization_id, name, kind, definition) VALUES ($1, $2, 'smuggled', 'RestApi', $3)`,
        [apiId, org, JSON.stringify({ contextPath: "/smuggled", upstream: { service: dbId } })],
      );
      const d = await clients.apis.deployApi({ api: apiId, gateway: gatewayId });
      const content = await t.hub.apis.contentFor(gatewayId, [d.deployment!.deploymentId]);
      expect(content).toHaveLength(1);
      expect(content[0]!.resolvedUpstreamUrl).toBeUndefined();
      expect(JSON.stringify(content)).not.toContain("45432");
    });

    it("the database refuses a DEPLOYED route row for a database service: INSERT, UPDATE and upsert", async () => {
      const insert = `INSERT INTO service_routes (route_id, organization_id, service_id, gateway_id, hostnames, endpoint, state, deployed_at)
         VALUES (gen_random_uuid(), $1, $2, $3, '["ledger.example.test"]', '127.0.0.1:45432', $4, date_trunc('milliseconds', now()))`;
      await refusedByDatabase(insert, [org, dbId, gatewayId, "DEPLOYED"]);
      await refusedByDatabase(
        `${insert} ON CONFLICT (gateway_id, service_id) DO UPDATE SET state = 'DEPLOYED'`,
        [org, dbId, gatewayId, "DEPLOYED"],
      );
      // An UNDEPLOYED row routes nothing, so it may exist; turning it DEPLOYED is refused.
      await t.hub.db.query(insert, [org, dbId, gatewayId, "UNDEPLOYED"]);
      await refusedByDatabase(
        "UPDATE service_routes SET state = 'DEPLOYED' WHERE service_id = $1",
        [dbId],
      );
      await refusedByDatabase(
        `${insert} ON CONFLICT (gateway_id, service_id) DO UPDATE SET state = 'DEPLOYED'`,
        [org, dbId, gatewayId, "UNDEPLOYED"],
      );
      expect(await routesOf(dbId)).toEqual([{ state: "UNDEPLOYED" }]);
      // Nor can the service be made PUBLIC first, to let the route through afterwards.
      await refusedByDatabase("UPDATE services SET visibility = 'PUBLIC' WHERE id = $1", [dbId]);
      await t.hub.db.query("DELETE FROM service_routes WHERE service_id = $1", [dbId]);
    });
  });
}
