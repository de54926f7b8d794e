// Webhook endpoints (per organization, secret sealed), the consumer step that records deliveries, and the delivery worker.
import { randomBytes } from "node:crypto";
import {
  actorLabel,
  type Caller,
  checkId,
  contextToHttpHeaders,
  FlotillaError,
  invalid,
  type Logger,
  uuidv7,
} from "../../shared/index.js";
import { type Db, type Queryable, WakeLoop } from "../../store/index.js";
import type { StoredEvent } from "../outbox/index.js";
import {
  checkDestinationUrl,
  type DestinationPolicy,
  postPinned,
  resolveDestination,
} from "./destinations.js";
import type { Sealer, WebhookAudit } from "./ports.js";
import { SIGNATURE_HEADER, signWebhook } from "./signing.js";

/** The event domains webhooks carry. */
export const WEBHOOK_DOMAINS = ["deployment", "database"] as const;
export const DEFAULT_EVENT_TYPES = ["deployment.*", "database.*"];
const PATTERN = /^(deployment|database)\.(\*|[a-z_]+(\.[a-z_]+)*)$/;
export const WEBHOOK_CHANNEL = "flotilla_webhooks";
const MAX_ENDPOINTS_PER_ORG = 50;

export interface WebhookEndpoint {
  id: string;
  url: string;
  eventTypes: string[];
  description: string;
  createdBy: string;
  createdAt: Date;
}

export interface WebhookDelivery {
  id: string;
  endpointId: string;
  eventId: string;
  eventType: string;
  status: "pending" | "succeeded" | "failed";
  attempts: number;
  nextAttemptAt: Date;
  lastStatusCode: number | null;
  lastError: string | null;
  deliveredAt: Date | null;
  createdAt: Date;
}

export interface DeliveryOptions extends DestinationPolicy {
  /** First retry after this, doubling per attempt (with jitter). Default 5 s. */
  backoffBaseMs?: number;
  /** Longest wait between attempts. Default 1 hour. */
  backoffMaxMs?: number;
  /** Attempts before a delivery is failed for good. Default 10 (about 43 minutes of retries at the defaults). */
  maxAttempts?: number;
  /** Deadline of one POST. Default 10 s. */
  timeoutMs?: number;
  /** POSTs in flight on this replica. Default 8. */
  concurrency?: number;
  /** Look for due deliveries this often even without a wake-up. Default 1 s. */
  pollIntervalMs?: number;
  /** Told each attempt's outcome (metrics). */
  observe?(outcome: "succeeded" | "retried" | "failed"): void;
}

/** True when an endpoint subscribed with `patterns` wants events of `type`. */
export function matchesEventType(patterns: string[], type: string): boolean {
  return patterns.some((p) => (p.endsWith(".*") ? type.startsWith(p.slice(0, -1)) : p === type));
}

function checkUrl(raw: string): string {
  if (!raw) throw invalid("url", "is required");
  if (raw.length > 2000) throw invalid("url", "is at most 2000 characters");
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw invalid("url", "is not a URL");
  }
  if (u.protocol !== "http:" && u.protocol !== "https:")
    throw invalid("url", "must be http or https");
  if (u.username || u.password) throw invalid("url", "must not carry credentials");
  return u.toString();
}

function checkEventTypes(types: string[]): string[] {
  const list = types.length === 0 ? DEFAULT_EVENT_TYPES : types;
  if (list.length > 20) throw invalid("event_types", "at most 20 patterns");
  for (const t of list)
    if (!PATTERN.test(t))
      throw invalid(
        "event_types",
        `${JSON.stringify(t.slice(0, 80))} must be deployment.* or database.*, or one type of those domains (deployment.created)`,
      );
  return [...new Set(list)];
}

interface EndpointRow {
  id: string;
  url: string;
  event_types: string[];
  description: string;
  created_by: string;
  created_at: Date;
}
const toEndpoint = (r: EndpointRow): WebhookEndpoint => ({
  id: r.id,
  url: r.url,
  eventTypes: r.event_types,
  description: r.description,
  createdBy: r.created_by,
  createdAt: r.created_at,
});

