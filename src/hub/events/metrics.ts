// Prometheus metrics of the event backbone: relay publishes, consumer outcomes, webhook attempts, NATS connectivity.
import { createRequire } from "node:module";
import type { Counter, Gauge, Registry } from "prom-client";

export type ConsumerOutcome = "handled" | "duplicate" | "skipped" | "retried" | "quarantined";

export interface EventMetrics {
  published: Counter;
  relayFailures: Counter;
  consumed: Counter<"consumer" | "outcome">;
  webhookAttempts: Counter<"outcome">;
  natsConnected: Gauge;
}

/** Registers the backbone's metrics on the hub's registry (names prefixed flotilla_). */
export function eventMetrics(registry: Registry): EventMetrics {
  const { Counter, Gauge } = createRequire(import.meta.url)(
    "prom-client",
  ) as typeof import("prom-client");
  return {
    published: new Counter({
      name: "flotilla_events_published_total",
      help: "Outbox events the relay published and marked (after the bus acknowledged them).",
      registers: [registry],
    }),
    relayFailures: new Counter({
      name: "flotilla_events_relay_failures_total",
      help: "Relay drains that failed (the bus or the database was down); each is followed by a backoff.",
      registers: [registry],
    }),
    consumed: new Counter({
      name: "flotilla_events_consumed_total",
      help: "Messages a durable consumer finished, by consumer and outcome (handled, duplicate, skipped, retried, quarantined).",
      labelNames: ["consumer", "outcome"],
      registers: [registry],
    }),
    webhookAttempts: new Counter({
      name: "flotilla_webhook_attempts_total",
      help: "Webhook POSTs, by outcome (succeeded, retried, failed for good).",
      labelNames: ["outcome"],
      registers: [registry],
    }),
    natsConnected: new Gauge({
      name: "flotilla_nats_connected",
      help: "1 while this replica's NATS connection is up, 0 while it is down (absent without --nats-url).",
      registers: [registry],
    }),
  };
}
