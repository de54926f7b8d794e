// Managed PostgreSQL: a hub on PostgreSQL and an agent (separate processes) running the host's
// PostgreSQL binaries. Measures create-to-connectable (CreateDatabaseService sent -> `select 1`
// answers with the URI the API reports), beside the same bootstrap done by hand (initdb, the
// database, the server started, `select 1`); then backup and restore of a ~100 MB database through
// Flotilla beside pg_dump / pg_restore run by hand with the same flags on the same data, interleaved.
// Prints one JSON line on stdout.
import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { availableParallelism, loadavg } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { promisify } from "node:util";
import pg from "pg";
import {
  CLI,
  connectJson,
  createDatabase,
  distribution,
  envCount,
  freePorts,
  onCleanup,
  pidsMatching,
  progress,
  requireBuild,
  round,
  runCleanups,
  settings,
  sleep,
  startNode,
  tempDir,
  waitReady,
} from "./lib/common.mjs";

const execFileP = promisify(execFile);
const ADMIN_EMAIL = "bench@example.com";
const ADMIN_PASSWORD = "bench-password-0123456789";
/** Retry interval of the `select 1` connection (cheap: one TCP connect). */
const POLL_MS = 10;
/**
 * Poll interval of the API (GetService, GetBackup, GetJob). Each call costs the hub ~20 ms of CPU
 * here; polled every 10 ms, the hub would take half a core from the bootstrap it is timing on a
 * 2-core machine, which the hand-made peer does not pay. 50 ms quantizes by at most that much.
 */
const API_POLL_MS = 50;
const TIMEOUT_MS = 120_000;
const BIN = process.env.FLOTILLA_POSTGRES_BINDIR || "/usr/lib/postgresql/15/bin";

/** The targets, reported beside the figures (never asserted). */
const TARGETS = { createMaxMedianMs: 3000, backupMaxRatio: 1.5, restoreMaxRatio: 1.5 };

const cfg = settings();
const CREATES = envCount("BENCH_DB_CREATES", 10);
const ROUNDS = envCount("BENCH_DB_ROUNDS", 3);
const TARGET_MB = envCount("BENCH_DB_MB", 100);

function client(base, token) {
  return async (path, body) => {
    const res = await connectJson(`${base}/flotilla.v1.${path}`, body, {
      authorization: `Bearer ${token}`,
    });
    if (res.status !== 200)
      throw new Error(`${path} answered ${res.status}: ${JSON.stringify(res.body)}`);
    return res.body;
  };
}

/** `select 1` with a fresh connection, retried every POLL_MS until it answers. */
async function untilConnectable(uri, t0) {
  for (let attempts = 1; ; attempts++) {
    const c = new pg.Client({ connectionString: uri, connectionTimeoutMillis: 2000 });
    try {
      await c.connect();
      await c.query("select 1");
      return attempts;
    } catch (err) {
      if (performance.now() - t0 > TIMEOUT_MS) throw new Error(`${uri} not connectable: ${err}`);
    } finally {
      await c.end().catch(() => {});
    }
    await sleep(POLL_MS);
  }
}

async function startHub(logDir) {
  const db = await createDatabase(cfg.pgAdminUrl);
  const [port, grpcPort] = await freePorts(2);
  const proc = startNode(
    "flotilla-hub",
    [CLI, "hub", "--host", "127.0.0.1", "--port", String(port), "--grpc-port", String(grpcPort)],
    {
      logDir,
      env: {
        FLOTILLA_DATABASE_URL: db.url,
        FLOTILLA_SESSION_SECRET: randomBytes(48).toString("base64url"),
        FLOTILLA_MASTER_KEY: randomBytes(32).toString("base64"),
        FLOTILLA_ADMIN_EMAIL: ADMIN_EMAIL,
        FLOTILLA_ADMIN_PASSWORD: ADMIN_PASSWORD,
        FLOTILLA_LOG_LEVEL: cfg.logLevel,
      },
    },
  );
  const base = `http://127.0.0.1:${port}`;
  await waitReady(proc, base, 120_000);
  return { proc, base };
}

async function startAgent(base, rpc, logDir, dataDir) {
  const { token } = await rpc("ServerService/CreateJoinToken", { name: "bench" });
  const proc = startNode(
    "flotilla-agent",
    [
      CLI,
      "agent",
      "--hub",
      base,
      "--join-token",
      token,
      "--data-dir",
      dataDir,
      "--admin-port",
      "0",
    ],
    { logDir, env: { FLOTILLA_LOG_LEVEL: cfg.logLevel } },
  );
  const deadline = Date.now() + 60_000;
  for (;;) {
    const { servers = [] } = await rpc("ServerService/ListServers", {});
    if (servers.find((s) => s.name === "bench")?.status === "online") return proc;
    if (proc.exitStatus() || Date.now() > deadline)
      throw new Error(`the agent did not come online:\n${proc.tail()}`);
    await sleep(50);
  }
}

