// Prometheus metrics: one registry per process component, every name prefixed flotilla_.
import { createRequire } from "node:module";
import type { Counter, Gauge, Histogram, Registry } from "prom-client";

// Loaded on first use: agents import this module's neighbours but serve their few metrics as
// plain text, and prom-client would cost them ~2 MB of a 60 MB budget.
const promClient = () =>
  createRequire(import.meta.url)("prom-client") as typeof import("prom-client");

export const METRIC_PREFIX = "flotilla_";

export interface Metrics {
  registry: Registry;
  rpcRequests: Counter<"service" | "method" | "code">;
  rpcDuration: Histogram<"service" | "method">;
  dbPoolConnections: Gauge<"state">;
  dbListenerReconnects: Counter;
  dispatchesReaped: Counter<"outcome">;
  dispatches: Counter<"op" | "event">;
  dispatchLatency: Histogram<"op" | "outcome">;
  drainDuration: Histogram;
  dispatchesPendingTooLong: Gauge;
  dispatchRoutes: Counter<"route">;
}

export function createMetrics(options: { defaultMetrics?: boolean } = {}): Metrics {
  const { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } = promClient();
  const registry = new Registry();
  if (options.defaultMetrics !== false)
    collectDefaultMetrics({ register: registry, prefix: METRIC_PREFIX });
  return {
    registry,
    rpcRequests: new Counter({
      name: `${METRIC_PREFIX}rpc_requests_total`,
      help: "RPCs handled, by service, method and Connect code.",
      labelNames: ["service", "method", "code"],
      registers: [registry],
    }),
    rpcDuration: new Histogram({
      name: `${METRIC_PREFIX}rpc_duration_seconds`,
      help: "RPC handling time.",
      labelNames: ["service", "method"],
      // From 1 ms (a cached who-am-I) to 10 s (the longest synchronous call we allow).
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
      registers: [registry],
    }),
    dbListenerReconnects: new Counter({
      name: `${METRIC_PREFIX}db_listener_reconnects_total`,
      help: "LISTEN connections lost and reopened.",
      registers: [registry],
    }),
    dispatchesReaped: new Counter({
      name: `${METRIC_PREFIX}dispatches_reaped_total`,
      help: "In-progress dispatches past their deadline: returned to pending, or failed at the attempt limit.",
      labelNames: ["outcome"],
      registers: [registry],
    }),
    dispatches: new Counter({
      name: `${METRIC_PREFIX}dispatches_total`,
      help: "Dispatches by op and event: written (in a transaction that may still roll back), claimed, done, failed.",
      labelNames: ["op", "event"],
      registers: [registry],
    }),
    dispatchLatency: new Histogram({
      name: `${METRIC_PREFIX}dispatch_intent_to_done_seconds`,
      help: "From the intent's row to the agent's result.",
      labelNames: ["op", "outcome"],
      // From a local job (~10 ms) to a deploy waiting out a slow health check (minutes).
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers: [registry],
    }),
    drainDuration: new Histogram({
      name: `${METRIC_PREFIX}dispatch_drain_seconds`,
      help: "One drain of a server's pending dispatches by the replica holding its agent.",
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
      registers: [registry],
    }),
    dispatchesPendingTooLong: new Gauge({
      name: `${METRIC_PREFIX}dispatches_pending_too_long`,
      help: "Dispatches pending for more than 60 s (an agent away, or nothing delivering), at the last sweep.",
      registers: [registry],
    }),
    dispatchRoutes: new Counter({
      name: `${METRIC_PREFIX}dispatch_routes_total`,
      help: "Dispatches routed by the replica that took the intent: local, forward, direct, undeliverable.",
      labelNames: ["route"],
      registers: [registry],
    }),
    dbPoolConnections: new Gauge({
      name: `${METRIC_PREFIX}db_pool_connections`,
      help: "Database pool connections by state (total, idle, waiting).",
      labelNames: ["state"],
      registers: [registry],
    }),
  };
}
