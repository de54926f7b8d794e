// One-off commands (jobs) run as the unprivileged workload user, with a deadline and bounded output.
import { execFileSync, spawn } from "node:child_process";
import { userInfo } from "node:os";

export interface WorkloadUser {
  name: string;
  uid: number;
  gid: number;
}

/** Job output kept for the result: the last 64 KiB of each stream (the dispatch row holds it). */
const MAX_OUTPUT_BYTES = 64 * 1024;
const DEFAULT_JOB_TIMEOUT_MS = 10 * 60_000;

/**
 * Resolves the user workloads run as. As root, it must be an existing unprivileged user (root is
 * refused); as any other user, workloads run as that user.
 */
export function resolveWorkloadUser(name: string): WorkloadUser {
  const me = userInfo();
  if (process.getuid?.() !== 0) return { name: me.username, uid: me.uid, gid: me.gid };
  let uid: number;
  let gid: number;
  try {
    uid = Number(execFileSync("id", ["-u", name], { encoding: "utf8" }).trim());
    gid = Number(execFileSync("id", ["-g", name], { encoding: "utf8" }).trim());
  } catch {
    throw new Error(
      `workload user ${name} does not exist; create it (useradd --system ${name}) or pass --workload-user`,
    );
  }
  if (uid === 0)
    throw new Error(`refusing to run workloads as root (--workload-user ${name} is uid 0)`);
  return { name, uid, gid };
}

export interface JobArgs {
  command: string;
  args?: string[];
  env?: Record<string, string>;
  cwd?: string;
  timeout_ms?: number;
}

export interface JobResult {
  exit_code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  duration_ms: number;
}

function tail(chunks: Buffer[]): string {
  const all = Buffer.concat(chunks);
  return all.subarray(Math.max(0, all.length - MAX_OUTPUT_BYTES)).toString("utf8");
}

export function checkJobArgs(args: Record<string, unknown>): JobArgs {
  if (typeof args.command !== "string" || !args.command)
    throw new Error("job.command must be a non-empty string");
  if (
    args.args !== undefined &&
    (!Array.isArray(args.args) || !args.args.every((a) => typeof a === "string"))
  )
    throw new Error("job.args must be a list of strings");
  return args as unknown as JobArgs;
}

/** Runs a job to completion; a non-zero exit is a result, not an error (the caller decides). */
export function runJob(job: JobArgs, user: WorkloadUser): Promise<JobResult> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(job.command, job.args ?? [], {
      cwd: job.cwd || "/",
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...job.env },
      uid: process.getuid?.() === 0 ? user.uid : undefined,
      gid: process.getuid?.() === 0 ? user.gid : undefined,
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    // Only the tail is kept: a job that prints gigabytes must not fill the agent's memory.
    const keep = (chunks: Buffer[], c: Buffer) => {
      chunks.push(c);
      let size = chunks.reduce((n, b) => n + b.length, 0);
      while (chunks.length > 1 && size - chunks[0]!.length >= MAX_OUTPUT_BYTES)
        size -= chunks.shift()!.length;
    };
    child.stdout.on("data", (c: Buffer) => keep(out, c));
    child.stderr.on("data", (c: Buffer) => keep(err, c));
    const timer = setTimeout(() => {
      // The whole process group: a job's children do not outlive its deadline.
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {}
    }, job.timeout_ms ?? DEFAULT_JOB_TIMEOUT_MS);
    child.once("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${job.command}: ${e.message}`));
    });
    let settled = false;
    const finish = (code: number | null, signal: NodeJS.Signals | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // Whatever the job left behind in its group goes with it.
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {}
      child.stdout.destroy();
      child.stderr.destroy();
      resolve({
        exit_code: code,
        signal,
        stdout: tail(out),
        stderr: tail(err),
        duration_ms: Math.round(performance.now() - started),
      });
    };
    child.once("close", finish);
    // A descendant that left the group (setsid) may hold stdout open forever: once the job
    // itself has exited, its output gets one second to drain, no more.
    child.once("exit", (code, signal) => {
      setTimeout(() => finish(code, signal), 1000).unref();
    });
  });
}
