// WhoAmI throughput, latency and memory: a hub on PostgreSQL, `flotilla up` on the embedded store,
// and a bare Fastify server as the reference peer, in one run. Prints one JSON line on stdout.
//
// The machine is small and shared, so the three targets are measured interleaved: all three run
// side by side (idle ones cost nothing), and the load visits them in turn, several short slices
// each, rotating the order. Drift in what else the machine is doing then hits all three alike,
// and the ratios to the bare peer are what to compare between runs.
import { randomBytes } from "node:crypto";
import { availableParallelism, loadavg } from "node:os";
import { join } from "node:path";
import pg from "pg";
import {
  CLI,
  connectJson,
  cpuSeconds,
  createDatabase,
  freePorts,
  loadSlice,
  procStatusMb,
  progress,
  ROOT,
  requireBuild,
  round,
  runCleanups,
  settings,
  sleep,
  startNode,
  summarize,
  tempDir,
  waitReady,
} from "./lib/common.mjs";
import { constantRate } from "./lib/constant-rate.mjs";

const ROUTE = "/flotilla.v1.IdentityService/WhoAmI";
const ADMIN_EMAIL = "bench@example.com";
const ADMIN_PASSWORD = "bench-password-0123456789";

/** The targets, reported beside the figures (never asserted). */
const TARGETS = {
  pgHubMinRps: 3000,
  pgHubMaxP99Ms: 20,
  embeddedMinRps: 1000,
  pgHubMaxIdleRssMb: 120,
  upMaxIdleRssMb: 400,
};

/** The shape of the hub's WhoAmI answer, for the reference peer to send as a constant. */
const REFERENCE_BODY = JSON.stringify({
  user: {
    id: "01a2050d-f341-701b-9e2f-d61fd46c4049",
    email: ADMIN_EMAIL,
    createdAt: "2026-11-22T00:00:00.000Z",
  },
  organization: {
    id: "01a2050d-f343-7f52-ad38-8f31664702bb",
    slug: "default",
    name: "Default",
    createdAt: "2026-11-22T00:00:00.000Z",
  },
  role: "ROLE_OWNER",
  capabilities: [
    "audit.read",
    "config.reveal",
    "members.grant_owner",
    "members.manage",
    "members.read",
    "org.read",
    "org.update",
    "tokens.self",
  ],
  authMethod: "AUTH_METHOD_SESSION",
});

const cfg = settings();

async function login(base) {
  const res = await connectJson(`${base}/flotilla.v1.IdentityService/Login`, {
    email: ADMIN_EMAIL,
    password: ADMIN_PASSWORD,
  });
  if (res.status !== 200 || typeof res.body.sessionToken !== "string") {
    throw new Error(`Login answered ${res.status}: ${JSON.stringify(res.body)}`);
  }
  return { authorization: `Bearer ${res.body.sessionToken}` };
}

async function startBare(logDir) {
  const [port] = await freePorts(1);
  const script = join(ROOT, "bench", "lib", "bare-fastify.mjs");
  const proc = startNode("bare-fastify", [script, String(port), REFERENCE_BODY], { logDir });
  const base = `http://127.0.0.1:${port}`;
  await waitReady(proc, base);
  return { proc, base };
}

async function startFlotilla(command, logDir, env, extraArgs = []) {
  const [port, grpcPort] = await freePorts(2);
  const args = [
    CLI,
    command,
    "--host",
    "127.0.0.1",
    "--port",
    String(port),
    "--grpc-port",
    String(grpcPort),
    "--log-level",
    cfg.logLevel,
    ...extraArgs,
  ];
  const proc = startNode(`flotilla-${command}`, args, {
    logDir,
    env: { FLOTILLA_ADMIN_EMAIL: ADMIN_EMAIL, FLOTILLA_ADMIN_PASSWORD: ADMIN_PASSWORD, ...env },
  });
  const base = `http://127.0.0.1:${port}`;
  await waitReady(proc, base, 120_000);
  return { proc, base };
}

/**
 * Starts one target, lets it settle idle, reads its RSS, gets its credentials and checks one
 * WhoAmI answers 200. A failure is recorded on the target instead of sinking the run.
 */
