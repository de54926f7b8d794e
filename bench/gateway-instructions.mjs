// Instructions per proxied GET, counted by callgrind: `flotilla gateway`'s data path against a
// plain byte pipe on the same node:net sockets (bench/lib/pipe-proxy.mjs, the floor of any Node
// proxy), both in front of the 1 KB upstream. An instruction count does not move with what else
// the machine is doing, so it compares two builds where requests/s on shared cores cannot.
// Counts are user space only (the kernel's socket work is not in them). Prints one JSON line.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import autocannon from "autocannon";
import {
  envCount,
  freePorts,
  onCleanup,
  progress,
  ROOT,
  requireBuild,
  runBenchmark,
  settings,
  sleep,
  startNode,
  tempDir,
  waitReady,
} from "./lib/common.mjs";

const REQUESTS = envCount("BENCH_CG_REQUESTS", 8_000);
/** Requests before counting starts, so V8 has optimized the path (fewer leave compiler work in the count). */
const WARMUP = envCount("BENCH_CG_WARMUP", 30_000);
const CONNECTIONS = 8;

function hasValgrind() {
  return spawnSync("valgrind", ["--version"], { encoding: "utf8" }).status === 0;
}

/** Runs `node script args` under callgrind, counting only between `on` and `off`. */
function underCallgrind(name, script, args, dir) {
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
    { stdio: "ignore" },
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

async function count(name, script, args, port, dir) {
  progress(`${name}: starting under callgrind`);
  const proc = underCallgrind(name, script, args, dir);
  const url = `http://127.0.0.1:${port}/bench/item`;
  await until(url, 240_000);
  const run = (amount) =>
    autocannon({ url, connections: CONNECTIONS, amount, timeout: 60 }).then((r) => {
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

async function main() {
  requireBuild();
  if (!hasValgrind()) {
    process.stdout.write(
      `${JSON.stringify({ benchmark: "gateway-instructions", skipped: "valgrind is not installed (apt-get install valgrind)" })}\n`,
    );
    return;
  }
  const dir = tempDir("flotilla-bench-cg-", { keep: settings().keepLogs });
  const [upstreamPort, gatewayPort, pipePort] = await freePorts(3);
  const upstream = startNode(
    "upstream",
    [join(ROOT, "bench/lib/upstream-1k.mjs"), String(upstreamPort)],
    { logDir: dir },
  );
  await waitReady(upstream, `http://127.0.0.1:${upstreamPort}`);
  const gateway = await count(
    "gateway",
    join(ROOT, "bench/lib/stored-gateway.mjs"),
    [String(gatewayPort), String(upstreamPort), tempDir("flotilla-bench-cg-gw-")],
    gatewayPort,
    dir,
  );
  const pipe = await count(
    "pipe",
    join(ROOT, "bench/lib/pipe-proxy.mjs"),
    [String(pipePort), String(upstreamPort)],
    pipePort,
    dir,
  );
  const figures = {
    benchmark: "gateway-instructions",
    at: new Date().toISOString(),
    node: process.version,
    connections: CONNECTIONS,
    warmup: WARMUP,
    gateway,
    pipe,
    gatewayToPipeMainThread:
      Math.round((100 * gateway.mainThreadPerRequest) / pipe.mainThreadPerRequest) / 100,
  };
  process.stdout.write(`${JSON.stringify(figures)}\n`);
}

runBenchmark(main);