interface DeliveryRow {
  id: string;
  endpoint_id: string;
  event_id: string;
  event_type: string;
  status: WebhookDelivery["status"];
  attempts: number;
  next_attempt_at: Date;
  last_status_code: number | null;
  last_error: string | null;
  delivered_at: Date | null;
  created_at: Date;
}
const DELIVERY_COLUMNS =
  "id, endpoint_id, event_id, event_type, status, attempts, next_attempt_at, last_status_code, last_error, delivered_at, created_at";
const toDelivery = (r: DeliveryRow): WebhookDelivery => ({
  id: r.id,
  endpointId: r.endpoint_id,
  eventId: r.event_id,
  eventType: r.event_type,
  status: r.status,
  attempts: r.attempts,
  nextAttemptAt: r.next_attempt_at,
  lastStatusCode: r.last_status_code,
  lastError: r.last_error,
  deliveredAt: r.delivered_at,
  createdAt: r.created_at,
});

const aad = (endpointId: string) => `webhook:${endpointId}`;

export class WebhooksService {
  private readonly loop: WakeLoop;

  constructor(
    private readonly db: Db,
    private readonly sealer: Sealer,
    private readonly audit: WebhookAudit,
    private readonly logger: Logger,
    private readonly options: DeliveryOptions = {},
  ) {
    this.loop = new WakeLoop(db, {
      channel: WEBHOOK_CHANNEL,
      pollIntervalMs: options.pollIntervalMs ?? 1000,
      pass: () =>
        this.deliverDue().then(
          () => undefined,
          (err) => this.logger.warn({ err }, "webhook delivery pass failed; will retry"),
        ),
    });
  }

  /** Creates an endpoint; the signing secret is returned once and stored sealed. */
  async create(
    c: Caller,
    input: { url: string; eventTypes: string[]; description?: string },
  ): Promise<{ endpoint: WebhookEndpoint; secret: string }> {
    const url = checkUrl(input.url);
    checkDestinationUrl(url, this.options);
    const eventTypes = checkEventTypes(input.eventTypes);
    const description = input.description ?? "";
    if (description.length > 200) throw invalid("description", "is at most 200 characters");
    const id = uuidv7();
    const secret = `whsec_${randomBytes(32).toString("base64url")}`;
    const { sealed, keyId } = this.sealer.seal(secret, aad(id));
    const endpoint = await this.db.tx(async (tx) => {
      const count = await tx.query<{ n: string }>(
        "SELECT count(*)::text AS n FROM webhook_endpoints WHERE organization_id = $1",
        [c.organizationId],
      );
      if (Number(count.rows[0]!.n) >= MAX_ENDPOINTS_PER_ORG)
        throw new FlotillaError(
          "resource.conflict",
          `an organization has at most ${MAX_ENDPOINTS_PER_ORG} webhook endpoints; remove one first`,
          { field: "url" },
        );
      const { rows } = await tx.query<EndpointRow>(
        `INSERT INTO webhook_endpoints (id, organization_id, url, event_types, description, secret_sealed,
                                        secret_key_id, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING id, url, event_types, description, created_by, created_at`,
        [
          id,
          c.organizationId,
          url,
          JSON.stringify(eventTypes),
          description,
          sealed,
          keyId,
          actorLabel(c),
        ],
      );
      await this.audit(tx, c, "webhook.created", id);
      return toEndpoint(rows[0]!);
    });
    return { endpoint, secret };
  }

  /**
   * Re-seals every endpoint secret not sealed with the current master key (part of
   * `flotilla config rotate-key`), 200 rows per transaction; safe to rerun. Returns how many.
   */
  async resealSecrets(): Promise<number> {
    let total = 0;
    for (;;) {
      const n = await this.db.tx(async (tx) => {
        const { rows } = await tx.query<{
          id: string;
          secret_sealed: Buffer;
          secret_key_id: string;
        }>(
          `SELECT id, secret_sealed, secret_key_id FROM webhook_endpoints
           WHERE secret_key_id <> $1 LIMIT 200 FOR UPDATE`,
          [this.sealer.current.id],
        );
        for (const r of rows) {
          const again = this.sealer.seal(
            this.sealer.open(r.secret_sealed, r.secret_key_id, aad(r.id)),
            aad(r.id),
          );
          await tx.query(
            "UPDATE webhook_endpoints SET secret_sealed = $2, secret_key_id = $3 WHERE id = $1",
            [r.id, again.sealed, again.keyId],
          );
        }
        return rows.length;
      });
      total += n;
      if (n < 200) return total;
    }
  }

