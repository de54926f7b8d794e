// Instructions per request, counted by callgrind: a child process runs under valgrind, takes a
// warm-up of requests, then exactly the measured ones are counted (callgrind_control on/off).
// Used by the *-instructions benchmarks.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import autocannon from "autocannon";
import { envCount, onCleanup, progress, sleep } from "./common.mjs";

export const REQUESTS = envCount("BENCH_CG_REQUESTS", 8_000);
/** Requests before counting starts, so V8 has optimized the path (fewer leave compiler work in the count). */
export const WARMUP = envCount("BENCH_CG_WARMUP", 30_000);
export const CONNECTIONS = 8;

/** Prints the benchmark's line of figures: its name, when, Node, and the counting settings. */
export function printFigures(benchmark, figures) {
  const line = {
    benchmark,
    at: new Date().toISOString(),
    node: process.version,
    connections: CONNECTIONS,
    warmup: WARMUP,
    ...figures,
  };
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

/** True (after printing the benchmark's line saying so) when valgrind is not installed. */
export function skippedWithoutValgrind(benchmark) {
  if (spawnSync("valgrind", ["--version"], { encoding: "utf8" }).status === 0) return false;
  const skipped = "valgrind is not installed (apt-get install valgrind)";
  process.stdout.write(`${JSON.stringify({ benchmark, skipped })}\n`);
  return true;
}

/** Runs `node script args` under callgrind, counting only between `on` and `off`. */
function underCallgrind(name, script, args, dir, env) {
  const out = join(dir, `callgrind.${name}`);
  const child = spawn(
    "valgrind",
    [
      "--tool=callgrind",
      "--instr-atstart=no",
      "--separate-threads=yes",
      `--callgrind-out-file=${out}`,
      process.execPath,
      // JIT frames get names in /tmp/perf-PID.map, for callgrind_annotate's unnamed addresses.
      "--perf-basic-prof",
      script,
      ...args,
    ],
    { stdio: "ignore", env: { ...process.env, ...env } },
  );
  let exited = false;
  child.once("exit", () => {
    exited = true;
  });
  onCleanup(() => {
    if (!exited) child.kill("SIGKILL");
  });
  return {
    pid: child.pid,
    control: (...flags) =>
      execFileSync("callgrind_control", [...flags, String(child.pid)], { stdio: "ignore" }),
    /** Instructions counted: the main thread's and all threads' (V8's compiler and GC helpers). */
    totals() {
      let main = 0;
      let all = 0;
      for (const f of readdirSync(dir).filter((f) => f.startsWith(`callgrind.${name}.`))) {
        const m = /\ntotals: (\d+)/.exec(readFileSync(join(dir, f), "utf8"));
        if (!m) continue;
        all += Number(m[1]);
        if (f.endsWith("-01")) main = Number(m[1]);
      }
      return { main, all };
    },
    stop() {
      child.kill("SIGKILL");
    },
  };
}

async function until(url, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = await fetch(url).then(
      (r) => r.arrayBuffer().then(() => r.status),
      () => 0,
    );
    if (status === 200) return;
    if (Date.now() > deadline) throw new Error(`${url} did not answer 200 in ${timeoutMs} ms`);
    await sleep(500);
  }
}

/**
 * Starts `node script args` under callgrind (with `env` added to ours), waits until `ready` answers 200, then sends the
 * warm-up and the counted requests (`request`: autocannon's url, method, headers, body), and
 * returns the instructions per request. `prepare`, if given, runs once it is ready and returns
 * more request options (a login's credentials).
 */
export async function countInstructions(
  name,
  { script, args, dir, env = {}, ready, request, prepare },
) {
  progress(`${name}: starting under callgrind`);
  const proc = underCallgrind(name, script, args, dir, env);
  await until(ready, 600_000);
  const options = { ...request, ...(prepare ? await prepare() : {}) };
  const run = (amount) =>
    autocannon({ ...options, connections: CONNECTIONS, amount, timeout: 120 }).then((r) => {
      if (r.non2xx > 0 || r.errors > 0)
        throw new Error(`${name}: ${r.non2xx} non-2xx, ${r.errors} errors`);
      return r;
    });
  progress(`${name}: ${WARMUP} requests of warm-up`);
  await run(WARMUP);
  proc.control("-i", "on");
  progress(`${name}: ${REQUESTS} requests counted`);
  const r = await run(REQUESTS);
  proc.control("-i", "off");
  proc.control("-d");
  await sleep(1000);
  const { main, all } = proc.totals();
  proc.stop();
  return {
    requests: r.requests.total,
    mainThreadPerRequest: Math.round(main / r.requests.total),
    allThreadsPerRequest: Math.round(all / r.requests.total),
  };
}
