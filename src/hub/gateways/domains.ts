// Custom domains of PUBLIC services: extra hostnames their public routes answer on.
import {
  actorLabel,
  type Caller,
  FlotillaError,
  invalid,
  isUniqueViolation,
  notFound,
  uuidv7,
} from "../../shared/index.js";
import type { Db, Queryable } from "../../store/index.js";
import { recordAudit } from "../audit/index.js";

export interface ServiceDomain {
  id: string;
  serviceId: string;
  hostname: string;
  createdAt: Date;
}

const HOSTNAME = /^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** A route carries at most 20 hostnames (a CHECK): the derived one and 19 custom ones. */
export const MAX_CUSTOM_DOMAINS = 19;

export interface ServiceCheckPort {
  /** Throws not-found unless the service belongs to the caller's organization; kind "database" is a managed database. */
  check(c: Caller, id: string, q: Queryable, field: string): Promise<{ id: string; kind: string }>;
  /**
   * The same check, then the service's row locked (FOR UPDATE) until the transaction ends: two
   * concurrent adds to one service count its domains one after the other.
   */
  lock(c: Caller, id: string, q: Queryable, field: string): Promise<{ id: string; kind: string }>;
}

export class ServiceDomains {
  constructor(
    private readonly db: Db,
    private readonly services: ServiceCheckPort,
    private readonly baseDomain: string,
    /** Called after a commit that changed a service's domains (its routes re-converge). */
    private readonly changed: (organizationId: string, serviceId: string) => Promise<unknown>,
  ) {}

  private checkHostname(raw: string): string {
    const hostname = raw.trim().toLowerCase().replace(/\.$/, "");
    if (!hostname) throw invalid("hostname", "is required");
    if (hostname.length > 253 || !HOSTNAME.test(hostname))
      throw invalid(
        "hostname",
        `"${hostname.slice(0, 60)}" is not a DNS name like shop.example.com`,
      );
    if (hostname === this.baseDomain || hostname.endsWith(`.${this.baseDomain}`))
      throw invalid(
        "hostname",
        `names under ${this.baseDomain} are the derived <service>-<env>-<project> names; choose a domain of your own`,
      );
    return hostname;
  }

  async add(c: Caller, serviceId: string, rawHostname: string): Promise<ServiceDomain> {
    const hostname = this.checkHostname(rawHostname);
    const domain = await this.db.tx(async (tx) => {
      // Locked before counting: two concurrent adds would otherwise both see 18 and reach 21
      // hostnames, over the route's CHECK of 20, and every later reconcile of the service fails.
      const s = await this.services.lock(c, serviceId, tx, "service_id");
      // A managed database is PRIVATE for life (a CHECK in 0004), so a domain could never route to it.
      if (s.kind === "database")
        throw invalid(
          "service_id",
          "is a managed database: it is never PUBLIC and cannot have a domain; siblings reach it privately (flotilla db connect-info)",
        );
      const { rows: count } = await tx.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM service_domains WHERE service_id = $1",
        [s.id],
      );
      if (count[0]!.n >= MAX_CUSTOM_DOMAINS)
        throw new FlotillaError(
          "resource.conflict",
          `a service has at most ${MAX_CUSTOM_DOMAINS} custom domains; remove one first`,
          { field: "hostname" },
        );
      try {
        const { rows } = await tx.query<{ id: string; created_at: Date }>(
          `INSERT INTO service_domains (id, organization_id, service_id, hostname, created_by)
           VALUES ($1, $2, $3, $4, $5) RETURNING id, created_at`,
          [uuidv7(), c.organizationId, s.id, hostname, actorLabel(c)],
        );
        await recordAudit(tx, {
          organizationId: c.organizationId,
          actor: c.actor,
          action: "service.domain.add",
          target: { type: "service", id: s.id },
          details: { hostname },
        });
        return { id: rows[0]!.id, serviceId: s.id, hostname, createdAt: rows[0]!.created_at };
      } catch (err) {
        // Worded the same whoever holds it (this organization or another), so the answer does
        // not tell another tenant's domains apart. First come, first served until DNS
        // ownership verification exists.
        if (isUniqueViolation(err))
          throw new FlotillaError(
            "resource.already_exists",
            `${hostname} cannot be added: it is already in use; choose another hostname`,
            { field: "hostname" },
          );
        throw err;
      }
    });
    await this.changed(c.organizationId, domain.serviceId);
    return domain;
  }

  async list(c: Caller, serviceId: string): Promise<ServiceDomain[]> {
    const s = await this.services.check(c, serviceId, this.db, "service_id");
    const { rows } = await this.db.query<{ id: string; hostname: string; created_at: Date }>(
      "SELECT id, hostname, created_at FROM service_domains WHERE service_id = $1 ORDER BY hostname",
      [s.id],
    );
    return rows.map((r) => ({
      id: r.id,
      serviceId: s.id,
      hostname: r.hostname,
      createdAt: r.created_at,
    }));
  }

  async remove(c: Caller, serviceId: string, rawHostname: string): Promise<void> {
    const hostname = rawHostname.trim().toLowerCase().replace(/\.$/, "");
    if (!hostname) throw invalid("hostname", "is required");
    const id = await this.db.tx(async (tx) => {
      const s = await this.services.check(c, serviceId, tx, "service_id");
      const { rowCount } = await tx.query(
        "DELETE FROM service_domains WHERE service_id = $1 AND hostname = $2",
        [s.id, hostname],
      );
      if (!rowCount) throw notFound(`domain ${hostname.slice(0, 60)} of this service`);
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "service.domain.remove",
        target: { type: "service", id: s.id },
        details: { hostname },
      });
      return s.id;
    });
    await this.changed(c.organizationId, id);
  }
}

/** The custom hostnames of a service, for its routes (the route controller's read). */
export async function customHostnames(q: Queryable, serviceId: string): Promise<string[]> {
  const { rows } = await q.query<{ hostname: string }>(
    "SELECT hostname FROM service_domains WHERE service_id = $1 ORDER BY hostname",
    [serviceId],
  );
  return rows.map((r) => r.hostname);
}
