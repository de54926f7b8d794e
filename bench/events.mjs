// Event backbone: the outbox relay's throughput (events/s from commit to the bus's ack) and the
// latency from commit to a consumer (p50/p99), for the `nats` adapter (JetStream, a durable pull
// consumer through the consumer helper) beside the `postgres` adapter (NOTIFY wake-ups, rows read
// back) in one run. The relay, buses and consumers run in this process, as in a hub, against the
// real PostgreSQL and NATS on loopback. Prints one JSON line on stdout.
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, headers as natsHeaders } from "@nats-io/transport-node";
import {
  createDatabase,
  envCount,
  onCleanup,
  progress,
  ROOT,
  requireBuild,
  round,
  runCleanups,
  settings,
  sleep,
} from "./lib/common.mjs";

requireBuild();
const dist = (p) => join(ROOT, "dist", "src", p);
const { migrate, openPostgres } = await import(dist("store/index.js"));
const { OutboxRelay, postgresBus } = await import(dist("hub/outbox/index.js"));
const { nextEventId } = await import(dist("hub/outbox/events.js"));
const { EventsService, NATS_RELAY_OPTIONS, NatsBackbone, natsBus } = await import(
  dist("hub/events/index.js")
);
const { createLogger } = await import(dist("shared/index.js"));

const TARGETS = { relayMinEventsPerS: 10_000, commitToConsumerMaxP99Ms: 50 };
const NATS_URL = process.env.BENCH_NATS_URL || "nats://127.0.0.1:4222";
/** Events committed up front for the throughput run. */
const BACKLOG = envCount("BENCH_EVENTS_BACKLOG", 20_000);
/** Events committed one per transaction at a steady rate for the latency run. */
const LATENCY_EVENTS = envCount("BENCH_EVENTS_LATENCY", 2_000);
const LATENCY_RATE = envCount("BENCH_EVENTS_RATE", 500);
const ROUNDS = envCount("BENCH_EVENTS_ROUNDS", 3);

const cfg = settings();
const logger = createLogger({ level: "warn" });
const ORG = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

/** Commits `n` unpublished events in one statement (the backlog the relay drains). */
async function commitBacklog(db, n) {
  const ids = Array.from({ length: n }, () => nextEventId());
  for (let i = 0; i < ids.length; i += 5000) {
    await db.query(
      `INSERT INTO outbox_events (id, organization_id, type, subject_id, payload, correlation_id, traceparent)
       SELECT id, $2, 'project.renamed', 'bench', '{"name":"bench"}', 'bench', $3 FROM unnest($1::uuid[]) AS id`,
      [
        ids.slice(i, i + 5000),
        ORG,
        `00-${randomBytes(16).toString("hex")}-${randomBytes(8).toString("hex")}-01`,
      ],
    );
  }
}

const unpublished = async (db) =>
  Number(
    (await db.query("SELECT count(*)::int AS n FROM outbox_events WHERE published_at IS NULL"))
      .rows[0].n,
  );

/** Events/s from a committed backlog to every row marked published (after the bus acked it). */
async function relayThroughput(db, bus, relayOptions) {
  await commitBacklog(db, BACKLOG);
  const relay = new OutboxRelay(db, bus, logger, relayOptions);
  const t0 = performance.now();
  const n = await relay.drainAll();
  const seconds = (performance.now() - t0) / 1000;
  if ((await unpublished(db)) !== 0) throw new Error("relay left events unpublished");
  return n / seconds;
}

/**
 * Commits events one transaction each (with the outbox NOTIFY, as appendEvent does) at a steady
 * rate while the relay runs; the consumer stamps receipt. Latency: commit resolved -> consumer.
 */
