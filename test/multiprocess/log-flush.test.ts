// pino writes stdout asynchronously (its default); a process that exits right after logging, on
// purpose or through an uncaught error, must still have written every line, in order: 20,000
// lines (~8 MB) are far more than a pipe holds, so without pino's flush at exit most would be
// lost. Not covered, because it fails: a reader so slow that a write met EAGAIN and waits for its
// retry when the process exits; sonic-boom's exit flush skips that chunk (up to 16 KB).
import { spawn } from "node:child_process";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";
import { ROOT } from "./procs.js";

const LINES = 20_000;
const SHARED = pathToFileURL(join(ROOT, "dist", "src", "shared", "index.js")).href;

async function runLogging(ending: string): Promise<{ code: number | null; lines: string[] }> {
  // Logged in batches across event-loop turns, so writes are in flight when the process ends.
  const script = `
    import { createLogger } from ${JSON.stringify(SHARED)};
    const log = createLogger({ name: "flush-test" });
    const pad = "x".repeat(300);
    let i = 0;
    const batch = () => {
      for (let n = 0; n < 1000 && i < ${LINES}; n++, i++) log.info({ i, pad }, "line");
      if (i < ${LINES}) setImmediate(batch);
      else { ${ending} }
    };
    batch();
  `;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    stdio: ["ignore", "pipe", "ignore"],
  });
  let out = "";
  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (chunk: string) => {
    out += chunk;
  });
  const code = await new Promise<number | null>((resolve) => child.once("close", resolve));
  return { code, lines: out.split("\n").filter(Boolean) };
}

function indexes(lines: string[]): number[] {
  return lines.map((line) => (JSON.parse(line) as { i: number }).i);
}

describe("createLogger's default destination (stdout)", () => {
  it("writes every line, in order, when the process calls process.exit right after", async () => {
    const { code, lines } = await runLogging("process.exit(3);");
    expect(code).toBe(3);
    expect(lines).toHaveLength(LINES);
    expect(indexes(lines)).toEqual(Array.from({ length: LINES }, (_, i) => i));
  });

  it("writes every line when the process dies of an uncaught error right after", async () => {
    const { code, lines } = await runLogging('throw new Error("boom");');
    expect(code).toBe(1);
    expect(lines).toHaveLength(LINES);
    expect(indexes(lines).at(-1)).toBe(LINES - 1);
  });
});
