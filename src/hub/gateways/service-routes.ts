// Public service routes: a controller keeps one route per (PUBLIC service, gateway of its
// server's data plane) at <service>-<env>.<base domain>, pointing at the endpoint the agent
// reports; the database refuses a DEPLOYED route for a service that is not PUBLIC.
import { randomUUID } from "node:crypto";
import type { DeploymentContent, ExpectedRow } from "../../shared/index.js";
import type { Db, Queryable } from "../../store/index.js";
import { appendEvent } from "../outbox/index.js";
import { customHostnames } from "./domains.js";

export interface RouteFacts {
  id: string;
  organizationId: string;
  slug: string;
  environmentSlug: string;
  visibility: "PUBLIC" | "PRIVATE";
  serverId: string | null;
  endpoint: string | null;
}

/** What the controller reads from other modules; the composition root wires it. */
export interface ServiceRoutesPorts {
  facts(q: Queryable, organizationId: string, serviceId: string): Promise<RouteFacts | null>;
  publicServices(
    q: Queryable,
    organizationId?: string,
  ): Promise<Array<{ organizationId: string; id: string }>>;
  /** The data plane of the server (its own, or the organization's default). */
  dataPlane(q: Queryable, organizationId: string, serverId: string): Promise<string | null>;
}

export const SERVICE_ROUTE_KIND = "ServiceRoute";

interface RouteRow {
  route_id: string;
  service_id: string;
  gateway_id: string;
  organization_id: string;
  hostnames: string[];
  endpoint: string;
  state: "DEPLOYED" | "UNDEPLOYED";
  deployed_at: Date;
}

/** DNS labels are at most 63 characters; slugs are at most 40 each, so the join may need a cut. */
export function routeHostname(service: string, environment: string, baseDomain: string): string {
  const label = `${service}-${environment}`.slice(0, 63).replace(/-+$/, "");
  return `${label}.${baseDomain}`;
}

export class ServiceRoutes {
  constructor(
    private readonly db: Db,
    private readonly ports: ServiceRoutesPorts,
    private readonly baseDomain: string,
  ) {}

  /**
   * Converges one service's routes: DEPLOYED on each gateway of its data plane while it is PUBLIC,
   * placed and reports an endpoint; UNDEPLOYED otherwise. Every change gets a new route id, a
   * later deployed_at and an outbox event for the gateway.
   */
  async reconcileService(organizationId: string, serviceId: string): Promise<number> {
    return this.db.tx(async (tx) => {
      const f = await this.ports.facts(tx, organizationId, serviceId);
      const desired = new Map<string, { hostnames: string[]; endpoint: string }>();
      if (f && f.visibility === "PUBLIC" && f.serverId && f.endpoint) {
        const plane = await this.ports.dataPlane(tx, organizationId, f.serverId);
        if (plane) {
          const { rows } = await tx.query<{ id: string }>(
            "SELECT id FROM gateways WHERE organization_id = $1 AND data_plane_id = $2",
            [organizationId, plane],
          );
          const hostnames = [
            routeHostname(f.slug, f.environmentSlug, this.baseDomain),
            ...(await customHostnames(tx, serviceId)),
          ];
          for (const g of rows) desired.set(g.id, { hostnames, endpoint: f.endpoint });
        }
      }
      const { rows: current } = await tx.query<RouteRow>(
        "SELECT * FROM service_routes WHERE service_id = $1 FOR UPDATE",
        [serviceId],
      );
      let changed = 0;
      for (const [gatewayId, want] of desired) {
        const have = current.find((r) => r.gateway_id === gatewayId);
        if (
          have?.state === "DEPLOYED" &&
          have.endpoint === want.endpoint &&
          JSON.stringify(have.hostnames) === JSON.stringify(want.hostnames)
        )
          continue;
        const { rows } = await tx.query<RouteRow>(
          `INSERT INTO service_routes (route_id, organization_id, service_id, gateway_id, hostnames, endpoint, state, deployed_at)
           VALUES ($1, $2, $3, $4, $5, $6, 'DEPLOYED', date_trunc('milliseconds', clock_timestamp()))
           ON CONFLICT (gateway_id, service_id) DO UPDATE SET route_id = excluded.route_id,
             hostnames = excluded.hostnames, endpoint = excluded.endpoint, state = 'DEPLOYED',
             deployed_at = greatest(excluded.deployed_at, service_routes.deployed_at + interval '1 millisecond')
           RETURNING *`,
          [
            randomUUID(),
            organizationId,
            serviceId,
            gatewayId,
            JSON.stringify(want.hostnames),
            want.endpoint,
          ],
        );
        await this.signal(tx, rows[0]!);
        changed++;
      }
      for (const have of current) {
        if (desired.has(have.gateway_id)) continue;
        if (have.state === "DEPLOYED") {
          const { rows } = await tx.query<RouteRow>(
            `UPDATE service_routes SET state = 'UNDEPLOYED',
               deployed_at = greatest(date_trunc('milliseconds', clock_timestamp()), deployed_at + interval '1 millisecond')
             WHERE gateway_id = $1 AND service_id = $2 RETURNING *`,
            [have.gateway_id, serviceId],
          );
          await this.signal(tx, rows[0]!);
          changed++;
        } else {
          // Undeployed already (possibly by the database when the service turned PRIVATE): wake
          // the gateway anyway; its guard ignores what it already has.
          await this.signal(tx, have);
        }
      }
      return changed;
    });
  }