async function commitToConsumer(db, bus, relayOptions, subscribe) {
  const committedAt = new Map();
  const receivedAt = new Map();
  let done;
  const all = new Promise((r) => {
    done = r;
  });
  const stop = await subscribe((id) => {
    if (receivedAt.has(id)) return;
    receivedAt.set(id, performance.now());
    if (receivedAt.size === LATENCY_EVENTS) done();
  });
  const relay = new OutboxRelay(db, bus, logger, relayOptions);
  await relay.start();
  const intervalMs = 1000 / LATENCY_RATE;
  const start = performance.now();
  for (let i = 0; i < LATENCY_EVENTS; i++) {
    const due = start + i * intervalMs;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    const id = nextEventId();
    await db.tx(async (tx) => {
      await tx.query(
        `INSERT INTO outbox_events (id, organization_id, type, subject_id, payload, correlation_id, traceparent)
         VALUES ($1, $2, 'project.renamed', 'bench', '{}', 'bench', $3)`,
        [id, ORG, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],
      );
      await tx.query("SELECT pg_notify('flotilla_outbox', '')");
    });
    // Stamped when COMMIT returned; a consumer can hear the event before this line runs, which
    // counts as 0 ms (reported as arrivedBeforeCommitReturned).
    committedAt.set(id, performance.now());
  }
  const timeout = sleep(60_000).then(() => "timeout");
  const outcome = await Promise.race([all.then(() => "ok"), timeout]);
  await relay.stop();
  await stop();
  if (outcome !== "ok")
    throw new Error(`only ${receivedAt.size} of ${LATENCY_EVENTS} events reached the consumer`);
  let early = 0;
  const sorted = [...committedAt].map(([id, at]) => {
    const ms = receivedAt.get(id) - at;
    if (ms < 0) early++;
    return Math.max(0, ms);
  });
  sorted.sort((a, b) => a - b);
  const q = (p) => sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)];
  return { p50: q(0.5), p99: q(0.99), max: sorted[sorted.length - 1], early };
}

async function freshDb() {
  const { url } = await createDatabase(cfg.pgAdminUrl, "flotilla_bench_events");
  // Small pool: the machine's PostgreSQL is shared (max_connections 100).
  const db = await openPostgres(url, { max: 4 });
  onCleanup(() => db.close());
  await migrate(db);
  return db;
}

async function natsTarget() {
  const db = await freshDb();
  const stream = `BENCH_${randomBytes(4).toString("hex")}`;
  const backbone = await NatsBackbone.open(
    { url: NATS_URL, stream, subjectRoot: stream.toLowerCase() },
    logger,
    "bench",
  );
  onCleanup(async () => {
    const nc = await connect({ servers: NATS_URL });
    await (await jetstreamManager(nc)).streams.delete(stream).catch(() => {});
    await nc.close();
  });
  onCleanup(() => backbone.close());
  const bus = natsBus(backbone, logger);
  // The relay settings the hub uses on NATS (BENCH_RELAY_BATCH / BENCH_RELAY_CONCURRENCY override).
  const relayOptions = {
    batchSize: envCount("BENCH_RELAY_BATCH", NATS_RELAY_OPTIONS.batchSize),
    concurrency: envCount("BENCH_RELAY_CONCURRENCY", NATS_RELAY_OPTIONS.concurrency),
  };
  const relay = await relayThroughput(db, bus, relayOptions);
  const events = new EventsService(db, { eventById: async () => undefined }, backbone, {
    logger,
    instanceId: "bench",
  });
  // Only events committed from now on count: the backlog leaves the stream (never done to a real
  // stream; this one is the benchmark's own) so the consumer starts level with the producer.
  await backbone.jsm.streams.purge(stream);
  let listener = () => {};
  // The backlog is already in the stream: the consumer starts after it (only new events count).
  const consumer = await events.addConsumer({
    name: "bench",
    handler: async (e) => listener(e.id),
  });
  const latency = await commitToConsumer(db, bus, relayOptions, async (fn) => {
    listener = fn;
    return async () => {};
  });
  await consumer.stop();
  return { relayEventsPerS: relay, latency };
}

/**
 * The peer the relay is held against: bare JetStream publishes of the same messages at the same
 * in-flight bound, with no database in the loop (the relay's ceiling on this machine, this run).
 */
async function rawPublishTarget() {
  const nc = await connect({ servers: NATS_URL });
  onCleanup(() => nc.close());
  const stream = `BENCH_RAW_${randomBytes(4).toString("hex")}`;
  const subject = stream.toLowerCase();
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({
    name: stream,
    subjects: [`${subject}.>`],
    max_bytes: 1024 ** 3,
    duplicate_window: 300e9,
  });
  onCleanup(() => jsm.streams.delete(stream).catch(() => {}));
  const js = jetstream(nc);
  const body = Buffer.from(
    JSON.stringify({
      id: nextEventId(),
      organizationId: ORG,
      type: "project.renamed",
      payload: { name: "bench" },
    }),
  );
  const inFlight = NATS_RELAY_OPTIONS.batchSize * NATS_RELAY_OPTIONS.concurrency;
  const t0 = performance.now();
  for (let i = 0; i < BACKLOG; i += inFlight) {
    const n = Math.min(inFlight, BACKLOG - i);
    await Promise.all(
      Array.from({ length: n }, (_, k) => {
        const h = natsHeaders();
        h.set("tenant-id", ORG);
        return js.publish(`${subject}.${ORG}.project.renamed.${i + k}`, body, {
          msgID: `${i + k}`,
          headers: h,
        });
      }),
    );
  }
  return { relayEventsPerS: BACKLOG / ((performance.now() - t0) / 1000) };
}

