// The transport contract: the request context and how it crosses every hop (HTTP, gRPC, NATS, WebSocket, rows).
import { AsyncLocalStorage } from "node:async_hooks";
import { randomUUID } from "node:crypto";
import { childTraceparent, normalizeCorrelationId, normalizeTraceparent } from "./trace.js";

export interface RequestContext {
  /** Organization id. Set from the authenticated principal, never from a client's claim. */
  tenant?: string;
  correlationId: string;
  traceparent: string;
  requestId?: string;
}

/** One row per context field; each column names the field on one kind of hop. */
export const CARRIAGE = {
  tenant: { http: "x-tenant-id", nats: "tenant-id", ws: "tenant", row: "organization_id" },
  correlation: {
    http: "x-correlation-id",
    nats: "correlation-id",
    ws: "correlation",
    row: "correlation_id",
  },
  trace: { http: "traceparent", nats: "traceparent", ws: "traceparent", row: "traceparent" },
  request: { http: "x-request-id", nats: null, ws: null, row: null },
  dedupe: { http: "idempotency-key", nats: "Nats-Msg-Id", ws: "id", row: "id" },
} as const;

type HeaderSource = Headers | Record<string, string | string[] | undefined>;

function readHeader(headers: HeaderSource, name: string): string | undefined {
  if (headers instanceof Headers) return headers.get(name) ?? undefined;
  const value = headers[name] ?? headers[name.toLowerCase()];
  return Array.isArray(value) ? value[0] : value;
}

// Request ids are echoed into logs; bound them like correlation ids.
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export interface IncomingContext extends RequestContext {
  /** The tenant a client named in x-tenant-id: a claim to check against the principal. */
  claimedTenant?: string;
}

/** Reads HTTP or gRPC metadata; normalizes or generates correlation and trace. */
export function contextFromHttpHeaders(headers: HeaderSource): IncomingContext {
  const requestId = readHeader(headers, CARRIAGE.request.http);
  const claimedTenant = readHeader(headers, CARRIAGE.tenant.http)?.trim();
  return {
    correlationId: normalizeCorrelationId(readHeader(headers, CARRIAGE.correlation.http)),
    traceparent: normalizeTraceparent(readHeader(headers, CARRIAGE.trace.http)),
    requestId: requestId && REQUEST_ID.test(requestId) ? requestId : randomUUID(),
    ...(claimedTenant ? { claimedTenant } : {}),
  };
}

/** Headers for an outgoing HTTP or gRPC call: the same trace, a new span. */
export function contextToHttpHeaders(ctx: RequestContext): Record<string, string> {
  const headers: Record<string, string> = {
    [CARRIAGE.correlation.http]: ctx.correlationId,
    [CARRIAGE.trace.http]: childTraceparent(ctx.traceparent),
  };
  if (ctx.tenant) headers[CARRIAGE.tenant.http] = ctx.tenant;
  return headers;
}

export function contextToNatsHeaders(
  ctx: RequestContext,
  messageId?: string,
): Record<string, string> {
  const headers: Record<string, string> = {
    [CARRIAGE.correlation.nats]: ctx.correlationId,
    [CARRIAGE.trace.nats]: childTraceparent(ctx.traceparent),
  };
  if (ctx.tenant) headers[CARRIAGE.tenant.nats] = ctx.tenant;
  if (messageId) headers[CARRIAGE.dedupe.nats] = messageId;
  return headers;
}

export function contextFromNatsHeaders(get: (name: string) => string | undefined): RequestContext {
  const tenant = get(CARRIAGE.tenant.nats);
  return {
    correlationId: normalizeCorrelationId(get(CARRIAGE.correlation.nats)),
    traceparent: normalizeTraceparent(get(CARRIAGE.trace.nats)),
    ...(tenant ? { tenant } : {}),
  };
}

export interface FrameContext {
  tenant?: string;
  correlation: string;
  traceparent: string;
}

export function contextToFrame(ctx: RequestContext): FrameContext {
  return {
    correlation: ctx.correlationId,
    traceparent: childTraceparent(ctx.traceparent),
    ...(ctx.tenant ? { tenant: ctx.tenant } : {}),
  };
}

export function contextFromFrame(frame: Partial<FrameContext> | undefined): RequestContext {
  return {
    correlationId: normalizeCorrelationId(frame?.correlation),
    traceparent: normalizeTraceparent(frame?.traceparent),
    ...(frame?.tenant ? { tenant: frame.tenant } : {}),
  };
}

export interface ContextColumns {
  organization_id: string | null;
  correlation_id: string;
  traceparent: string;
}

export function contextToRow(ctx: RequestContext): ContextColumns {
  return {
    organization_id: ctx.tenant ?? null,
    correlation_id: ctx.correlationId,
    traceparent: ctx.traceparent,
  };
}

/** The owner of a stored intent continues the trace that was stored with it. */
export function contextFromRow(row: Partial<ContextColumns>): RequestContext {
  return {
    correlationId: normalizeCorrelationId(row.correlation_id),
    traceparent: childTraceparent(normalizeTraceparent(row.traceparent)),
    ...(row.organization_id ? { tenant: row.organization_id } : {}),
  };
}

const storage = new AsyncLocalStorage<RequestContext>();

export function runWithContext<T>(ctx: RequestContext, fn: () => T): T {
  return storage.run(ctx, fn);
}

export function currentContext(): RequestContext | undefined {
  return storage.getStore();
}

/** The current context, or a fresh one for work that starts inside this process (a timer, a sweep). */
export function contextOrNew(): RequestContext {
  return (
    storage.getStore() ?? {
      correlationId: normalizeCorrelationId(undefined),
      traceparent: normalizeTraceparent(undefined),
    }
  );
}
