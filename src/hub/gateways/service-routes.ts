// Public service routes: a controller keeps one route per (PUBLIC service, gateway of its
// server's data plane) at <service>-<env>-<project>.<base domain>, pointing at the endpoint the
// agent reports; the database refuses a DEPLOYED route for a service that is not PUBLIC.
import { createHash, randomUUID } from "node:crypto";
import type { DeploymentContent, ExpectedRow, Logger } from "../../shared/index.js";
import { type Db, LOCK_KEYS, type Queryable } from "../../store/index.js";
import { appendEvent } from "../outbox/index.js";
import { customHostnames } from "./domains.js";

export interface RouteFacts {
  id: string;
  organizationId: string;
  slug: string;
  environmentSlug: string;
  projectSlug: string;
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

/** A DNS label is at most 63 characters. */
const LABEL_MAX = 63;
/** 8 hex characters (32 bits) of the service id tell apart labels that were cut or collided. */
const LABEL_HASH_CHARS = 8;

/** The plain derived label: unique in an organization as a triple (a slug may hold '-', so the join is not). */
export function routeLabel(service: string, environment: string, project: string): string {
  return `${service}-${environment}-${project}`;
}

/**
 * The derived hostname: the plain label when it fits 63 characters and `hashed` is false, else
 * the label cut to 54 characters plus '-' and 8 hex of SHA-256(service id), which is unique
 * installation-wide (service ids are).
 */
export function routeHostname(
  label: string,
  serviceId: string,
  baseDomain: string,
  hashed = false,
): string {
  if (!hashed && label.length <= LABEL_MAX) return `${label}.${baseDomain}`;
  const hash = createHash("sha256").update(serviceId).digest("hex").slice(0, LABEL_HASH_CHARS);
  const cut = label.slice(0, LABEL_MAX - LABEL_HASH_CHARS - 1).replace(/-+$/, "");
  return `${cut}-${hash}.${baseDomain}`;
}

/**
 * An endpoint only the host it runs on can reach (127.0.0.0/8, ::1, localhost, the unspecified
 * addresses): a gateway on another host would proxy to its own loopback instead.
 */
export function isLoopbackEndpoint(endpoint: string): boolean {
  let host: string;
  try {
    host = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(endpoint) ? endpoint : `http://${endpoint}`)
      .hostname;
  } catch {
    return false;
  }
  host = host.replace(/^\[|\]$/g, "").toLowerCase();
  return (
    /^127\./.test(host) ||
    host === "localhost" ||
    host.endsWith(".localhost") ||
    host === "::1" ||
    host === "0.0.0.0" ||
    host === "::"
  );
}

export interface ServiceRoutesOptions {
  /**
   * The name of the gateway that runs on the hub's own host (`flotilla up` registers `local`
   * and runs it in the hub's process, beside the embedded agent). Only it may be handed a
   * loopback endpoint; unset (a separately run hub), no gateway is.
   */
  sameHostGateway?: string;
  logger?: Logger;
}

export interface ReconcileOptions {
  /**
   * When the reconcile answers a service event: an already-UNDEPLOYED route whose deployed_at is
   * at or after this instant was undeployed by the database in that event's transaction (the
   * service turned PRIVATE), so the gateway is woken once for it. A sweep passes nothing.
   */
  changedSince?: Date;
}

export class ServiceRoutes {
  constructor(
    private readonly db: Db,
    private readonly ports: ServiceRoutesPorts,
    private readonly baseDomain: string,
    private readonly options: ServiceRoutesOptions = {},
  ) {}