async function postgresTarget() {
  const db = await freshDb();
  const bus = await postgresBus(db);
  onCleanup(() => bus.close());
  // The hub's relay settings on the postgres bus: the defaults.
  const relay = await relayThroughput(db, bus, {});
  // The consumer listens on its own bus instance, as another replica would.
  const consumerBus = await postgresBus(db);
  onCleanup(() => consumerBus.close());
  const latency = await commitToConsumer(db, bus, {}, async (fn) => {
    const off = consumerBus.subscribe((e) => fn(e.id));
    return async () => off();
  });
  return { relayEventsPerS: relay, latency };
}

const result = {
  benchmark: "events",
  backlog: BACKLOG,
  latencyEvents: LATENCY_EVENTS,
  ratePerS: LATENCY_RATE,
  rounds: ROUNDS,
  targets: TARGETS,
};
let exitCode = 0;
try {
  const runs = { nats: [], postgres: [], natsRawPublish: [] };
  // Interleaved rounds: the machine's noise falls on both adapters alike.
  for (let r = 0; r < ROUNDS; r++) {
    for (const [name, fn] of [
      ["nats", natsTarget],
      ["natsRawPublish", rawPublishTarget],
      ["postgres", postgresTarget],
    ]) {
      progress(`round ${r + 1}/${ROUNDS}: ${name}`);
      try {
        runs[name].push(await fn());
      } catch (err) {
        runs[name].push({ error: String(err?.message ?? err) });
        exitCode = 1;
      }
      await runCleanups();
    }
  }
  const median = (xs) => {
    const s = xs.filter((x) => typeof x === "number").sort((a, b) => a - b);
    return s.length ? s[Math.floor((s.length - 1) / 2)] : null;
  };
  // Rounds that failed are left out of the medians and listed here.
  const failures = Object.entries(runs).flatMap(([name, list]) =>
    list.filter((x) => x.error).map((x) => `${name}: ${x.error}`),
  );
  if (failures.length > 0) result.failedRounds = failures;
  const raw = runs.natsRawPublish.filter((x) => !x.error);
  result.natsRawPublish = raw.length
    ? { eventsPerS: round(median(raw.map((x) => x.relayEventsPerS)), 0) }
    : { error: runs.natsRawPublish.map((x) => x.error).join("; ") };
  for (const name of ["nats", "postgres"]) {
    const ok = runs[name].filter((x) => !x.error);
    result[name] = ok.length
      ? {
          relayEventsPerS: round(median(ok.map((x) => x.relayEventsPerS)), 0),
          commitToConsumerP50Ms: round(median(ok.map((x) => x.latency.p50)), 2),
          commitToConsumerP99Ms: round(median(ok.map((x) => x.latency.p99)), 2),
          commitToConsumerMaxMs: round(Math.max(...ok.map((x) => x.latency.max)), 2),
          arrivedBeforeCommitReturned: ok.reduce((n, x) => n + x.latency.early, 0),
        }
      : { error: runs[name].map((x) => x.error).join("; ") };
  }
  if (result.nats.relayEventsPerS && result.postgres.relayEventsPerS) {
    result.ratios = {
      relayNatsOverRawPublish: result.natsRawPublish.eventsPerS
        ? round(result.nats.relayEventsPerS / result.natsRawPublish.eventsPerS, 2)
        : null,
      relayNatsOverPostgres: round(
        result.nats.relayEventsPerS / result.postgres.relayEventsPerS,
        2,
      ),
      p99NatsOverPostgres: round(
        result.nats.commitToConsumerP99Ms / result.postgres.commitToConsumerP99Ms,
        2,
      ),
    };
    result.meetsTargets = {
      relay: result.nats.relayEventsPerS >= TARGETS.relayMinEventsPerS,
      p99: result.nats.commitToConsumerP99Ms < TARGETS.commitToConsumerMaxP99Ms,
    };
  }
} finally {
  await runCleanups();
}
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(exitCode);
