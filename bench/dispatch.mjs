// Dispatch benchmark: three hub replicas and three agents on one PostgreSQL. Intent-to-done for
// the local fast path and the cross-replica path, throughput with 3 replicas, recovery after the
// owning replica is SIGKILLed; and, side by side on the same PostgreSQL, the same number of
// trivial jobs through graphile-worker (three runner processes) as the reference.
// Prints one JSON line of figures on stdout; progress goes to stderr.
import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { runMigrations } from "graphile-worker";
import pg from "pg";
import {
  CLI,
  connectJson,
  createDatabase,
  freePorts,
  progress,
  ROOT,
  requireBuild,
  round,
  runCleanups,
  settings,
  sleep,
  startNode,
  tempDir,
  waitReady,
} from "./lib/common.mjs";

requireBuild();
const cfg = settings();
const count = (name, fallback) => {
  const v = Number(process.env[name] || fallback);
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name} must be a positive integer`);
  return v;
};
const LATENCY_OPS = count("BENCH_DISPATCH_LATENCY_OPS", 200);
const THROUGHPUT_JOBS = count("BENCH_DISPATCH_JOBS", 3000);
const SERVICES_PER_AGENT = count("BENCH_DISPATCH_SERVICES", 16);
const GRAPHILE_CONCURRENCY = count("BENCH_GRAPHILE_CONCURRENCY", 16);
const REPLICAS = 3;
const ADMIN_EMAIL = "bench@example.com";
const ADMIN_PASSWORD = `bench-${randomBytes(8).toString("hex")}`;
const LOG_LEVEL = process.env.BENCH_LOG_LEVEL || "warn";
const TARGETS = {
  crossP50MaxMs: 10,
  crossP99MaxMs: 50,
  throughputMinRatioToGraphile: 0.5,
  recoveryMaxMs: 2000,
};

/** Nearest-rank percentile of a list of numbers. */
function pct(values, p) {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))];
}
const latencySummary = (values) =>
  values.length === 0
    ? null
    : {
        count: values.length,
        p50Ms: round(pct(values, 0.5), 2),
        p90Ms: round(pct(values, 0.9), 2),
        p99Ms: round(pct(values, 0.99), 2),
        maxMs: round(Math.max(...values), 2),
        meanMs: round(values.reduce((s, v) => s + v, 0) / values.length, 2),
      };

function client(base, token) {
  return async (path, body) => {
    const res = await connectJson(`${base}/flotilla.v1.${path}`, body, {
      authorization: `Bearer ${token}`,
    });
    if (res.status !== 200)
      throw new Error(`${path} on ${base} answered ${res.status}: ${JSON.stringify(res.body)}`);
    return res.body;
  };
}

async function startHub(i, db, secrets, logDir) {
  const [port, grpcPort] = await freePorts(2);
  const proc = startNode(
    `hub-${i}`,
    [CLI, "hub", "--host", "127.0.0.1", "--port", String(port), "--grpc-port", String(grpcPort)],
    {
      logDir,
      env: {
        FLOTILLA_DATABASE_URL: db.url,
        FLOTILLA_SESSION_SECRET: secrets.session,
        FLOTILLA_MASTER_KEY: secrets.master,
        FLOTILLA_ADMIN_EMAIL: ADMIN_EMAIL,
        FLOTILLA_ADMIN_PASSWORD: ADMIN_PASSWORD,
        FLOTILLA_LOG_LEVEL: LOG_LEVEL,
        FLOTILLA_SWEEP_INTERVAL_MS: "1000",
      },
    },
  );
  const base = `http://127.0.0.1:${port}`;
  await waitReady(proc, base, 120_000);
  return { proc, base };
}

async function startAgent(i, hubs, rpc, logDir, dataDir) {
  const { token } = await rpc("ServerService/CreateJoinToken", { name: `bench-${i}` });
  // Agent i dials replica i first, the others in turn when it loses it.
  const order = hubs.map((_, k) => hubs[(i + k) % hubs.length].base).join(",");
  const proc = startNode(
    `agent-${i}`,
    [
      CLI,
      "agent",
      "--hub",
      order,
      "--join-token",
      token,
      "--data-dir",
      dataDir,
      "--admin-port",
      "0",
    ],
    { logDir, env: { FLOTILLA_LOG_LEVEL: LOG_LEVEL } },
  );
  const deadline = Date.now() + 60_000;
  for (;;) {
    const { servers = [] } = await rpc("ServerService/ListServers", {});
    const server = servers.find((s) => s.name === `bench-${i}`);
    if (server?.status === "online") return { proc, serverId: server.id, dataDir };
    if (proc.exitStatus() || Date.now() > deadline)
      throw new Error(`agent ${i} did not come online:\n${proc.tail()}`);
    await sleep(50);
  }
}