async function prepare(target, start, authorize) {
  try {
    const t0 = Date.now();
    const { proc, base, readyMs } = await start();
    target.proc = proc;
    target.url = `${base}${ROUTE}`;
    target.figures.readyMs = readyMs ?? Date.now() - t0;
    progress(`${target.label}: ready in ${target.figures.readyMs} ms (pid ${proc.pid})`);
    await sleep(cfg.idleMs);
    target.figures.idleRssMb = procStatusMb(proc.pid, "VmRSS");
    target.headers = { "content-type": "application/json", ...(await authorize(base)) };
    const probe = await connectJson(target.url, {}, target.headers);
    if (probe.status !== 200) {
      throw new Error(`WhoAmI probe answered ${probe.status}: ${JSON.stringify(probe.body)}`);
    }
    target.figures.responseBytes = probe.bytes;
    progress(`${target.label}: idle RSS ${target.figures.idleRssMb} MB`);
  } catch (err) {
    fail(target, err);
  }
}

function fail(target, err) {
  progress(`${target.label} FAILED: ${err?.stack ?? err}`);
  target.error = String(err?.message ?? err).split("\n")[0];
}

const live = (targets) => targets.filter((t) => !t.error);

async function slice(target, durationS) {
  const raw = await loadSlice({
    url: target.url,
    headers: target.headers,
    body: "{}",
    connections: cfg.connections,
    durationS,
  });
  const exit = target.proc.exitStatus();
  if (exit) {
    throw new Error(`exited during the load (${JSON.stringify(exit)}):\n${target.proc.tail()}`);
  }
  return raw;
}

