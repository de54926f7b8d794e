// The nats adapter of the event bus port: JetStream publishes deduplicated by event id; local subscribers fed by an ordered consumer.
import { DeliverPolicy } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { contextToNatsHeaders, type Logger } from "../../shared/index.js";
import type { EventBus, StoredEvent } from "../outbox/index.js";
import type { NatsBackbone } from "./nats.js";
import { eventSubject } from "./subjects.js";

/** The event type rides a header too, so a consumer can skip a message without decoding it. */
export const EVENT_TYPE_HEADER = "event-type";

/**
 * The relay's settings on the nats bus: 4 claims of 250 at once, so at most 1,000 publishes are in
 * flight. One claim of 100 waits ~40 ms per round trip (SELECT, 100 acks, UPDATE, COMMIT) and
 * tops out near 2,500 events/s here; overlapping claims keep NATS and PostgreSQL both busy.
 */
export const NATS_RELAY_OPTIONS = { batchSize: 250, concurrency: 4 } as const;

/** How long one publish waits for the stream's ack before the relay's batch fails and backs off. */
const PUBLISH_TIMEOUT_MS = 5000;

export function encodeEvent(e: StoredEvent): Uint8Array {
  return Buffer.from(JSON.stringify(e));
}

/** Parses a message body back into an event; throws on anything that is not one. */
export function decodeEvent(data: Uint8Array): StoredEvent {
  const raw = JSON.parse(Buffer.from(data).toString("utf8")) as Record<string, unknown>;
  const str = (k: string) => {
    const v = raw[k];
    if (typeof v !== "string" || v === "") throw new Error(`field ${k} is missing or not a string`);
    return v;
  };
  const payload = raw.payload;
  if (payload === null || typeof payload !== "object" || Array.isArray(payload))
    throw new Error("field payload is not an object");
  const occurredAt = new Date(str("occurredAt"));
  if (Number.isNaN(occurredAt.getTime())) throw new Error("field occurredAt is not a date");
  return {
    id: str("id"),
    organizationId: str("organizationId"),
    type: str("type"),
    subjectId: str("subjectId"),
    payload: payload as Record<string, unknown>,
    correlationId: str("correlationId"),
    traceparent: str("traceparent"),
    occurredAt,
  };
}

export function natsBus(backbone: NatsBackbone, logger: Logger): EventBus {
  const listeners = new Set<(event: StoredEvent) => void>();
  let feed: { stop(): void } | undefined;

  /** Every replica hears every new event: one ordered (ephemeral, flow-controlled) consumer each. */
  async function startFeed(): Promise<void> {
    const consumer = await backbone.js.consumers.get(backbone.contract.name, {
      deliver_policy: DeliverPolicy.New,
    });
    const messages = await consumer.consume();
    feed = { stop: () => void messages.close() };
    void (async () => {
      for await (const m of messages) {
        let event: StoredEvent;
        try {
          event = decodeEvent(m.data);
        } catch {
          continue; // Quarantine is the durable consumers' job; live watchers skip.
        }
        for (const fn of listeners) {
          try {
            fn(event);
          } catch {
            // A subscriber's failure is its own.
          }
        }
      }
    })().catch((err) => logger.warn({ err }, "NATS live event feed stopped"));
  }

  return {
    async publish(events) {
      // Bounded in flight by the relay: one batch (default 100) of publishes at a time.
      await Promise.all(
        events.map((e) => {
          const h = natsHeaders();
          const ctx = contextToNatsHeaders(
            {
              tenant: e.organizationId,
              correlationId: e.correlationId,
              traceparent: e.traceparent,
            },
            e.id,
          );
          for (const [k, v] of Object.entries(ctx)) h.set(k, v);
          h.set(EVENT_TYPE_HEADER, e.type);
          return backbone.js.publish(
            eventSubject(backbone.subjectRoot, {
              tenant: e.organizationId,
              eventType: e.type,
              subjectId: e.subjectId,
            }),
            encodeEvent(e),
            { msgID: e.id, headers: h, timeout: PUBLISH_TIMEOUT_MS },
          );
        }),
      );
    },
    subscribe(fn) {
      listeners.add(fn);
      if (!feed) {
        feed = { stop() {} };
        startFeed().catch((err) => {
          feed = undefined;
          logger.warn({ err }, "cannot start the NATS live event feed");
        });
      }
      return () => {
        listeners.delete(fn);
      };
    },
    async close() {
      feed?.stop();
    },
  };
}