/** CreateDatabaseService -> observed running -> GetConnectionInfo -> `select 1` answers. */
async function createOnce(rpc, environmentId, name) {
  const t0 = performance.now();
  const created = await rpc("DatabasesService/CreateDatabaseService", {
    environmentId,
    name,
    templateId: "postgres16",
    deployNow: true,
    driver: "DRIVER_EXEC",
  });
  const rpcMs = performance.now() - t0;
  const serviceId = created.service.id;
  for (;;) {
    const { service } = await rpc("ServicesService/GetService", { serviceId });
    const o = service.observed ?? {};
    if (o.deploymentId === created.deploymentId && o.status === "running") break;
    if (o.status === "failed") throw new Error(`${name} failed: ${o.reason}`);
    if (performance.now() - t0 > TIMEOUT_MS) throw new Error(`${name} not running`);
    await sleep(API_POLL_MS);
  }
  const runningMs = performance.now() - t0;
  const info = await rpc("DatabasesService/GetConnectionInfo", { serviceId });
  await untilConnectable(info.uri, t0);
  return { totalMs: performance.now() - t0, rpcMs, runningMs, serviceId, uri: info.uri };
}

/** Runs a program as `nobody` (PostgreSQL refuses root); resolves when it exits 0. */
function asNobody(command, args, { input, env = {} } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      uid: process.getuid() === 0 ? 65534 : undefined,
      gid: process.getuid() === 0 ? 65534 : undefined,
      env: { PATH: process.env.PATH, LC_ALL: "C", ...env },
      stdio: ["pipe", "ignore", "pipe"],
    });
    let err = "";
    child.stderr.on("data", (c) => {
      err += c;
    });
    child.once("error", reject);
    child.once("close", (code) =>
      code === 0 ? resolve() : reject(new Error(`${command} exited ${code}: ${err.slice(-500)}`)),
    );
    child.stdin.end(input ?? "");
  });
}

/**
 * The reference for create: the same bootstrap by hand, as the workload user. initdb (--no-sync,
 * scram-sha-256, a password file), CREATE DATABASE in single-user mode, the server on loopback,
 * then `select 1`. Stopped and removed afterwards.
 */
