// Shared support for the benchmarks: settings from the environment, child processes that never
// outlive the benchmark, readiness polling, RSS readings, a throw-away database, processes found
// by a marker in their command line, distributions, and an autocannon wrapper.
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import pg from "pg";

/** The repository root (this file lives in bench/lib/). */
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const CLI = join(ROOT, "dist", "src", "cli", "main.js");

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Progress goes to stderr; stdout carries only the one JSON line of figures. */
export function progress(message) {
  process.stderr.write(`[bench] ${message}\n`);
}

function envNumber(name, fallback, { min = 0 } = {}) {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < min) {
    throw new Error(`${name}=${raw} is not a number >= ${min}`);
  }
  return value;
}

/** A count from the environment (an integer >= 1), or the fallback when unset; throws otherwise. */
export function envCount(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name}=${raw} is not an integer >= 1`);
  return n;
}

/** Settings shared by every benchmark; see bench/README.md. */
export function settings() {
  return {
    durationS: envNumber("BENCH_DURATION", 10, { min: 1 }),
    rounds: envNumber("BENCH_ROUNDS", 5, { min: 1 }),
    warmupS: envNumber("BENCH_WARMUP", 2),
    connections: envNumber("BENCH_CONNECTIONS", 64, { min: 1 }),
    idleMs: envNumber("BENCH_IDLE_MS", 3000),
    logLevel: process.env.BENCH_LOG_LEVEL || "info",
    keepLogs: Boolean(process.env.BENCH_KEEP_LOGS),
    pgAdminUrl:
      process.env.BENCH_PG_URL ||
      process.env.FLOTILLA_TEST_PG_URL ||
      "postgres://postgres@127.0.0.1:5432/postgres",
  };
}

export function requireBuild() {
  if (!existsSync(CLI)) {
    process.stderr.write(`${CLI} is missing: run npm run build first\n`);
    process.exit(2);
  }
}

/** Distinct free loopback ports (all probe servers stay open until every port is read). */
export async function freePorts(count) {
  const servers = [];
  try {
    const ports = [];
    for (let i = 0; i < count; i++) {
      const server = createServer();
      servers.push(server);
      await new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(0, "127.0.0.1", resolve);
      });
      ports.push(server.address().port);
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(() => resolve()))));
  }
}

// --- cleanup -------------------------------------------------------------------------------

const cleanups = [];
const children = new Set();

/** Registers an async cleanup; runCleanups() runs them newest first, each at most once. */
export function onCleanup(fn) {
  cleanups.push(fn);
}

export async function runCleanups() {
  while (cleanups.length > 0) {
    const fn = cleanups.pop();
    try {
      await fn();
    } catch (err) {
      progress(`cleanup failed: ${err?.message ?? err}`);
    }
  }
}

/** Runs a benchmark's main: a failure is reported and exits 1; the cleanups run either way. */
export function runBenchmark(main) {
  main()
    .catch((err) => {
      progress(`failed: ${err?.stack ?? err}`);
      process.exitCode = 1;
    })
    .finally(() => runCleanups());
}

// Last resort: if this process goes away anyway, take the children with it.
process.once("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    progress(`${signal}: stopping children and cleaning up`);
    runCleanups().finally(() => process.exit(130));
  });
}

// --- child processes -----------------------------------------------------------------------

/** A fresh temporary directory, removed at cleanup unless `keep`. */
export function tempDir(prefix, { keep = false } = {}) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  onCleanup(() => {
    if (keep) progress(`kept ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

/** Children started with a CPU profile so far (numbers their profiles). */
let profiled = 0;

/**
 * Spawns `node <args>` with stdout and stderr going to a log file (the hub's JSON logs are real
 * output a deployment would write somewhere; a file costs the child what it costs in production
 * and costs the benchmark process nothing). FLOTILLA_* from our environment are dropped.
 */