  async list(c: Caller): Promise<WebhookEndpoint[]> {
    const { rows } = await this.db.query<EndpointRow>(
      `SELECT id, url, event_types, description, created_by, created_at FROM webhook_endpoints
       WHERE organization_id = $1 ORDER BY id`,
      [c.organizationId],
    );
    return rows.map(toEndpoint);
  }

  /** Removes an endpoint and its deliveries (pending ones are never sent). */
  async remove(c: Caller, id: string): Promise<void> {
    const endpointId = checkId("id", id);
    await this.db.tx(async (tx) => {
      const { rows } = await tx.query(
        "DELETE FROM webhook_endpoints WHERE id = $1 AND organization_id = $2 RETURNING id",
        [endpointId, c.organizationId],
      );
      if (rows.length === 0)
        throw new FlotillaError("resource.not_found", `webhook endpoint ${id} not found`);
      await this.audit(tx, c, "webhook.deleted", endpointId);
    });
  }

  async deliveries(
    c: Caller,
    o: { endpointId?: string; limit?: number } = {},
  ): Promise<WebhookDelivery[]> {
    const limit = o.limit || 100;
    if (!Number.isInteger(limit) || limit < 1 || limit > 500)
      throw invalid("limit", "must be between 1 and 500");
    const endpointId = o.endpointId ? checkId("endpoint_id", o.endpointId) : null;
    if (endpointId) {
      const { rows } = await this.db.query(
        "SELECT 1 FROM webhook_endpoints WHERE id = $1 AND organization_id = $2",
        [endpointId, c.organizationId],
      );
      if (rows.length === 0)
        throw new FlotillaError("resource.not_found", `webhook endpoint ${o.endpointId} not found`);
    }
    const { rows } = await this.db.query<DeliveryRow>(
      `SELECT ${DELIVERY_COLUMNS} FROM webhook_deliveries
       WHERE organization_id = $1 AND ($2::uuid IS NULL OR endpoint_id = $2)
       ORDER BY created_at DESC, id DESC LIMIT $3`,
      [c.organizationId, endpointId, limit],
    );
    return rows.map(toDelivery);
  }

  /**
   * The consumer's step, inside its processed-event transaction: one delivery row per matching
   * endpoint (unique per endpoint and event, so it happens once), then a wake-up for the workers.
   */
  async recordDeliveries(tx: Queryable, event: StoredEvent): Promise<number> {
    const domain = event.type.split(".")[0] as string;
    if (!(WEBHOOK_DOMAINS as readonly string[]).includes(domain)) return 0;
    const { rows } = await tx.query<{ id: string; event_types: string[] }>(
      "SELECT id, event_types FROM webhook_endpoints WHERE organization_id = $1",
      [event.organizationId],
    );
    const body = JSON.stringify({
      id: event.id,
      type: event.type,
      organization_id: event.organizationId,
      subject_id: event.subjectId,
      occurred_at: event.occurredAt.toISOString(),
      data: event.payload,
    });
    let n = 0;
    for (const endpoint of rows) {
      if (!matchesEventType(endpoint.event_types, event.type)) continue;
      await tx.query(
        `INSERT INTO webhook_deliveries (id, organization_id, endpoint_id, event_id, event_type, body,
                                         correlation_id, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (endpoint_id, event_id) DO NOTHING`,
        [
          uuidv7(),
          event.organizationId,
          endpoint.id,
          event.id,
          event.type,
          body,
          event.correlationId,
          event.traceparent,
        ],
      );
      n++;
    }
    if (n > 0) await tx.query("SELECT pg_notify($1, '')", [WEBHOOK_CHANNEL]);
    return n;
  }

  /** Starts this replica's delivery worker: woken by NOTIFY, polling as a fallback. */
  start(): Promise<void> {
    return this.loop.start();
  }

  wake(): void {
    this.loop.wake();
  }