async function bootstrapByHand(workDir, i) {
  const dir = join(workDir, `hand-${i}`);
  mkdirSync(dir, { mode: 0o700 });
  if (process.getuid() === 0) chownSync(dir, 65534, 65534);
  const password = randomBytes(24).toString("base64url");
  const pwfile = join(dir, "pw");
  const pgdata = join(dir, "pgdata");
  const [port] = await freePorts(1);
  const t0 = performance.now();
  writeFileSync(pwfile, password, { mode: 0o600 });
  if (process.getuid() === 0) chownSync(pwfile, 65534, 65534);
  await asNobody(join(BIN, "initdb"), [
    "-D",
    pgdata,
    "-U",
    "hand",
    `--pwfile=${pwfile}`,
    "--auth=scram-sha-256",
    "--encoding=UTF8",
    "--locale=C",
    "--no-sync",
  ]);
  await asNobody(
    join(BIN, "postgres"),
    ["--single", "-D", pgdata, "-c", "fsync=off", "-c", "unix_socket_directories=", "postgres"],
    { input: 'CREATE DATABASE "hand"\n' },
  );
  const server = spawn(
    join(BIN, "postgres"),
    [
      "-D",
      pgdata,
      "-p",
      String(port),
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      "unix_socket_directories=",
    ],
    {
      uid: process.getuid() === 0 ? 65534 : undefined,
      gid: process.getuid() === 0 ? 65534 : undefined,
      stdio: "ignore",
    },
  );
  try {
    await untilConnectable(`postgresql://hand:${password}@127.0.0.1:${port}/hand`, t0);
    return performance.now() - t0;
  } finally {
    server.kill("SIGINT");
    await new Promise((r) => server.once("exit", r));
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Until the volume is gone and no `initdb --sync-only` runs under the agent's directory. */
async function settle(volume, agentDir) {
  const deadline = Date.now() + 60_000;
  while (
    (existsSync(volume) || pidsMatching(`initdb --sync-only -D ${agentDir}`).length > 0) &&
    Date.now() < deadline
  )
    await sleep(50);
}

async function timed(fn) {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

async function main(out) {
  requireBuild();
  const logDir = tempDir("flotilla-bench-db-logs-", { keep: cfg.keepLogs });
  const agentDir = tempDir("flotilla-bench-db-agent-", { keep: cfg.keepLogs });
  const handDir = tempDir("flotilla-bench-db-hand-");
  // The workload user walks down to its data and backup directories.
  for (const d of [agentDir, handDir]) chmodSync(d, 0o755);
  // Database servers outlive their agent by design: the ones under our directories go at the end.
  onCleanup(async () => {
    for (const dir of [agentDir, handDir])
      for (const pid of pidsMatching(`postgres -D ${dir}`)) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {}
      }
  });
  const hub = await startHub(logDir);
  const login = await connectJson(`${hub.base}/flotilla.v1.IdentityService/Login`, {
    email: ADMIN_EMAIL,
    password: ADMIN_PASSWORD,
  });
  const rpc = client(hub.base, login.body.sessionToken);
  const agent = await startAgent(hub.base, rpc, logDir, agentDir);
  progress(`hub and agent up; logs in ${logDir}`);
  const { production } = await rpc("ProjectService/CreateProject", { name: "Bench" });

  // 1. Create to connectable, interleaved with the bootstrap by hand.
  const creates = [];
  const byHand = [];
  for (let i = 0; i < CREATES; i++) {
    const steps = [
      async () => creates.push(await createOnce(rpc, production.id, `db-${i}`)),
      async () => byHand.push(await bootstrapByHand(handDir, i)),
    ];
    for (const step of i % 2 === 0 ? steps : steps.reverse()) {
      await step();
      await sleep(250);
    }
    const c = creates.at(-1);
    progress(
      `create ${i + 1}/${CREATES}: ${round(c.totalMs, 0)} ms (rpc ${round(c.rpcMs, 0)}, running ${round(c.runningMs, 0)}); by hand ${round(byHand.at(-1), 0)} ms`,
    );
    // Every database but the last is deleted with its data, and the next round waits until the
    // agent has removed it and the first start's background sync has ended: neither's disk work
    // should land in the next measurement (of either kind).
    if (i < CREATES - 1) {
      await rpc("ServicesService/DeleteService", { serviceId: c.serviceId, purgeData: true });
      await settle(join(agentDir, "volumes", c.serviceId), agentDir);
    }
  }
  const totals = creates.map((c) => c.totalMs);
  out.create = {
    ...distribution(totals),
    rpc: distribution(creates.map((c) => c.rpcMs)),
    observedRunning: distribution(creates.map((c) => c.runningMs)),
    allMs: totals.map((v) => round(v, 1)),
  };
  out.createByHand = { ...distribution(byHand), allMs: byHand.map((v) => round(v, 1)) };
  out.createRatioToHand = round(out.create.median / out.createByHand.median, 2);

  // 2. ~TARGET_MB of rows in the last database: 192 hex characters a row (six md5s of distinct
  // inputs, nothing repeated between rows), so pg_dump's compression has real work to do.
  const last = creates.at(-1);
  const db = new pg.Client({ connectionString: last.uri });
  await db.connect();
  // ~250 bytes a row on disk (192 characters of payload, the id, tuple overhead).
  const rows = Math.round((TARGET_MB * 1024 * 1024) / 250);
  const loadMs = await timed(() =>
    db.query(
      `CREATE TABLE bench AS SELECT g AS id, md5(g || 'a') || md5(g || 'b') || md5(g || 'c')
         || md5(g || 'd') || md5(g || 'e') || md5(g || 'f') AS payload
       FROM generate_series(1, ${rows}) g`,
    ),
  );
  const size = (await db.query("SELECT pg_database_size(current_database())::bigint AS b")).rows[0]
    .b;
  await db.end();
  out.data = { rows, databaseMb: round(Number(size) / 1024 / 1024, 1), loadMs: round(loadMs, 0) };
  progress(`loaded ${rows} rows: ${out.data.databaseMb} MB in ${out.data.loadMs} ms`);

  const u = new URL(last.uri);
  const pgEnv = { PGPASSWORD: decodeURIComponent(u.password) };
  const conn = ["-h", u.hostname, "-p", u.port, "-U", decodeURIComponent(u.username)];
  const dbName = u.pathname.slice(1);
  const handFile = join(handDir, "hand.dump");
  const flotillaBackup = async () => {
    const t0 = performance.now();
    let { backup } = await rpc("DatabasesService/CreateBackup", { serviceId: last.serviceId });
    while (backup.state !== "done") {
      if (backup.state === "failed") throw new Error(`backup failed: ${backup.error}`);
      if (performance.now() - t0 > 600_000) throw new Error("backup took over 10 minutes");
      await sleep(API_POLL_MS);
      ({ backup } = await rpc("DatabasesService/GetBackup", { backupId: backup.id }));
    }
    return { ms: performance.now() - t0, backup };
  };
  const handBackup = async () => {
    rmSync(handFile, { force: true });
    const ms = await timed(() =>
      execFileP(join(BIN, "pg_dump"), ["--format=custom", ...conn, "-d", dbName, "-f", handFile], {
        env: { ...process.env, ...pgEnv },
        maxBuffer: 1 << 20,
      }),
    );
    return { ms, bytes: statSync(handFile).size };
  };
  const restoreArgs = [
    "--clean",
    "--if-exists",
    "--no-owner",
    "--single-transaction",
    "--exit-on-error",
    ...conn,
    "-d",
    dbName,
  ];
  const flotillaRestore = async (backupId) => {
    const t0 = performance.now();
    const { jobId } = await rpc("DatabasesService/RestoreBackup", {
      serviceId: last.serviceId,
      backupId,
      confirm: true,
    });
    for (;;) {
      const { job } = await rpc("ServicesService/GetJob", { jobId });
      if (job.state === "done") break;
      if (job.state === "failed") throw new Error(`restore failed: ${job.error}`);
      await sleep(API_POLL_MS);
    }
    return performance.now() - t0;
  };
  const handRestore = () =>
    timed(() =>
      execFileP(join(BIN, "pg_restore"), [...restoreArgs, handFile], {
        env: { ...process.env, ...pgEnv },
        maxBuffer: 1 << 20,
      }),
    );

  // 3. Backup and restore, Flotilla and by hand alternating which goes first.
  const fb = [];
  const hb = [];
  const fr = [];
  const hr = [];
  let backupBytes = null;
  let handBytes = null;
  for (let r = 0; r < ROUNDS; r++) {
    let backupId;
    const backupSteps = [
      async () => {
        const b = await flotillaBackup();
        fb.push(b.ms);
        backupId = b.backup.id;
        backupBytes = Number(b.backup.sizeBytes);
      },
      async () => {
        const h = await handBackup();
        hb.push(h.ms);
        handBytes = h.bytes;
      },
    ];
    for (const step of r % 2 === 0 ? backupSteps : backupSteps.reverse()) await step();
    const restoreSteps = [
      async () => fr.push(await flotillaRestore(backupId)),
      async () => hr.push(await handRestore()),
    ];
    for (const step of r % 2 === 0 ? restoreSteps : restoreSteps.reverse()) await step();
    progress(
      `round ${r + 1}/${ROUNDS}: backup ${round(fb.at(-1), 0)} ms vs pg_dump ${round(hb.at(-1), 0)} ms; restore ${round(fr.at(-1), 0)} ms vs pg_restore ${round(hr.at(-1), 0)} ms`,
    );
  }
  out.backup = { flotilla: distribution(fb), byHand: distribution(hb), fileBytes: backupBytes };
  out.backup.byHand.fileBytes = handBytes;
  out.backup.ratio = round(out.backup.flotilla.median / out.backup.byHand.median, 2);
  out.restore = { flotilla: distribution(fr), byHand: distribution(hr) };
  out.restore.ratio = round(out.restore.flotilla.median / out.restore.byHand.median, 2);

  await rpc("ServicesService/DeleteService", { serviceId: last.serviceId, purgeData: true });
  await sleep(3000);
  await agent.stop();
  await hub.proc.stop();
}

const loadAvgBefore = round(loadavg()[0]);
const out = {};
let error;
try {
  await main(out);
} catch (err) {
  progress(`database FAILED: ${err?.stack ?? err}`);
  error = String(err?.message ?? err).split("\n")[0];
} finally {
  await runCleanups();
}

process.stdout.write(
  `${JSON.stringify({
    bench: "database",
    at: new Date().toISOString(),
    node: process.version,
    cpus: availableParallelism(),
    ...(error ? { error } : {}),
    template: "postgres16 (exec driver, the host's PostgreSQL binaries)",
    creates: CREATES,
    rounds: ROUNDS,
    pollMs: POLL_MS,
    apiPollMs: API_POLL_MS,
    loadAvg1Before: loadAvgBefore,
    loadAvg1After: round(loadavg()[0]),
    targets: TARGETS,
    create: out.create ?? null,
    createByHand: out.createByHand ?? null,
    createRatioToHand: out.createRatioToHand ?? null,
    data: out.data ?? null,
    backup: out.backup ?? null,
    restore: out.restore ?? null,
    meetsTargets: {
      createMedian:
        typeof out.create?.median === "number"
          ? out.create.median < TARGETS.createMaxMedianMs
          : null,
      backupRatio:
        typeof out.backup?.ratio === "number" ? out.backup.ratio <= TARGETS.backupMaxRatio : null,
      restoreRatio:
        typeof out.restore?.ratio === "number"
          ? out.restore.ratio <= TARGETS.restoreMaxRatio
          : null,
    },
  })}\n`,
);
process.exit(error ? 1 : 0);
