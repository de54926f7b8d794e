// The one helper every durable consumer uses: pull, explicit ack, bounded concurrency, idempotent redelivery, poison quarantine.
import {
  AckPolicy,
  type ConsumerConfig,
  type ConsumerMessages,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from "@nats-io/jetstream";
import type { MsgHdrs } from "@nats-io/transport-node";
import {
  contextFromNatsHeaders,
  FlotillaError,
  type Logger,
  runWithContext,
  uuidv7,
} from "../../shared/index.js";
import type { Db, Queryable } from "../../store/index.js";
import type { StoredEvent } from "../outbox/index.js";
import { decodeEvent } from "./bus.js";
import type { ConsumerOutcome } from "./metrics.js";
import { nanos } from "./streams.js";

export interface HandlerTools {
  /** The transaction that also records the event as processed: effects in it happen once. */
  tx: Queryable;
  /** Tells the server the handler is still busy (the helper also calls it every ack_wait/3). */
  working(): void;
  /** 1 on the first delivery. */
  deliveryCount: number;
}

export interface ConsumerSpec {
  /** The durable name: letters, digits, '-' and '_', at most 64 characters. */
  name: string;
  handler(event: StoredEvent, tools: HandlerTools): Promise<void>;
  /** Only events of types this accepts reach the handler; the others are acked at once. */
  accepts?(eventType: string): boolean;
  /** One subject filter (NATS 2.9 has no filter_subjects). Default: the whole stream. */
  filterSubject?: string;
  /** Handlers running at once on this replica; also max_ack_pending. Default 16. */
  concurrency?: number;
  /** Redelivered if not acked within this. Default 30 s. */
  ackWaitMs?: number;
  /**
   * Failed deliveries before the message is quarantined. Default 5. Counted by this helper, not
   * by the server: the durable's own max_deliver is unlimited, so a message whose quarantine
   * cannot be recorded (the store is down) is redelivered until it is processed or quarantined.
   */
  maxDeliver?: number;
  /** Wait before a failed message is redelivered, times the delivery count (at most 60 s). Default 1 s. */
  retryDelayMs?: number;
  /**
   * shared (default): one durable for all replicas, each event handled by one of them.
   * replica: a durable per replica (name + instance id, starting at new events, removed by the
   * server after 1 hour inactive), so every replica handles every event (a per-replica fan-out,
   * e.g. gateways); its processed rows are keyed by that durable.
   */
  scope?: "shared" | "replica";
}

export const CONSUMER_DEFAULTS = {
  concurrency: 16,
  ackWaitMs: 30_000,
  maxDeliver: 5,
  retryDelayMs: 1000,
} as const;

const NAME = /^[A-Za-z0-9_-]{1,64}$/;
const REPLICA_INACTIVE_MS = 3600_000;
/**
 * The durable's max_deliver: unlimited. JetStream never redelivers past max_deliver, so a server
 * limit would drop a message whose last delivery met a store outage (neither processed nor
 * quarantined); the helper counts deliveries itself and terms a message only once its quarantine
 * row is written.
 */
export const SERVER_MAX_DELIVER = -1;
/** The longest wait before a redelivery: a store outage of an hour costs ~60 deliveries per message, not thousands. */
const MAX_RETRY_DELAY_MS = 60_000;

export interface ConsumerHost {
  db: Db;
  backbone: { js: JetStreamClient; jsm: JetStreamManager; contract: { name: string } };
  logger: Logger;
  instanceId: string;
  /** Told each message's outcome (metrics). */
  observe?(consumer: string, outcome: ConsumerOutcome): void;
}

const header = (h: MsgHdrs | undefined) => (name: string) => h?.get(name) || undefined;

/** Quarantined messages name their body this way: the stream sequence, and the outbox row. */
export function payloadRef(stream: string, seq: number, eventId: string | null): string {
  return eventId ? `stream:${stream}/${seq} outbox_events:${eventId}` : `stream:${stream}/${seq}`;
}

export class EventConsumer {
  readonly durable: string;
  private readonly concurrency: number;
  private readonly ackWaitMs: number;
  private readonly maxDeliver: number;
  private running = false;
  private messages: ConsumerMessages | undefined;
  private loop: Promise<void> | undefined;
  private readonly inFlight = new Set<Promise<void>>();

  constructor(
    private readonly host: ConsumerHost,
    readonly spec: ConsumerSpec,
  ) {
    if (!NAME.test(spec.name))
      throw new FlotillaError("config.invalid", `consumer name ${spec.name} must match ${NAME}`);
    this.durable =
      spec.scope === "replica" ? `${spec.name}-${host.instanceId}`.slice(0, 64) : spec.name;
    this.concurrency = spec.concurrency ?? CONSUMER_DEFAULTS.concurrency;
    this.ackWaitMs = spec.ackWaitMs ?? CONSUMER_DEFAULTS.ackWaitMs;
    this.maxDeliver = spec.maxDeliver ?? CONSUMER_DEFAULTS.maxDeliver;
  }

  get stream(): string {
    return this.host.backbone.contract.name;
  }

  /** The durable's config; max_ack_pending = concurrency, so the server never sends more than we run. */
  config(): Partial<ConsumerConfig> & { durable_name: string } {
    return {
      durable_name: this.durable,
      ack_policy: AckPolicy.Explicit,
      // A per-replica durable starts at new events: a replica's fan-out concerns what happens
      // while it runs (what it missed before, it reads from the database when it starts).
      deliver_policy: this.spec.scope === "replica" ? DeliverPolicy.New : DeliverPolicy.All,
      ack_wait: nanos(this.ackWaitMs),
      max_deliver: SERVER_MAX_DELIVER,
      max_ack_pending: this.concurrency,
      ...(this.spec.filterSubject ? { filter_subject: this.spec.filterSubject } : {}),
      ...(this.spec.scope === "replica" ? { inactive_threshold: nanos(REPLICA_INACTIVE_MS) } : {}),
    };
  }

  /** Creates the durable or brings its tunables to this spec (never deletes it: it holds the position). */
  private async ensure(): Promise<void> {
    const { jsm } = this.host.backbone;
    const wanted = this.config();
    try {
      const info = await jsm.consumers.info(this.stream, this.durable);
      const c = info.config;
      if (c.ack_policy !== AckPolicy.Explicit)
        throw new FlotillaError(
          "events.stream_incompatible",
          `NATS consumer ${this.durable} on ${this.stream} has ack_policy ${c.ack_policy}; it must be explicit`,
          { field: "ack_policy" },
        );
      if (
        c.ack_wait !== wanted.ack_wait ||
        c.max_deliver !== wanted.max_deliver ||
        c.max_ack_pending !== wanted.max_ack_pending
      ) {
        await jsm.consumers.update(this.stream, this.durable, {
          ack_wait: wanted.ack_wait!,
          max_deliver: wanted.max_deliver!,
          max_ack_pending: wanted.max_ack_pending!,
        });
      }
    } catch (err) {
      if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.ConsumerNotFound))
        throw err;
      await jsm.consumers.add(this.stream, wanted);
    }
  }

  async start(): Promise<void> {
    await this.ensure();
    this.running = true;
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    while (this.running) {
      try {
        const consumer = await this.host.backbone.js.consumers.get(this.stream, this.durable);
        this.messages = await consumer.consume({ max_messages: this.concurrency });
        for await (const m of this.messages) {
          const p: Promise<void> = this.handle(m)
            .catch((err) =>
              this.host.logger.error({ err, consumer: this.durable }, "event handling failed"),
            )
            .finally(() => this.inFlight.delete(p));
          this.inFlight.add(p);
          if (this.inFlight.size >= this.concurrency) await Promise.race(this.inFlight);
        }
      } catch (err) {
        // A closed connection never comes back (the hub is shutting down): stop retrying.
        if (!this.running || (err as Error).name === "ClosedConnectionError") break;
        this.host.logger.warn(
          { err, consumer: this.durable },
          "consumer stopped; restarting in 1 s",
        );
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  private async handle(m: JsMsg): Promise<void> {
    const get = header(m.headers);
    let event: StoredEvent;
    try {
      event = decodeEvent(m.data);
    } catch (err) {
      await this.poison(
        m,
        null,
        `undecodable: ${(err as Error).message}`,
        get("tenant-id") ?? null,
      );
      return;
    }
    const ctx = { ...contextFromNatsHeaders(get), tenant: event.organizationId };
    await runWithContext(ctx, async () => {
      if (this.spec.accepts && !this.spec.accepts(event.type)) {
        this.host.observe?.(this.spec.name, "skipped");
        m.ack();
        return;
      }
      // Long handlers keep their claim: the server restarts ack_wait on every working().
      const heartbeat = setInterval(() => m.working(), Math.max(100, this.ackWaitMs / 3));
      try {
        const fresh = await this.runHandler(event, {
          working: () => m.working(),
          deliveryCount: m.info.deliveryCount,
        });
        this.host.logger.info(
          {
            consumer: this.durable,
            event_id: event.id,
            event_type: event.type,
            stream_seq: m.seq,
            deliveries: m.info.deliveryCount,
            duplicate: !fresh,
          },
          "event handled",
        );
        this.host.observe?.(this.spec.name, fresh ? "handled" : "duplicate");
        m.ack();
      } catch (err) {
        if (m.info.deliveryCount >= this.maxDeliver) {
          await this.poison(
            m,
            event,
            `failed ${m.info.deliveryCount} times: ${(err as Error).message}`,
            event.organizationId,
          );
        } else {
          this.host.logger.warn(
            { err, consumer: this.durable, event_id: event.id, deliveries: m.info.deliveryCount },
            "event handler failed; will be redelivered",
          );
          this.host.observe?.(this.spec.name, "retried");
          m.nak(this.retryDelay(m.info.deliveryCount));
        }
      } finally {
        clearInterval(heartbeat);
      }
    });
  }

  /**
   * Runs the handler once per event id: the processed row and the handler's effects share one
   * transaction, so a redelivery (or a concurrent delivery to another replica, which waits on the
   * row's key) finds the row and does nothing. Returns false for such a duplicate.
   */
  async runHandler(
    event: StoredEvent,
    tools: Omit<HandlerTools, "tx">,
    also?: (tx: Queryable) => Promise<void>,
  ): Promise<boolean> {
    return this.host.db.tx(async (tx) => {
      await also?.(tx);
      const { rows } = await tx.query(
        `INSERT INTO event_processed (consumer, event_id) VALUES ($1, $2)
         ON CONFLICT DO NOTHING RETURNING event_id`,
        [this.durable, event.id],
      );
      if (rows.length === 0) return false;
      await this.spec.handler(event, { ...tools, tx });
      return true;
    });
  }

  private retryDelay(attempt: number): number {
    const base = this.spec.retryDelayMs ?? CONSUMER_DEFAULTS.retryDelayMs;
    return Math.min(base * Math.max(1, attempt), MAX_RETRY_DELAY_MS);
  }

  /**
   * Records the message in quarantine, then terminates it. If recording fails (the store is down,
   * usually the same outage that failed the handler), the message is redelivered instead: the
   * server's max_deliver is unlimited, so that redelivery comes, runs the handler again (which may
   * now succeed) and, failing, tries the quarantine again. A message is never terminated unrecorded.
   */
  private async poison(
    m: JsMsg,
    event: StoredEvent | null,
    reason: string,
    tenant: string | null,
  ): Promise<void> {
    const organizationId = tenant && /^[0-9a-f-]{36}$/i.test(tenant) ? tenant : null;
    try {
      await this.host.db.query(
        `INSERT INTO event_quarantine (id, organization_id, consumer, stream, subject, stream_seq, event_id,
                                       event_type, deliveries, reason, payload_ref)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (consumer, stream, stream_seq) DO NOTHING`,
        [
          uuidv7(),
          organizationId,
          this.spec.name,
          this.stream,
          m.subject,
          m.seq,
          event?.id ?? null,
          event?.type ?? null,
          m.info.deliveryCount,
          reason.slice(0, 2000),
          payloadRef(this.stream, m.seq, event?.id ?? null),
        ],
      );
    } catch (err) {
      this.host.logger.error(
        { err, consumer: this.durable, stream_seq: m.seq },
        "cannot quarantine; redelivering",
      );
      this.host.observe?.(this.spec.name, "retried");
      m.nak(this.retryDelay(m.info.deliveryCount - this.maxDeliver + 1));
      return;
    }
    m.term(reason.slice(0, 200));
    this.host.observe?.(this.spec.name, "quarantined");
    this.host.logger.error(
      {
        consumer: this.durable,
        stream_seq: m.seq,
        subject: m.subject,
        event_id: event?.id,
        reason,
      },
      "event quarantined",
    );
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.messages?.close();
    await this.loop?.catch(() => {});
    await Promise.allSettled([...this.inFlight]);
  }
}