export function startNode(name, args, { env = {}, logDir }) {
  const childEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("FLOTILLA_")) childEnv[k] = v;
  Object.assign(childEnv, env);
  const logFile = join(logDir, `${name}.log`);
  const fd = openSync(logFile, "a");
  // BENCH_CPU_PROF_DIR: every child writes a V8 CPU profile there when it exits, named after it.
  const profileDir = process.env.BENCH_CPU_PROF_DIR;
  const nodeArgs = profileDir
    ? [
        "--cpu-prof",
        `--cpu-prof-dir=${profileDir}`,
        `--cpu-prof-name=${name}.${++profiled}.cpuprofile`,
      ]
    : [];
  // BENCH_NODE_ARGS: more options for every child's node (--trace-gc is refused in NODE_OPTIONS).
  nodeArgs.push(...(process.env.BENCH_NODE_ARGS ?? "").split(" ").filter(Boolean));
  let child;
  try {
    child = spawn(process.execPath, [...nodeArgs, ...args], {
      cwd: ROOT,
      env: childEnv,
      stdio: ["ignore", fd, fd],
    });
  } finally {
    closeSync(fd);
  }
  if (child.pid === undefined) throw new Error(`could not spawn ${name}`);
  children.add(child);
  let status = null;
  const exited = new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      children.delete(child);
      status = { code, signal };
      resolve(status);
    });
  });
  const proc = {
    name,
    pid: child.pid,
    logFile,
    exited,
    exitStatus: () => status,
    /** The last lines of its output, for error messages. */
    tail(lines = 30) {
      try {
        return readFileSync(logFile, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
      } catch {
        return "(no output)";
      }
    },
    /** SIGTERM, then SIGKILL after graceMs. Resolves once it has exited. */
    async stop(graceMs = 15_000) {
      if (status) return status;
      child.kill("SIGTERM");
      const timer = setTimeout(() => {
        progress(`${name} (pid ${child.pid}) ignored SIGTERM for ${graceMs} ms: SIGKILL`);
        child.kill("SIGKILL");
      }, graceMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
  onCleanup(() => proc.stop());
  return proc;
}

/**
 * CPU seconds a process has used so far, user and kernel apart, with its child processes' when
 * `withChildren` (an nginx master's worker), from /proc (clock ticks of 10 ms); null when gone.
 */
export function cpuTimes(pid, { withChildren = false } = {}) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const times = { userS: Number(fields[11]) / 100, systemS: Number(fields[12]) / 100 };
    if (withChildren) {
      const children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim();
      for (const child of children ? children.split(" ") : []) {
        const c = cpuTimes(Number(child));
        times.userS += c?.userS ?? 0;
        times.systemS += c?.systemS ?? 0;
      }
    }
    return times;
  } catch {
    return null;
  }
}

/** CPU seconds (user + kernel) a process has used so far; see cpuTimes. */
export function cpuSeconds(pid, options) {
  const t = cpuTimes(pid, options);
  return t ? t.userS + t.systemS : null;
}

/** Polls GET url/ready until 200; throws if the process exits first or the deadline passes. */
export async function waitReady(proc, url, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  let last = "no answer yet";
  while (Date.now() < deadline) {
    const status = proc.exitStatus();
    if (status) {
      throw new Error(
        `${proc.name} exited (${JSON.stringify(status)}) before it was ready:\n${proc.tail()}`,
      );
    }
    try {
      const res = await fetch(`${url}/ready`, { signal: AbortSignal.timeout(2_000) });
      await res.body?.cancel();
      if (res.status === 200) return;
      last = `GET /ready answered ${res.status}`;
    } catch (err) {
      last = err.message;
    }
    await sleep(150);
  }
  throw new Error(`${proc.name} not ready after ${timeoutMs} ms (${last}):\n${proc.tail()}`);
}

/** A field of /proc/<pid>/status (VmRSS, VmHWM) in MB, one decimal; null if unreadable. */
export function procStatusMb(pid, field = "VmRSS") {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const match = new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, "m").exec(status);
    return match ? Math.round((Number(match[1]) / 1024) * 10) / 10 : null;
  } catch {
    return null;
  }
}

/** POSTs a Connect unary JSON request; returns the status and the parsed body. */
export async function connectJson(url, body, headers = {}) {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(15_000),
  });
  const text = await res.text();
  let parsed;
  try {
    parsed = text ? JSON.parse(text) : {};
  } catch {
    parsed = { raw: text };
  }
  return { status: res.status, body: parsed, bytes: Buffer.byteLength(text) };
}

/**
 * Creates a fresh database `<prefix>_<pid>_<random>` through the maintenance URL and drops it
 * (WITH FORCE) at cleanup. Returns its name and connection URL.
 */
