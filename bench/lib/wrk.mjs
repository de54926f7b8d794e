// Load from wrk (Debian's package), for the proxies' throughput: a C load generator costs about
// half of autocannon's CPU per request (10 vs 19 us here) on the two cores the proxies share, and
// measures latency to the microsecond, where autocannon's histogram counts whole milliseconds (a
// p99 of "5" was anything from 5.00 to 5.99 ms).
import { spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
import { ROOT, round } from "./common.mjs";

const SCRIPT = join(ROOT, "bench/lib/wrk-figures.lua");

/** wrk's path, or null when it is not installed. */
export function wrkPath() {
  const r = spawnSync("sh", ["-c", "command -v wrk"], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : null;
}

/**
 * One slice of GETs to `url` over `connections` for `durationS`, from one wrk thread. Returns
 * wrk-figures.lua's line and the CPU seconds wrk used (read by the shell that waited for it).
 */
export function wrkSlice({ url, connections, durationS }) {
  const args = [
    "-c",
    `wrk -t1 -c${connections} -d${durationS}s --timeout 10s -s "$1" "$2"; cat /proc/$$/stat`,
    "sh",
    SCRIPT,
    url,
  ];
  return new Promise((resolve, reject) => {
    const child = spawn("sh", args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    child.stderr.on("data", (d) => {
      err += d;
    });
    child.once("error", reject);
    // "close", not "exit": the output is whole only once its pipes have closed.
    child.once("close", (code) => {
      const lines = out.trim().split("\n");
      const figures = lines.find((l) => l.startsWith('{"requests"'));
      const stat = lines.at(-1) ?? "";
      if (code !== 0 || !figures) {
        reject(new Error(`wrk failed (exit ${code}): ${err.trim() || out.trim()}`));
        return;
      }
      // The shell's cutime and cstime: its waited-for children (wrk), in clock ticks.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const cpuS = (Number(fields[13]) + Number(fields[14])) / 100;
      resolve({ ...JSON.parse(figures), cpuS });
    });
  });
}

/** The merged figures of one target's slices, in summarize()'s shape (lib/common.mjs). */
export function summarizeWrk(slices, { connections }) {
  const seconds = slices.reduce((sum, s) => sum + s.durationUs / 1e6, 0);
  const requests = slices.reduce((sum, s) => sum + s.requests, 0);
  // Each quantile stands for a thousandth of its slice's requests.
  const points = slices
    .flatMap((s) => s.quantilesUs.map((us) => ({ us, weight: s.requests / s.quantilesUs.length })))
    .sort((a, b) => a.us - b.us);
  const quantile = (q) => {
    let seen = 0;
    for (const p of points) {
      seen += p.weight;
      if (seen >= q * requests) return p.us;
    }
    return points.at(-1)?.us ?? null;
  };
  const ms = (us) => (us === null ? null : round(us / 1000, 2));
  const sum = (key) => slices.reduce((n, s) => n + s[key], 0);
  return {
    rps: round(requests / seconds, 1),
    p50Ms: ms(quantile(0.5)),
    p90Ms: ms(quantile(0.9)),
    p99Ms: ms(quantile(0.99)),
    meanMs: ms(slices.reduce((n, s) => n + s.meanUs * s.requests, 0) / requests),
    maxMs: ms(Math.max(...slices.map((s) => s.maxUs))),
    requests,
    non2xx: sum("status4xx5xx"), // wrk counts answers of 400 and above; 1xx and 3xx pass
    errors: sum("connectErrors") + sum("readErrors") + sum("writeErrors"),
    timeouts: sum("timeouts"),
    connections,
    measuredS: round(seconds, 1),
    rpsBySlice: slices.map((s) => round(s.requests / (s.durationUs / 1e6), 0)),
    loadGenerator: "wrk",
  };
}
