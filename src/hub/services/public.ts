// Which services are PUBLIC and where they run: what the gateways' route controller reads.
import type { Queryable } from "../../store/index.js";

export interface PublicFacts {
  id: string;
  organizationId: string;
  slug: string;
  environmentId: string;
  visibility: "PUBLIC" | "PRIVATE";
  serverId: string | null;
  /** The endpoint the agent reports for the running deployment. */
  endpoint: string | null;
}

/**
 * One service's facts, or null when it no longer exists; the row is share-locked until the
 * caller's transaction ends. The route controller decides from these facts and writes routes
 * afterwards: without the lock a change committed in between (the service losing its server)
 * was undone by a pass that had read the facts before it, and the next pass undid that again,
 * two events too many per gateway (seen in CI).
 */
export async function publicFacts(
  q: Queryable,
  organizationId: string,
  serviceId: string,
): Promise<PublicFacts | null> {
  const { rows } = await q.query<{
    id: string;
    organization_id: string;
    slug: string;
    environment_id: string;
    visibility: "PUBLIC" | "PRIVATE";
    server_id: string | null;
    observed_endpoint: string | null;
  }>(
    `SELECT id, organization_id, slug, environment_id, visibility, server_id, observed_endpoint
     FROM services WHERE id = $1 AND organization_id = $2 FOR SHARE`,
    [serviceId, organizationId],
  );
  const r = rows[0];
  return r
    ? {
        id: r.id,
        organizationId: r.organization_id,
        slug: r.slug,
        environmentId: r.environment_id,
        visibility: r.visibility,
        serverId: r.server_id,
        endpoint: r.observed_endpoint,
      }
    : null;
}

/** Ids of an organization's PUBLIC services (all organizations when none is given). */
export async function publicServiceIds(
  q: Queryable,
  organizationId?: string,
): Promise<Array<{ organizationId: string; id: string }>> {
  const { rows } = await q.query<{ organization_id: string; id: string }>(
    `SELECT organization_id, id FROM services
     WHERE visibility = 'PUBLIC' AND ($1::uuid IS NULL OR organization_id = $1) ORDER BY id`,
    [organizationId ?? null],
  );
  return rows.map((r) => ({ organizationId: r.organization_id, id: r.id }));
}

/**
 * Locks one service's row (FOR UPDATE) for the caller's transaction; false when it does not
 * exist in the organization. Other modules serialize per-service writes on it.
 */
export async function lockServiceRow(
  q: Queryable,
  organizationId: string,
  serviceId: string,
): Promise<boolean> {
  const { rows } = await q.query(
    "SELECT id FROM services WHERE id = $1 AND organization_id = $2 FOR UPDATE",
    [serviceId, organizationId],
  );
  return rows.length > 0;
}