  private async signal(tx: Queryable, r: RouteRow): Promise<void> {
    await appendEvent(tx, {
      organizationId: r.organization_id,
      type: r.state === "DEPLOYED" ? "service_route.deployed" : "service_route.undeployed",
      subjectId: r.route_id,
      payload: toPayload(r),
    });
  }

  /** Every PUBLIC service of the organization (or all), plus every service holding a route. */
  async sweep(organizationId?: string): Promise<number> {
    const ids = new Map<string, { organizationId: string; id: string }>();
    for (const s of await this.ports.publicServices(this.db, organizationId)) ids.set(s.id, s);
    const { rows } = await this.db.query<{ organization_id: string; service_id: string }>(
      `SELECT DISTINCT organization_id, service_id FROM service_routes
       WHERE state = 'DEPLOYED' AND ($1::uuid IS NULL OR organization_id = $1)`,
      [organizationId ?? null],
    );
    for (const r of rows)
      ids.set(r.service_id, { organizationId: r.organization_id, id: r.service_id });
    let changed = 0;
    for (const s of ids.values()) changed += await this.reconcileService(s.organizationId, s.id);
    return changed;
  }

  async expectedFor(gatewayId: string): Promise<ExpectedRow[]> {
    const { rows } = await this.db.query<{
      service_id: string;
      route_id: string;
      state: "DEPLOYED" | "UNDEPLOYED";
      ms: string;
    }>(
      `SELECT service_id, route_id, state, (extract(epoch FROM deployed_at) * 1000)::bigint::text AS ms
       FROM service_routes WHERE gateway_id = $1 ORDER BY deployed_at, route_id`,
      [gatewayId],
    );
    return rows.map((r) => ({
      apiId: r.service_id,
      deploymentId: r.route_id,
      kind: SERVICE_ROUTE_KIND,
      state: r.state,
      deployedAt: Number(r.ms),
    }));
  }

  async existing(gatewayId: string, ids: string[]): Promise<string[]> {
    const { rows } = await this.db.query<{ route_id: string }>(
      "SELECT route_id FROM service_routes WHERE gateway_id = $1 AND route_id = ANY($2::uuid[])",
      [gatewayId, ids],
    );
    return rows.map((r) => r.route_id);
  }

  async contentFor(gatewayId: string, ids: string[]): Promise<DeploymentContent[]> {
    const { rows } = await this.db.query<RouteRow & { slug: string }>(
      `SELECT r.* FROM service_routes r
       WHERE r.gateway_id = $1 AND r.route_id = ANY($2::uuid[]) AND r.state = 'DEPLOYED'`,
      [gatewayId, ids],
    );
    return rows.map((r) => ({
      apiId: r.service_id,
      deploymentId: r.route_id,
      name: r.hostnames[0]!,
      kind: SERVICE_ROUTE_KIND,
      definition: {
        hosts: r.hostnames,
        upstreamUrl: /^https?:\/\//.test(r.endpoint) ? r.endpoint : `http://${r.endpoint}`,
      },
    }));
  }
}

function toPayload(r: RouteRow): Record<string, unknown> {
  return {
    gateway_id: r.gateway_id,
    api_id: r.service_id,
    service_id: r.service_id,
    deployment_id: r.route_id,
    kind: SERVICE_ROUTE_KIND,
    state: r.state,
    deployed_at: new Date(r.deployed_at).getTime(),
  };
}
