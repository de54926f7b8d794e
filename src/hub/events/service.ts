// The events module's service: the consumers this replica runs, and the quarantine they fill (list, replay).
import {
  type Caller,
  checkId,
  contextFromNatsHeaders,
  FlotillaError,
  invalid,
  runWithContext,
} from "../../shared/index.js";
import type { Db } from "../../store/index.js";
import type { StoredEvent } from "../outbox/index.js";
import { decodeEvent } from "./bus.js";
import { type ConsumerHost, type ConsumerSpec, EventConsumer } from "./consumer.js";
import type { NatsBackbone } from "./nats.js";

export interface QuarantinedEvent {
  id: string;
  consumer: string;
  stream: string;
  subject: string;
  streamSeq: number;
  eventId: string | null;
  eventType: string | null;
  deliveries: number;
  reason: string;
  payloadRef: string;
  state: "quarantined" | "replayed";
  replayedAt: Date | null;
  createdAt: Date;
}

interface QuarantineRow {
  id: string;
  consumer: string;
  stream: string;
  subject: string;
  stream_seq: string | number;
  event_id: string | null;
  event_type: string | null;
  deliveries: number;
  reason: string;
  payload_ref: string;
  state: "quarantined" | "replayed";
  replayed_at: Date | null;
  created_at: Date;
}

const COLUMNS =
  "id, consumer, stream, subject, stream_seq, event_id, event_type, deliveries, reason, payload_ref, state, replayed_at, created_at";

const toQuarantined = (r: QuarantineRow): QuarantinedEvent => ({
  id: r.id,
  consumer: r.consumer,
  stream: r.stream,
  subject: r.subject,
  streamSeq: Number(r.stream_seq),
  eventId: r.event_id,
  eventType: r.event_type,
  deliveries: r.deliveries,
  reason: r.reason,
  payloadRef: r.payload_ref,
  state: r.state,
  replayedAt: r.replayed_at,
  createdAt: r.created_at,
});

export interface EventsPorts {
  /** The outbox row of an event, for a replay whose stream message has aged out. */
  eventById(id: string): Promise<StoredEvent | undefined>;
}

/**
 * How long a processed-event row is kept: the stream keeps a message at most 7 days (max_age), so
 * no redelivery can come later; one more day of margin.
 */
export const PROCESSED_RETENTION_DAYS = 8;
const PRUNE_EVERY_MS = 3600_000;
const PRUNE_BATCH = 10_000;

