// Runs every benchmark (bench/*.mjs except this file) in sequence, or only those named on the
// command line (`npm run bench -- whoami`), and prints each one's JSON line of figures on stdout.
// Each benchmark's progress goes to stderr as it runs. Exits 1 if any benchmark failed.
import { spawn } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const BENCH = dirname(fileURLToPath(import.meta.url));
const CLI = join(BENCH, "..", "dist", "src", "cli", "main.js");

if (!existsSync(CLI)) {
  process.stderr.write(`${CLI} is missing: run npm run build first\n`);
  process.exit(2);
}

const available = readdirSync(BENCH)
  .filter((f) => f.endsWith(".mjs") && f !== "run-all.mjs")
  .map((f) => f.slice(0, -".mjs".length))
  .sort();
const wanted = process.argv.slice(2).map((a) => a.replace(/\.mjs$/, ""));
const unknown = wanted.filter((w) => !available.includes(w));
if (unknown.length > 0) {
  process.stderr.write(
    `unknown benchmark(s): ${unknown.join(", ")}; available: ${available.join(", ")}\n`,
  );
  process.exit(2);
}
const selected = wanted.length > 0 ? wanted : available;

let current;
for (const signal of ["SIGINT", "SIGTERM"]) {
  // Pass the signal on so the benchmark cleans up (stops its servers, drops its database).
  process.on(signal, () => {
    if (current) current.kill(signal);
    else process.exit(130);
  });
}

/** Runs one benchmark; resolves to its JSON line (or null) and its exit status. */
function run(name) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(BENCH, `${name}.mjs`)], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    current = child;
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (chunk) => {
      out += chunk;
    });
    child.once("close", (code, signal) => {
      current = undefined;
      const lines = out.split("\n").filter((l) => l.trim().startsWith("{"));
      let line = null;
      for (const candidate of lines.reverse()) {
        try {
          JSON.parse(candidate);
          line = candidate.trim();
          break;
        } catch {
          // not a figures line
        }
      }
      resolve({ line, code, signal });
    });
  });
}

let failed = 0;
for (const name of selected) {
  process.stderr.write(`\n=== ${name} ===\n`);
  const { line, code, signal } = await run(name);
  if (line) process.stdout.write(`${line}\n`);
  if (code !== 0 || !line) {
    failed++;
    process.stderr.write(
      `=== ${name} failed (${signal ? `signal ${signal}` : `exit ${code}`}${line ? "" : ", no figures"}) ===\n`,
    );
  }
  if (signal === "SIGINT" || signal === "SIGTERM") break;
}
process.exit(failed > 0 ? 1 : 0);