async function main() {
  requireBuild();
  const loadAvgBefore = round(loadavg()[0]);
  const logDir = tempDir("flotilla-bench-logs-", { keep: cfg.keepLogs });
  const rounds = Math.max(1, Math.min(cfg.rounds, Math.floor(cfg.durationS)));
  const sliceS = cfg.durationS / rounds;
  progress(
    `whoami: ${cfg.durationS} s per target in ${rounds} interleaved slices of ${round(sliceS, 2)} s ` +
      `(+${cfg.warmupS} s warm-up), ${cfg.connections} connections, hub log level ${cfg.logLevel}; ` +
      `logs in ${logDir}`,
  );

  const make = (key, label) => ({ key, label, figures: {}, slices: [] });
  const bare = make("bareFastify", "bare fastify");
  const pgHub = make("pgHub", "hub on PostgreSQL");
  const embedded = make("embedded", "flotilla up (embedded)");
  const targets = [bare, pgHub, embedded];

  await prepare(
    bare,
    () => startBare(logDir),
    async () => ({}),
  );

  await prepare(
    pgHub,
    async () => {
      const db = await createDatabase(cfg.pgAdminUrl);
      pgHub.database = db.name;
      progress(`created database ${db.name}`);
      return startFlotilla("hub", logDir, {
        FLOTILLA_DATABASE_URL: db.url,
        FLOTILLA_SESSION_SECRET: randomBytes(48).toString("base64url"),
        // Replicas share a master key that seals config secrets (required on PostgreSQL).
        FLOTILLA_MASTER_KEY: randomBytes(32).toString("base64"),
      });
    },
    login,
  );

  // `up` keeps its generated master key beside the data directory (<dir>.master-key), so the data
  // directory is a child of the temp dir and the key file goes with it.
  const dataDir = join(tempDir("flotilla-bench-up-"), "data");
  const startUp = () => startFlotilla("up", logDir, {}, ["--data-dir", dataDir]);
  await prepare(
    embedded,
    async () => {
      // The first start on an empty directory runs initdb and every migration inside PGlite; a
      // user pays that once. Record it, then measure a restart on the same data, which is what
      // `flotilla up` looks like every day after.
      const t0 = Date.now();
      const first = await startUp();
      const firstStart = { readyMs: Date.now() - t0 };
      try {
        await sleep(cfg.idleMs);
        firstStart.idleRssMb = procStatusMb(first.proc.pid, "VmRSS");
        firstStart.peakRssMb = procStatusMb(first.proc.pid, "VmHWM");
      } finally {
        await first.proc.stop();
      }
      embedded.figures.firstStart = firstStart;
      progress(
        `${embedded.label}: first start (initdb + migrations) ready in ${firstStart.readyMs} ms, ` +
          `idle RSS ${firstStart.idleRssMb} MB, peak ${firstStart.peakRssMb} MB; restarting on the same data`,
      );
      const t1 = Date.now();
      const restarted = await startUp();
      return { ...restarted, readyMs: Date.now() - t1 };
    },
    login,
  );

  if (cfg.warmupS > 0) {
    for (const target of live(targets)) {
      progress(`${target.label}: warm-up ${cfg.warmupS} s`);
      try {
        await slice(target, cfg.warmupS);
      } catch (err) {
        fail(target, err);
      }
    }
  }

  // Where the CPU went while each target was measured: the server process, PostgreSQL's backends
  // for the hub's database, and autocannon in this process. The backends are read again before
  // each of the hub's slices: its pool replaces connections (idle timeout, lifetime).
  let postgresPids = [];
  const cpuNow = (target) => ({
    serverS: cpuSeconds(target.proc.pid) ?? 0,
    postgresS:
      target === pgHub ? postgresPids.reduce((sum, pid) => sum + (cpuSeconds(pid) ?? 0), 0) : 0,
    loadGeneratorS: (() => {
      const u = process.cpuUsage();
      return (u.user + u.system) / 1e6;
    })(),
    wallS: performance.now() / 1000,
  });
  for (const target of targets)
    target.cpu = { serverS: 0, postgresS: 0, loadGeneratorS: 0, wallS: 0 };

  for (let r = 0; r < rounds; r++) {
    // Rotate the order so no target always runs first (or right after the heaviest one).
    const order = targets.map((_, i) => targets[(i + r) % targets.length]);
    for (const target of live(order)) {
      try {
        if (target === pgHub) postgresPids = await backendPids(pgHub.database);
        const before = cpuNow(target);
        const raw = await slice(target, sliceS);
        const after = cpuNow(target);
        for (const k of Object.keys(before)) target.cpu[k] += after[k] - before[k];
        target.slices.push(raw);
        progress(
          `round ${r + 1}/${rounds} ${target.label}: ${round(raw.totalCompletedRequests / raw.duration, 0)} req/s`,
        );
      } catch (err) {
        fail(target, err);
      }
    }
  }

  // The target read as a user sees it: the hub on PostgreSQL offered 3,000 requests a
  // second on a steady schedule (not as many as it can take, where latency is only queueing: 64
  // connections over N req/s wait 64/N s on average), what it achieved, and the latency at that
  // load counted from when each request was due. The bare peer gets the same load: its latency
  // is the floor this load generator and machine put under any server's.
  for (const target of live([pgHub, bare])) {
    try {
      const atRate = await constantRate({
        url: target.url,
        headers: target.headers,
        body: "{}",
        connections: cfg.connections,
        durationS: cfg.durationS,
        warmupS: cfg.warmupS,
        ratePerS: TARGETS.pgHubMinRps,
      });
      target.figures.atTargetRate = atRate;
      progress(
        `${target.label} offered ${TARGETS.pgHubMinRps} req/s: ${atRate.rps} req/s, p50 ${atRate.p50Ms} ms, p90 ${atRate.p90Ms} ms, p99 ${atRate.p99Ms} ms`,
      );
    } catch (err) {
      fail(target, err);
    }
  }

  await sleep(cfg.idleMs);
  for (const target of targets) {
    if (!target.proc || target.proc.exitStatus()) continue;
    target.figures.afterLoadRssMb = procStatusMb(target.proc.pid, "VmRSS");
    target.figures.peakRssMb = procStatusMb(target.proc.pid, "VmHWM");
  }
  await Promise.all(targets.filter((t) => t.proc).map((t) => t.proc.stop()));

  const out = {};
  for (const target of targets) {
    const load =
      target.slices.length > 0
        ? summarize(target.slices, { url: target.url, connections: cfg.connections })
        : {};
    const c = target.cpu;
    const pct = (seconds) => round((100 * seconds) / c.wallS, 0);
    const usPer = (seconds) => (load.requests ? round((1e6 * seconds) / load.requests, 1) : null);
    out[target.key] = {
      ...(target.error ? { error: target.error } : {}),
      ...load,
      ...(c?.wallS
        ? {
            cpu: {
              serverPct: pct(c.serverS),
              ...(target === pgHub ? { postgresPct: pct(c.postgresS) } : {}),
              loadGeneratorPct: pct(c.loadGeneratorS),
              serverUsPerRequest: usPer(c.serverS),
              ...(target === pgHub ? { postgresUsPerRequest: usPer(c.postgresS) } : {}),
            },
          }
        : {}),
      ...target.figures,
    };
    if (!target.error) {
      progress(
        `${target.label}: ${load.rps} req/s, p50 ${load.p50Ms} ms, p99 ${load.p99Ms} ms, ` +
          `non-2xx ${load.non2xx}, errors ${load.errors}; RSS idle ${target.figures.idleRssMb} MB, ` +
          `after load ${target.figures.afterLoadRssMb} MB, peak ${target.figures.peakRssMb} MB`,
      );
    }
  }
  for (const target of [pgHub, embedded]) {
    const o = out[target.key];
    o.rpsRatioToBare = ratio(o.rps, out.bareFastify.rps);
    // Per round: this target's slice over the bare peer's slice of the same round.
    o.rpsRatioToBareByRound =
      target.slices.length === bare.slices.length
        ? target.slices.map((s, i) =>
            ratio(
              s.totalCompletedRequests / s.duration,
              bare.slices[i].totalCompletedRequests / bare.slices[i].duration,
            ),
          )
        : null;
  }

  const figures = {
    bench: "whoami",
    at: new Date().toISOString(),
    node: process.version,
    cpus: availableParallelism(),
    rpc: `POST ${ROUTE}`,
    auth: "session token (Bearer)",
    connections: cfg.connections,
    durationS: cfg.durationS,
    rounds,
    warmupS: cfg.warmupS,
    hubLogLevel: cfg.logLevel,
    hubDbPoolMax: 20,
    // Other work on the machine skews every figure; ratios to the bare peer skew least.
    loadAvg1Before: loadAvgBefore,
    loadAvg1After: round(loadavg()[0]),
    targets: TARGETS,
    ...out,
    meetsTargets: {
      pgHubRps: atLeast(out.pgHub.rps, TARGETS.pgHubMinRps),
      // "Sustains 3,000 req/s with p99 under 20 ms": the latency while carrying that load. Flat
      // out, 64 connections wait 64/N s on average whatever the server, so that p99 is reported
      // (pgHub.p99Ms) but is not the target's.
      // Every request answered 2xx: latencies are of 2xx answers, so failures must not hide.
      pgHubP99AtTargetRate: out.pgHub.atTargetRate
        ? out.pgHub.atTargetRate.rps >= 0.98 * TARGETS.pgHubMinRps &&
          out.pgHub.atTargetRate.errors + out.pgHub.atTargetRate.non2xx === 0 &&
          out.pgHub.atTargetRate.p99Ms < TARGETS.pgHubMaxP99Ms
        : null,
      embeddedRps: atLeast(out.embedded.rps, TARGETS.embeddedMinRps),
      pgHubIdleRss: below(out.pgHub.idleRssMb, TARGETS.pgHubMaxIdleRssMb),
      upIdleRss: below(out.embedded.idleRssMb, TARGETS.upMaxIdleRssMb),
    },
  };
  process.stdout.write(`${JSON.stringify(figures)}\n`);
  return targets.some((t) => t.error) ? 1 : 0;
}

/** The PostgreSQL backends connected to a database (the hub's pool). */
async function backendPids(database) {
  const client = new pg.Client({ connectionString: cfg.pgAdminUrl });
  await client.connect();
  try {
    const { rows } = await client.query(
      "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
      [database],
    );
    return rows.map((r) => r.pid);
  } finally {
    await client.end();
  }
}

const ratio = (a, b) =>
  typeof a === "number" && typeof b === "number" && b > 0 ? round(a / b, 3) : null;
const atLeast = (v, min) => (typeof v === "number" ? v >= min : null);
const below = (v, max) => (typeof v === "number" ? v < max : null);

let code = 1;
try {
  code = await main();
} catch (err) {
  progress(`whoami FAILED: ${err?.stack ?? err}`);
} finally {
  await runCleanups();
}
process.exit(code);