export async function createDatabase(pgAdminUrl, prefix = "flotilla_bench") {
  const name = `${prefix}_${process.pid}_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: pgAdminUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE "${name}"`);
  } finally {
    await admin.end();
  }
  onCleanup(async () => {
    const client = new pg.Client({ connectionString: pgAdminUrl });
    await client.connect();
    try {
      await client.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      progress(`dropped database ${name}`);
    } finally {
      await client.end();
    }
  });
  const url = new URL(pgAdminUrl);
  url.pathname = `/${name}`;
  return { name, url: url.toString() };
}

/** Pids of live processes whose full command line matches `pattern` (pgrep -f). */
export function pidsMatching(pattern) {
  try {
    return execFileSync("pgrep", ["-f", pattern], { encoding: "utf8" })
      .trim()
      .split("\n")
      .filter(Boolean)
      .map(Number);
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
}

/**
 * SIGKILLs every process whose command line matches `pattern` (pkill -f), whoever runs it, and
 * waits up to `timeoutMs` until none is left. Returns how many were found at first.
 */
export async function killMatching(pattern, timeoutMs = 5_000) {
  const found = pidsMatching(pattern).length;
  if (found === 0) return 0;
  const deadline = Date.now() + timeoutMs;
  do {
    try {
      execFileSync("pkill", ["-KILL", "-f", pattern]);
    } catch {
      // exit 1: nothing matched any more
    }
    if (pidsMatching(pattern).length === 0) return found;
    await sleep(50);
  } while (Date.now() < deadline);
  progress(`still running after SIGKILL: ${pidsMatching(pattern).join(", ")} (${pattern})`);
  return found;
}

/**
 * Median (mean of the two middle values when the count is even), p90 (nearest rank), min, max
 * and mean of a list of numbers, rounded to `digits`; null when the list is empty.
 */
export function distribution(values, digits = 1) {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const n = sorted.length;
  const mid = Math.floor(n / 2);
  const median = n % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  const rank = (p) => sorted[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))];
  return {
    count: n,
    median: round(median, digits),
    p90: round(rank(0.9), digits),
    min: round(sorted[0], digits),
    max: round(sorted[n - 1], digits),
    mean: round(sorted.reduce((sum, v) => sum + v, 0) / n, digits),
  };
}

export const round = (n, digits = 2) =>
  typeof n === "number" && Number.isFinite(n) ? Number(n.toFixed(digits)) : null;

/**
 * One slice of load from autocannon, run in this process (the servers are children): POSTs
 * `body` for `durationS` over `connections`, as fast as answers come (the most the target
 * serves). Returns autocannon's raw result (encoded histograms), so slices can be merged with
 * summarize(). Latency at a given rate is constantRate's (lib/constant-rate.mjs).
 */
export function loadSlice({ url, headers, body, connections, durationS }) {
  return autocannon({
    url,
    method: "POST",
    headers,
    body,
    connections,
    duration: durationS,
    pipelining: 1,
    skipAggregateResult: true,
  });
}

/** Merges raw slices (latency histograms, counts) into the figures we report. */
export function summarize(slices, { url, connections }) {
  const merged = autocannon.aggregateResult(slices, { url, connections });
  // aggregateResult keeps the first slice's duration and does not merge the per-second request
  // samples, so throughput is computed here: completed responses over measured seconds.
  const seconds = slices.reduce((sum, s) => sum + s.duration, 0);
  const completed = slices.reduce((sum, s) => sum + s.totalCompletedRequests, 0);
  return {
    rps: round(completed / seconds, 1),
    p50Ms: round(merged.latency.p50),
    p99Ms: round(merged.latency.p99),
    meanMs: round(merged.latency.average),
    maxMs: round(merged.latency.max),
    requests: completed,
    non2xx: merged.non2xx,
    errors: merged.errors,
    timeouts: merged.timeouts,
    statusCodes: Object.fromEntries(
      Object.entries(merged.statusCodeStats).map(([code, s]) => [code, s.count]),
    ),
    connections,
    measuredS: round(seconds, 1),
    rpsBySlice: slices.map((s) => round(s.totalCompletedRequests / s.duration, 0)),
  };
}
