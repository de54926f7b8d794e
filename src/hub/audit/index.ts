// Public entry of the audit module: one row per mutation, written in the mutation's transaction.
import { contextOrNew, invalid, uuidv7 } from "../../shared/index.js";
import type { Db, Queryable } from "../../store/index.js";

export interface AuditRecord {
  organizationId: string | null;
  actor: { type: "user" | "token" | "system" | "anonymous"; id: string | null };
  action: string;
  target?: { type: string; id: string };
  details?: Record<string, unknown>;
}

export interface AuditEvent {
  id: string;
  actorType: string;
  actorId: string | null;
  action: string;
  targetType: string | null;
  targetId: string | null;
  correlationId: string;
  traceparent: string;
  requestId: string | null;
  details: Record<string, unknown>;
  createdAt: Date;
}

/** Records one audit row inside tx, stamped with the current request's correlation and trace. */
export async function recordAudit(tx: Queryable, entry: AuditRecord): Promise<void> {
  const ctx = contextOrNew();
  await tx.query(
    `INSERT INTO audit_log (id, organization_id, actor_type, actor_id, action, target_type, target_id,
                            correlation_id, traceparent, request_id, details)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
    [
      uuidv7(),
      entry.organizationId,
      entry.actor.type,
      entry.actor.id,
      entry.action,
      entry.target?.type ?? null,
      entry.target?.id ?? null,
      ctx.correlationId,
      ctx.traceparent,
      ctx.requestId ?? null,
      JSON.stringify(entry.details ?? {}),
    ],
  );
}

/** What the audit projection needs of a domain event (the outbox's StoredEvent has it). */
export interface ProjectedEvent {
  id: string;
  organizationId: string;
  type: string;
  subjectId: string;
  payload: Record<string, unknown>;
  correlationId: string;
  traceparent: string;
  occurredAt: Date;
}

/**
 * The audit projection (a NATS consumer): every domain event, including what controllers and
 * agents observed, becomes an audit row with the system actor, the event type as action and the
 * event's own correlation and trace, so one correlation id shows a request and its effects. The
 * row's id is the event id: a redelivery inserts nothing.
 */
export async function projectEventIntoAudit(tx: Queryable, e: ProjectedEvent): Promise<boolean> {
  const { rows } = await tx.query(
    `INSERT INTO audit_log (id, organization_id, actor_type, actor_id, action, target_type, target_id,
                            correlation_id, traceparent, request_id, details, created_at)
     VALUES ($1, $2, 'system', 'events', $3, $4, $5, $6, $7, NULL, $8, $9)
     ON CONFLICT (id) DO NOTHING RETURNING id`,
    [
      e.id,
      e.organizationId,
      e.type,
      e.type.split(".")[0],
      e.subjectId,
      e.correlationId,
      e.traceparent,
      JSON.stringify({ source: "event", event_id: e.id, payload: e.payload }),
      e.occurredAt,
    ],
  );
  return rows.length > 0;
}

interface AuditRow {
  id: string;
  actor_type: string;
  actor_id: string | null;
  action: string;
  target_type: string | null;
  target_id: string | null;
  correlation_id: string;
  traceparent: string;
  request_id: string | null;
  details: Record<string, unknown>;
  created_at: Date;
}

/** Newest first; `beforeId` pages (ids are UUIDv7, so they sort by time). */
export async function listAudit(
  db: Db,
  organizationId: string,
  options: { limit?: number; beforeId?: string } = {},
): Promise<AuditEvent[]> {
  const limit = options.limit || 50;
  if (!Number.isInteger(limit) || limit < 1 || limit > 500)
    throw invalid("limit", "must be between 1 and 500");
  if (options.beforeId && !/^[0-9a-f-]{36}$/i.test(options.beforeId))
    throw invalid("before_id", "must be a UUID");
  const { rows } = await db.query<AuditRow>(
    `SELECT id, actor_type, actor_id, action, target_type, target_id, correlation_id, traceparent,
            request_id, details, created_at
     FROM audit_log
     WHERE organization_id = $1 AND ($2::uuid IS NULL OR id < $2::uuid)
     ORDER BY id DESC LIMIT $3`,
    [organizationId, options.beforeId || null, limit],
  );
  return rows.map((r) => ({
    id: r.id,
    actorType: r.actor_type,
    actorId: r.actor_id,
    action: r.action,
    targetType: r.target_type,
    targetId: r.target_id,
    correlationId: r.correlation_id,
    traceparent: r.traceparent,
    requestId: r.request_id,
    details: r.details,
    createdAt: r.created_at,
  }));
}
