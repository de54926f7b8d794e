// Outbox rows: domain events appended in the business transaction, read back by id.
import { randomBytes } from "node:crypto";
import { contextOrNew } from "../../shared/index.js";
import type { Queryable } from "../../store/index.js";

export interface NewEvent {
  organizationId: string;
  /** domain.fact, e.g. service.created. */
  type: string;
  subjectId: string;
  /** Facts about the change. Never secret values. */
  payload?: Record<string, unknown>;
}

export interface StoredEvent {
  id: string;
  organizationId: string;
  type: string;
  subjectId: string;
  payload: Record<string, unknown>;
  correlationId: string;
  traceparent: string;
  occurredAt: Date;
}

/** Wakes outbox relays; sent inside the transaction, so only a committed event wakes anyone. */
export const OUTBOX_CHANNEL = "flotilla_outbox";

let lastMs = -1;
let counter = 0;

/**
 * A UUIDv7 that sorts after every event id this process made before, even within one
 * millisecond (RFC 9562 §6.2 method 1: the 12 bits of rand_a count, from a random start), so
 * the events of one transaction, and of quick successive ones, keep their order by id.
 */
export function nextEventId(now: number = Date.now()): string {
  if (now > lastMs) {
    lastMs = now;
    counter = randomBytes(2).readUInt16BE() & 0x7ff;
  } else if (++counter > 0xfff) {
    // 4096 ids in one millisecond: borrow the next one rather than repeat or go backwards.
    lastMs += 1;
    counter = 0;
  }
  const bytes = randomBytes(16);
  bytes.writeUIntBE(lastMs, 0, 6);
  bytes[6] = 0x70 | (counter >> 8);
  bytes[7] = counter & 0xff;
  bytes[8] = 0x80 | (bytes[8]! & 0x3f);
  const hex = bytes.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Appends an event inside tx, stamped with the current request's context. */
export async function appendEvent(tx: Queryable, event: NewEvent): Promise<string> {
  const ctx = contextOrNew();
  const id = nextEventId();
  await tx.query(
    `INSERT INTO outbox_events (id, organization_id, type, subject_id, payload, correlation_id, traceparent)
     VALUES ($1, $2, $3, $4, $5, $6, $7)`,
    [
      id,
      event.organizationId,
      event.type,
      event.subjectId,
      JSON.stringify(event.payload ?? {}),
      ctx.correlationId,
      ctx.traceparent,
    ],
  );
  await tx.query("SELECT pg_notify($1, '')", [OUTBOX_CHANNEL]);
  return id;
}

interface EventRow {
  id: string;
  organization_id: string;
  type: string;
  subject_id: string;
  payload: Record<string, unknown>;
  correlation_id: string;
  traceparent: string;
  occurred_at: Date;
}

export const EVENT_COLUMNS =
  "id, organization_id, type, subject_id, payload, correlation_id, traceparent, occurred_at";

export function toEvent(r: EventRow): StoredEvent {
  return {
    id: r.id,
    organizationId: r.organization_id,
    type: r.type,
    subjectId: r.subject_id,
    payload: r.payload,
    correlationId: r.correlation_id,
    traceparent: r.traceparent,
    occurredAt: r.occurred_at,
  };
}

export async function eventsByIds(db: Queryable, ids: string[]): Promise<StoredEvent[]> {
  if (ids.length === 0) return [];
  const { rows } = await db.query<EventRow>(
    `SELECT ${EVENT_COLUMNS} FROM outbox_events WHERE id = ANY($1::uuid[]) ORDER BY id`,
    [ids],
  );
  return rows.map(toEvent);
}

/** Events of one organization, optionally only those about one service (itself or its deployments). */
export interface EventFilter {
  organizationId: string;
  serviceId?: string | null;
}

const FILTER_SQL = `organization_id = $1 AND ($2::text IS NULL OR subject_id = $2::text OR payload->>'service_id' = $2::text)`;

/** Events after `afterId` (ids are UUIDv7, so they sort by time), oldest first. */
export async function eventsAfter(
  db: Queryable,
  filter: EventFilter,
  afterId: string | null,
  limit = 500,
): Promise<StoredEvent[]> {
  const { rows } = await db.query<EventRow>(
    `SELECT ${EVENT_COLUMNS} FROM outbox_events
     WHERE ${FILTER_SQL} AND ($3::uuid IS NULL OR id > $3::uuid)
     ORDER BY id LIMIT $4`,
    [filter.organizationId, filter.serviceId ?? null, afterId, limit],
  );
  return rows.map(toEvent);
}

/** The newest `limit` events, returned oldest first. */
export async function latestEvents(
  db: Queryable,
  filter: EventFilter,
  limit: number,
): Promise<StoredEvent[]> {
  const { rows } = await db.query<EventRow>(
    `SELECT ${EVENT_COLUMNS} FROM outbox_events WHERE ${FILTER_SQL} ORDER BY id DESC LIMIT $3`,
    [filter.organizationId, filter.serviceId ?? null, limit],
  );
  return rows.map(toEvent).reverse();
}