  /** Claims due deliveries (a lease, so a dead replica's claims come back) and sends them. */
  async deliverDue(): Promise<number> {
    const concurrency = this.options.concurrency ?? 8;
    const timeoutMs = this.options.timeoutMs ?? 10_000;
    let total = 0;
    for (;;) {
      // The lease outlives the POST deadline, so a slow send is never claimed twice.
      const { rows } = await this.db.query<{
        id: string;
        endpoint_id: string;
        event_id: string;
        event_type: string;
        body: unknown;
        correlation_id: string;
        traceparent: string;
        attempts: number;
        url: string;
        secret_sealed: Buffer;
        secret_key_id: string;
      }>(
        `WITH due AS (
           SELECT id FROM webhook_deliveries
           WHERE status = 'pending' AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now())
           ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         UPDATE webhook_deliveries d
         SET attempts = d.attempts + 1, lease_until = now() + make_interval(secs => $2)
         FROM due, webhook_endpoints e
         WHERE d.id = due.id AND e.id = d.endpoint_id
         RETURNING d.id, d.endpoint_id, d.event_id, d.event_type, d.body, d.correlation_id, d.traceparent,
                   d.attempts, e.url, e.secret_sealed, e.secret_key_id`,
        [concurrency, Math.ceil((timeoutMs * 3) / 1000)],
      );
      if (rows.length === 0) return total;
      total += rows.length;
      await Promise.all(rows.map((d) => this.send(d, timeoutMs)));
    }
  }

  private async send(
    d: {
      id: string;
      endpoint_id: string;
      event_id: string;
      event_type: string;
      body: unknown;
      correlation_id: string;
      traceparent: string;
      attempts: number;
      url: string;
      secret_sealed: Buffer;
      secret_key_id: string;
    },
    timeoutMs: number,
  ): Promise<void> {
    const body = typeof d.body === "string" ? d.body : JSON.stringify(d.body);
    let status: number | null = null;
    let error: string | null = null;
    try {
      const secret = this.sealer.open(d.secret_sealed, d.secret_key_id, aad(d.endpoint_id));
      const url = new URL(d.url);
      // Checked at every attempt, after resolution, and sent to the checked address: an endpoint
      // whose name now resolves to a refused address (or a rebinding DNS answer) gets nothing.
      const to = await resolveDestination(url, this.options);
      status = await postPinned(url, to, {
        body,
        timeoutMs,
        headers: {
          "content-type": "application/json",
          "user-agent": "flotilla-webhooks/1",
          "flotilla-event-id": d.event_id,
          "flotilla-event-type": d.event_type,
          "flotilla-delivery-id": d.id,
          [SIGNATURE_HEADER]: signWebhook(secret, body, Math.floor(Date.now() / 1000)),
          ...contextToHttpHeaders({ correlationId: d.correlation_id, traceparent: d.traceparent }),
        },
      });
      if (status < 200 || status > 299) error = `HTTP ${status}`;
    } catch (err) {
      error =
        (err as Error).name === "TimeoutError"
          ? `no answer within ${timeoutMs} ms`
          : (err as Error).message;
    }
    if (!error) {
      await this.db.query(
        `UPDATE webhook_deliveries SET status = 'succeeded', delivered_at = now(), last_status_code = $2,
                last_error = NULL, lease_until = NULL
         WHERE id = $1 AND attempts = $3 AND status = 'pending'`,
        [d.id, status, d.attempts],
      );
      this.options.observe?.("succeeded");
      this.logger.info(
        { delivery: d.id, event_id: d.event_id, attempts: d.attempts, status },
        "webhook delivered",
      );
      return;
    }
    const maxAttempts = this.options.maxAttempts ?? 10;
    const base = this.options.backoffBaseMs ?? 5000;
    const cap = this.options.backoffMaxMs ?? 3600_000;
    const ceiling = Math.min(cap, base * 2 ** Math.min(d.attempts - 1, 30));
    const delayMs = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    const final = d.attempts >= maxAttempts;
    this.options.observe?.(final ? "failed" : "retried");
    await this.db.query(
      `UPDATE webhook_deliveries
       SET status = CASE WHEN $4 THEN 'failed' ELSE 'pending' END, last_status_code = $2, last_error = $3,
           next_attempt_at = now() + make_interval(secs => $5), lease_until = NULL
       WHERE id = $1 AND attempts = $6 AND status = 'pending'`,
      [d.id, status, error.slice(0, 500), final, delayMs / 1000, d.attempts],
    );
    this.logger.warn(
      {
        delivery: d.id,
        event_id: d.event_id,
        attempts: d.attempts,
        status,
        error,
        retryInMs: final ? null : delayMs,
      },
      final ? "webhook delivery failed for good" : "webhook delivery failed; will retry",
    );
  }

  stop(): Promise<void> {
    return this.loop.stop();
  }
}