  /**
   * Converges one service's routes: DEPLOYED on each gateway of its data plane while it is PUBLIC,
   * placed and reports an endpoint; UNDEPLOYED otherwise. Every change gets a new route id, a
   * later deployed_at and an outbox event for the gateway.
   */
  async reconcileService(
    organizationId: string,
    serviceId: string,
    options: ReconcileOptions = {},
  ): Promise<number> {
    return this.db.tx(async (tx) => {
      const f = await this.ports.facts(tx, organizationId, serviceId);
      const desired = new Map<string, { hostnames: string[]; endpoint: string }>();
      let current: RouteRow[] | undefined;
      if (f && f.visibility === "PUBLIC" && f.serverId && f.endpoint) {
        const plane = await this.ports.dataPlane(tx, organizationId, f.serverId);
        if (plane) {
          const { rows } = await tx.query<{ id: string; name: string }>(
            "SELECT id, name FROM gateways WHERE organization_id = $1 AND data_plane_id = $2",
            [organizationId, plane],
          );
          const label = routeLabel(f.slug, f.environmentSlug, f.projectSlug);
          // One derived label at a time, taken before this service's route rows (always in that
          // order), so two services deriving the same label cannot both find it free.
          await tx.query("SELECT pg_advisory_xact_lock($1, hashtext($2))", [
            LOCK_KEYS.routeHostnames,
            label,
          ]);
          current = await this.lockRoutes(tx, serviceId);
          const derived = await this.derivedHostname(tx, serviceId, label, current);
          const hostnames = [derived, ...(await customHostnames(tx, serviceId))];
          const loopback = isLoopbackEndpoint(f.endpoint);
          for (const g of rows) {
            if (loopback && g.name !== this.options.sameHostGateway) {
              // Another host's gateway would proxy to its own loopback (a 502, or whatever of its
              // own listens there): the route is withheld until the agent advertises a routable
              // address (flotilla agent --advertise-host). Logged on every pass (each 60 s sweep):
              // routes have no observed-status record to keep the reason in.
              this.options.logger?.warn(
                { serviceId, gatewayId: g.id, endpoint: f.endpoint },
                "public route withheld: the service's endpoint is loopback and the gateway is not on the agent's host",
              );
              continue;
            }
            desired.set(g.id, { hostnames, endpoint: f.endpoint });
          }
        }
      }
      current ??= await this.lockRoutes(tx, serviceId);
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
        } else if (options.changedSince && new Date(have.deployed_at) >= options.changedSince) {
          // Undeployed by the database in the very transaction of the service event (it turned
          // PRIVATE), which wrote no route event: wake the gateway once. A row that was already
          // UNDEPLOYED before gets nothing (a signal per sweep would grow the outbox forever).
          await this.signal(tx, have);
        }
      }
      return changed;
    });
  }

  private async lockRoutes(tx: Queryable, serviceId: string): Promise<RouteRow[]> {
    const { rows } = await tx.query<RouteRow>(
      "SELECT * FROM service_routes WHERE service_id = $1 FOR UPDATE",
      [serviceId],
    );
    return rows;
  }

  /**
   * The plain hostname unless another service's active route holds it (or this service already
   * moved to the hashed one: a hostname does not flip back and forth), else the hashed one.
   * The caller holds the label's lock.
   */
  private async derivedHostname(
    tx: Queryable,
    serviceId: string,
    label: string,
    current: RouteRow[],
  ): Promise<string> {
    const plain = routeHostname(label, serviceId, this.baseDomain);
    const hashed = routeHostname(label, serviceId, this.baseDomain, true);
    if (plain === hashed) return hashed;
    if (current.some((r) => r.state === "DEPLOYED" && r.hostnames[0] === hashed)) return hashed;
    const { rows } = await tx.query(
      `SELECT 1 FROM service_routes
       WHERE state = 'DEPLOYED' AND service_id <> $1 AND hostnames @> jsonb_build_array($2::text) LIMIT 1`,
      [serviceId, plain],
    );
    return rows.length ? hashed : plain;
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

  /**
   * The periodic sweep: every replica ticks, one runs it (a session advisory lock), so N
   * replicas do not each reconcile every PUBLIC service every 60 s.
   */
  async sweepExclusive(): Promise<{ ran: boolean; changed: number }> {
    const { ran, value } = await this.db.tryExclusiveLock(LOCK_KEYS.routeSweep, () => this.sweep());
    return { ran, changed: value ?? 0 };
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