/** Polls until `sql` counts 0; returns Date.now() at that moment. */
async function untilZero(pool, sql, params, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { rows } = await pool.query(sql, params);
    if (rows[0].n === 0) return Date.now();
    if (Date.now() > deadline) throw new Error(`${rows[0].n} left after ${timeoutMs} ms: ${sql}`);
    await sleep(5);
  }
}

/** Intent-to-done of one dispatch, from its row (one clock: the database's). */
async function rowLatencyMs(pool, id) {
  const { rows } = await pool.query(
    "SELECT state, extract(epoch FROM (updated_at - created_at)) * 1000 AS ms FROM dispatches WHERE id = $1",
    [id],
  );
  if (rows[0]?.state !== "done") throw new Error(`dispatch ${id} ended ${rows[0]?.state}`);
  return Number(rows[0].ms);
}

async function main(out) {
  const logDir = tempDir("flotilla-bench-dispatch-", { keep: cfg.keepLogs });
  out.loadAvg1Before = round(loadavg()[0], 2);
  const db = await createDatabase(cfg.pgAdminUrl, "flotilla_bench_dispatch");
  const pool = new pg.Pool({ connectionString: db.url, max: 4 });
  const secrets = {
    session: randomBytes(48).toString("base64url"),
    master: randomBytes(32).toString("base64"),
  };
  progress(`starting ${REPLICAS} hub replicas`);
  const hubs = [];
  for (let i = 0; i < REPLICAS; i++) hubs.push(await startHub(i, db, secrets, logDir));
  const login = await connectJson(`${hubs[0].base}/flotilla.v1.IdentityService/Login`, {
    email: ADMIN_EMAIL,
    password: ADMIN_PASSWORD,
  });
  if (login.status !== 200) throw new Error(`Login answered ${login.status}`);
  const rpcs = hubs.map((h) => client(h.base, login.body.sessionToken));
  const { production } = await rpcs[0]("ProjectService/CreateProject", { name: "Bench" });
  progress(`starting ${REPLICAS} agents, ${SERVICES_PER_AGENT} services each`);
  const agents = [];
  for (let i = 0; i < REPLICAS; i++) {
    const agent = await startAgent(i, hubs, rpcs[0], logDir, join(logDir, `agent-${i}-data`));
    agent.services = [];
    for (let s = 0; s < SERVICES_PER_AGENT; s++) {
      const { service } = await rpcs[0]("ServicesService/CreateService", {
        environmentId: production.id,
        name: `noop-${i}-${s}`,
        visibility: "VISIBILITY_PRIVATE",
        serverId: agent.serverId,
        spec: { driver: "DRIVER_EXEC", exec: { command: "true" } },
      });
      agent.services.push(service.id);
    }
    agents.push(agent);
  }

  // 1. Intent-to-done, one at a time: a Stop of a service that is not running (the agent's
  //    no-op) asked of the replica holding the agent (local) and of another one (cross-replica),
  //    interleaved. Each call waits on the hub (wait_seconds) for the outcome.
  progress(`latency: ${LATENCY_OPS} local and ${LATENCY_OPS} cross-replica stops, interleaved`);
  const lat = { local: [], cross: [], localRpc: [], crossRpc: [] };
  for (let n = 0; n < LATENCY_OPS * 2; n++) {
    const cross = n % 2 === 1;
    const serviceId = agents[0].services[n % SERVICES_PER_AGENT];
    const t0 = performance.now();
    const r = await rpcs[cross ? 1 : 0]("ServicesService/StopService", {
      serviceId,
      waitSeconds: 30,
    });
    const rpcMs = performance.now() - t0;
    const ms = await rowLatencyMs(pool, r.dispatch.id);
    if (n < 10) continue; // warm-up: first connections, JIT
    lat[cross ? "cross" : "local"].push(ms);
    lat[cross ? "crossRpc" : "localRpc"].push(rpcMs);
  }
  out.latency = {
    op: "stop of a service that is not running (the agent's no-op), one at a time",
    local: { intentToDone: latencySummary(lat.local), rpcWithWait: latencySummary(lat.localRpc) },
    crossReplica: {
      intentToDone: latencySummary(lat.cross),
      rpcWithWait: latencySummary(lat.crossRpc),
    },
  };

  // 2. Throughput with 3 replicas: THROUGHPUT_JOBS intents committed in one transaction (as the
  //    reference adds its jobs), spread over every service of every agent; each replica delivers
  //    to the agent it holds. From the commit until none is left pending or in progress.
  progress(`throughput: ${THROUGHPUT_JOBS} intents over ${REPLICAS} replicas`);
  const { rows: org } = await pool.query("SELECT organization_id FROM servers LIMIT 1");
  const targets = agents.flatMap((a) => a.services.map((s) => [a.serverId, s]));
  const conn = await pool.connect();
  let committedAt;
  try {
    await conn.query("BEGIN");
    await conn.query(
      `INSERT INTO dispatches (id, organization_id, server_id, service_id, op, args, correlation_id, traceparent)
       SELECT ($1::uuid[])[i], $2, ($3::uuid[])[1 + (i - 1) % $5], ($4::uuid[])[1 + (i - 1) % $5], 'stop', '{}',
              'bench-throughput', '00-' || md5(i::text) || '-' || substr(md5(i::text), 1, 16) || '-01'
       FROM generate_series(1, $6) AS i`,
      [
        Array.from({ length: THROUGHPUT_JOBS }, () => randomUUID()),
        org[0].organization_id,
        targets.map((t) => t[0]),
        targets.map((t) => t[1]),
        targets.length,
        THROUGHPUT_JOBS,
      ],
    );
    for (const a of agents)
      await conn.query("SELECT pg_notify('flotilla_dispatch', $1)", [a.serverId]);
    await conn.query("COMMIT");
    committedAt = Date.now();
  } finally {
    conn.release();
  }
  const doneAt = await untilZero(
    pool,
    "SELECT count(*)::int AS n FROM dispatches WHERE correlation_id = 'bench-throughput' AND state IN ('pending', 'in_progress')",
    [],
    300_000,
  );
  const { rows: outcome } = await pool.query(
    "SELECT state, count(*)::int AS n FROM dispatches WHERE correlation_id = 'bench-throughput' GROUP BY state",
  );
  const flotillaSeconds = (doneAt - committedAt) / 1000;
  out.throughput = {
    flotilla: {
      jobs: THROUGHPUT_JOBS,
      replicas: REPLICAS,
      agents: REPLICAS,
      services: targets.length,
      seconds: round(flotillaSeconds, 3),
      jobsPerSecond: round(THROUGHPUT_JOBS / flotillaSeconds, 0),
      states: Object.fromEntries(outcome.map((r) => [r.state, r.n])),
    },
  };

  // 3. The reference: graphile-worker on the same PostgreSQL (its own schema), three runner
  //    processes, the same number of no-op jobs added in one transaction.
  progress(`graphile-worker: ${THROUGHPUT_JOBS} no-op jobs over ${REPLICAS} runners`);
  await runMigrations({ connectionString: db.url });
  const runners = [];
  for (let i = 0; i < REPLICAS; i++) {
    const proc = startNode(
      `graphile-${i}`,
      [join(ROOT, "bench", "lib", "graphile-runner.mjs"), db.url, String(GRAPHILE_CONCURRENCY)],
      { logDir },
    );
    runners.push(proc);
  }
  for (const r of runners) {
    const deadline = Date.now() + 30_000;
    while (!readFileSync(r.logFile, "utf8").includes("ready")) {
      if (r.exitStatus() || Date.now() > deadline) throw new Error(`graphile runner:\n${r.tail()}`);
      await sleep(50);
    }
  }
  await pool.query(
    "SELECT graphile_worker.add_job('noop', json_build_object('i', i)) FROM generate_series(1, $1) AS i",
    [THROUGHPUT_JOBS],
  );
  const gCommitted = Date.now();
  const gDone = await untilZero(
    pool,
    "SELECT count(*)::int AS n FROM graphile_worker._private_jobs",
    [],
    300_000,
  );
  const graphileSeconds = (gDone - gCommitted) / 1000;
  await Promise.all(runners.map((r) => r.stop()));
  out.throughput.graphileWorker = {
    version: JSON.parse(
      readFileSync(join(ROOT, "node_modules", "graphile-worker", "package.json"), "utf8"),
    ).version,
    jobs: THROUGHPUT_JOBS,
    runners: REPLICAS,
    concurrencyPerRunner: GRAPHILE_CONCURRENCY,
    seconds: round(graphileSeconds, 3),
    jobsPerSecond: round(THROUGHPUT_JOBS / graphileSeconds, 0),
  };
  out.throughput.ratioToGraphile = round(graphileSeconds / flotillaSeconds, 3);

  // 4. Recovery: intents for agent 0 keep coming through replica 1 while replica 0, which holds
  //    agent 0, is SIGKILLed. Recovery: from the kill to the first of agent 0's dispatches done
  //    after it. Every intent must end done, and none twice (agent 0's ledger).
  progress("recovery: SIGKILL of the replica holding agent 0");
  let stopStream = false;
  let sent = 0;
  const stream = (async () => {
    while (!stopStream) {
      await rpcs[1]("ServicesService/StopService", {
        serviceId: agents[0].services[sent % SERVICES_PER_AGENT],
      }).catch(() => {});
      sent++;
      await sleep(10);
    }
  })();
  const deadInstance = (await (await fetch(`${hubs[0].base}/health`)).json()).instance;
  await sleep(1000);
  const killedAt = Date.now();
  // No goodbye: the agent's socket just drops, the row still names the dead replica.
  process.kill(hubs[0].proc.pid, "SIGKILL");
  await sleep(4000);
  stopStream = true;
  await stream;
  await untilZero(
    pool,
    "SELECT count(*)::int AS n FROM dispatches WHERE server_id = $1 AND state IN ('pending', 'in_progress')",
    [agents[0].serverId],
    120_000,
  );
  // Resumed: the first of agent 0's dispatches done through another replica after the kill
  // (one the dead replica's last statements finished does not count).
  const { rows: firstAfter } = await pool.query(
    `SELECT extract(epoch FROM min(updated_at)) * 1000 AS at FROM dispatches
     WHERE server_id = $1 AND state = 'done' AND updated_at > to_timestamp($2 / 1000.0)
       AND claimed_by <> $3`,
    [agents[0].serverId, killedAt, deadInstance],
  );
  const { rows: reconnected } = await pool.query(
    "SELECT extract(epoch FROM connected_at) * 1000 AS at, connected_hub_id FROM servers WHERE id = $1",
    [agents[0].serverId],
  );
  const { rows: notDone } = await pool.query(
    "SELECT count(*)::int AS n FROM dispatches WHERE server_id = $1 AND state <> 'done'",
    [agents[0].serverId],
  );
  const starts = new Map();
  for (const line of readFileSync(join(agents[0].dataDir, "dispatches.jsonl"), "utf8").split(
    "\n",
  )) {
    if (!line) continue;
    const e = JSON.parse(line);
    if (e.started) starts.set(e.id, (starts.get(e.id) ?? 0) + 1);
  }
  out.recovery = {
    intentsSentDuringRun: sent,
    recoveryMs: firstAfter[0].at === null ? null : round(Number(firstAfter[0].at) - killedAt, 0),
    agentReconnectedMs: round(Number(reconnected[0].at) - killedAt, 0),
    agentNowOnAnotherReplica: reconnected[0].connected_hub_id !== deadInstance,
    notDone: notDone[0].n,
    ranTwice: [...starts.values()].filter((n) => n > 1).length,
  };

  const x = out.latency.crossReplica.intentToDone;
  out.meetsTargets = {
    crossP50: x ? x.p50Ms < TARGETS.crossP50MaxMs : null,
    crossP99: x ? x.p99Ms < TARGETS.crossP99MaxMs : null,
    throughputHalfOfGraphile:
      out.throughput.ratioToGraphile >= TARGETS.throughputMinRatioToGraphile,
    recovery:
      out.recovery.recoveryMs === null ? null : out.recovery.recoveryMs < TARGETS.recoveryMaxMs,
  };
  out.loadAvg1After = round(loadavg()[0], 2);
  await pool.end();
}

const out = {
  bench: "dispatch",
  at: null,
  node: process.version,
  cpus: (await import("node:os")).availableParallelism(),
  hubLogLevel: LOG_LEVEL,
  targets: TARGETS,
};
let failed = false;
try {
  await main(out);
} catch (err) {
  failed = true;
  out.error = err?.stack ?? String(err);
  progress(`failed: ${out.error}`);
} finally {
  await runCleanups();
  out.at = new Date().toISOString();
  process.stdout.write(`${JSON.stringify(out)}\n`);
  process.exit(failed ? 1 : 0);
}