/** Lists and replays quarantined events on any hub; runs this replica's consumers when NATS is configured. */
export class EventsService {
  private readonly consumers = new Map<string, EventConsumer>();
  private pruneTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly db: Db,
    private readonly ports: EventsPorts,
    private readonly backbone: NatsBackbone | undefined,
    private readonly host: Omit<ConsumerHost, "backbone" | "db">,
  ) {}

  get enabled(): boolean {
    return this.backbone !== undefined;
  }

  /** Registers and starts a durable consumer on this replica. */
  async addConsumer(spec: ConsumerSpec): Promise<EventConsumer> {
    if (!this.backbone)
      throw new FlotillaError("events.unavailable", "consumers need NATS (--nats-url)");
    const consumer = new EventConsumer(
      { ...this.host, db: this.db, backbone: this.backbone },
      spec,
    );
    await consumer.start();
    this.consumers.set(spec.name, consumer);
    if (!this.pruneTimer) {
      this.pruneTimer = setInterval(() => {
        this.pruneProcessed().catch((err) =>
          this.host.logger.warn({ err }, "pruning processed events failed; will retry"),
        );
      }, PRUNE_EVERY_MS);
      this.pruneTimer.unref();
    }
    return consumer;
  }

  /**
   * Deletes processed-event rows older than the stream can redeliver, in batches (several
   * replicas doing it at once only repeat an idempotent delete). Returns how many went.
   */
  async pruneProcessed(olderThanDays = PROCESSED_RETENTION_DAYS): Promise<number> {
    let total = 0;
    for (;;) {
      const { rowCount } = await this.db.query(
        `DELETE FROM event_processed WHERE (consumer, event_id) IN (
           SELECT consumer, event_id FROM event_processed
           WHERE processed_at < now() - make_interval(days => $1) LIMIT $2)`,
        [olderThanDays, PRUNE_BATCH],
      );
      total += rowCount;
      if (rowCount < PRUNE_BATCH) return total;
    }
  }

  async listQuarantined(
    c: Caller,
    o: { consumer?: string; includeReplayed?: boolean; limit?: number } = {},
  ): Promise<QuarantinedEvent[]> {
    const limit = o.limit || 100;
    if (!Number.isInteger(limit) || limit < 1 || limit > 500)
      throw invalid("limit", "must be between 1 and 500");
    if (o.consumer && o.consumer.length > 64) throw invalid("consumer", "is at most 64 characters");
    const { rows } = await this.db.query<QuarantineRow>(
      `SELECT ${COLUMNS} FROM event_quarantine
       WHERE organization_id = $1 AND ($2::text IS NULL OR consumer = $2)
         AND ($3::boolean OR state = 'quarantined')
       ORDER BY created_at DESC, id DESC LIMIT $4`,
      [c.organizationId, o.consumer || null, o.includeReplayed ?? false, limit],
    );
    return rows.map(toQuarantined);
  }

  /**
   * Runs the consumer's handler on the quarantined message once more, on this replica, after a
   * fix. The mark and the handler's effects commit together; a failure changes nothing. An event
   * some delivery already processed is only marked.
   */
  async replay(c: Caller, id: string): Promise<QuarantinedEvent> {
    const quarantineId = checkId("id", id);
    const { rows } = await this.db.query<QuarantineRow>(
      `SELECT ${COLUMNS} FROM event_quarantine WHERE id = $1 AND organization_id = $2`,
      [quarantineId, c.organizationId],
    );
    const row = rows[0];
    if (!row) throw new FlotillaError("resource.not_found", `quarantined event ${id} not found`);
    if (row.state !== "quarantined")
      throw new FlotillaError("resource.conflict", `quarantined event ${id} was already replayed`, {
        field: "id",
      });
    const consumer = this.consumers.get(row.consumer);
    if (!consumer)
      throw new FlotillaError(
        "events.unavailable",
        `consumer ${row.consumer} does not run on this hub (is --nats-url set?); retry on a replica that runs it`,
      );
    const { event, headers } = await this.loadEvent(row);
    const ctx = { ...contextFromNatsHeaders(headers), tenant: event.organizationId };
    await runWithContext(ctx, () =>
      consumer.runHandler(
        event,
        { working() {}, deliveryCount: row.deliveries + 1 },
        async (tx) => {
          const marked = await tx.query(
            `UPDATE event_quarantine SET state = 'replayed', replayed_at = now()
           WHERE id = $1 AND state = 'quarantined' RETURNING id`,
            [quarantineId],
          );
          if (marked.rows.length === 0)
            throw new FlotillaError(
              "resource.conflict",
              `quarantined event ${id} was already replayed`,
              {
                field: "id",
              },
            );
        },
      ),
    );
    const after = await this.db.query<QuarantineRow>(
      `SELECT ${COLUMNS} FROM event_quarantine WHERE id = $1`,
      [quarantineId],
    );
    return toQuarantined(after.rows[0]!);
  }

  private async loadEvent(
    row: QuarantineRow,
  ): Promise<{ event: StoredEvent; headers: (name: string) => string | undefined }> {
    const none = () => undefined;
    if (this.backbone) {
      try {
        const m = await this.backbone.jsm.streams.getMessage(row.stream, {
          seq: Number(row.stream_seq),
        });
        if (m) {
          const get = (name: string) => m.header?.get(name) || undefined;
          try {
            return { event: decodeEvent(m.data), headers: get };
          } catch (err) {
            if (!row.event_id)
              throw new FlotillaError(
                "resource.conflict",
                `message ${row.stream}/${row.stream_seq} is undecodable (${(err as Error).message}); nothing to replay`,
                { field: "id" },
              );
          }
        }
      } catch (err) {
        if (err instanceof FlotillaError) throw err;
        // Aged out of the stream, or NATS is down: the outbox row still has the event.
      }
    }
    const event = row.event_id ? await this.ports.eventById(row.event_id) : undefined;
    if (!event)
      throw new FlotillaError(
        "resource.conflict",
        `the body of quarantined event ${row.id} is gone from the stream and the outbox`,
        { field: "id" },
      );
    return { event, headers: none };
  }

  async stop(): Promise<void> {
    clearInterval(this.pruneTimer);
    await Promise.all([...this.consumers.values()].map((c) => c.stop()));
  }
}
