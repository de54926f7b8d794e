// Multi-process test support: start real `flotilla` processes from the compiled CLI, wait for
// them, read their output, and make sure none outlives the test file.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (this file lives in test/multiprocess/). */
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const CLI = join(ROOT, "dist", "src", "cli", "main.js");

export const SECRET_A = "multiprocess-secret-A-0123456789-abcdefghijklmnop";
/** 32 bytes in base64, as FLOTILLA_MASTER_KEY wants. */
export const TEST_MASTER_KEY = Buffer.alloc(32, 7).toString("base64");
export const SECRET_B = "multiprocess-secret-B-9876543210-zyxwvutsrqponmlk";

/** Distinct free loopback ports: all servers stay open until every port is read, then close. */
export async function freePorts(count: number): Promise<number[]> {
  const servers: Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < count; i++) {
      const server = createServer();
      servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(0, "127.0.0.1", () => resolve());
      });
      const address = server.address();
      if (!address || typeof address === "string") throw new Error("no port assigned");
      ports.push(address.port);
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface FlotillaProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly port: number;
  readonly grpcPort: number;
  /** http://127.0.0.1:port */
  readonly url: string;
  /** http://127.0.0.1:grpcPort (cleartext HTTP/2) */
  readonly grpcUrl: string;
  /** Everything written to stdout so far. */
  stdout(): string;
  stderr(): string;
  /** The stdout lines that are pino JSON records (banner lines are plain text and skipped). */
  logs(): Array<Record<string, unknown>>;
  /** Records at level error (50) or above. */
  errorLogs(): Array<Record<string, unknown>>;
  /** Resolves when the process has exited (immediately if it already has). */
  readonly exited: Promise<Exit>;
  /** null while running. */
  exitStatus(): Exit | null;
  /** Resolves with the first log record matching; rejects if the process exits or the deadline passes. */
  waitForLog(
    match: (record: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
  /** Polls GET /ready until 200; rejects if the process exits first or the deadline passes. */
  waitReady(timeoutMs?: number): Promise<void>;
  /** Waits for exit; rejects (leaving the process running) if the deadline passes first. */
  waitExit(timeoutMs: number): Promise<Exit>;
  /** SIGTERM, then SIGKILL if it has not exited after graceMs. Resolves once it has exited. */
  stop(graceMs?: number): Promise<Exit>;
  /** Output for assertion messages. */
  describe(): string;
}

const running = new Set<ChildProcess>();

// Last resort: if the test worker itself goes away, take the children with it.
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** SIGKILLs every child this module started that is still running, and waits for them. */
export async function killAll(): Promise<void> {
  const children = [...running];
  await Promise.all(
    children.map(
      (child) =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          child.once("exit", () => resolve());
          child.kill("SIGKILL");
        }),
    ),
  );
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export interface StartOptions {
  /** FLOTILLA_* and other variables; FLOTILLA_* from the test runner's environment are dropped. */
  env?: Record<string, string>;
  /** Extra arguments after the command and the listen options. */
  args?: string[];
  /** Preset ports (default: two fresh free ones). */
  port?: number;
  grpcPort?: number;
}

/** Starts `node dist/src/cli/main.js <command> --host 127.0.0.1 --port P --grpc-port G ...`. */
export async function startFlotilla(
  command: "hub" | "up" | "agent",
  options: StartOptions = {},
): Promise<FlotillaProcess> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first`);
  const listens = command !== "agent";
  const [freeA, freeB] =
    !listens || (options.port !== undefined && options.grpcPort !== undefined)
      ? []
      : await freePorts(2);
  const port = options.port ?? freeA!;
  const grpcPort = options.grpcPort ?? freeB!;
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("FLOTILLA_")) env[k] = v;
  // Hub replicas of one installation share a master key; `up` generates its own beside its data.
  const key = command === "hub" ? { FLOTILLA_MASTER_KEY: TEST_MASTER_KEY } : {};
  // Two test files run at once, each with up to three replicas, against PostgreSQL's default 100
  // connections: a replica's pool of 8 (the default is 20) leaves room for all of them.
  const pool = command === "agent" ? {} : { FLOTILLA_DB_POOL_MAX: "8" };
  Object.assign(env, { FLOTILLA_LOG_LEVEL: "info" }, pool, key, options.env);
  const listen = listens
    ? ["--host", "127.0.0.1", "--port", String(port), "--grpc-port", String(grpcPort)]
    : [];
  // Agents in tests take an ephemeral admin port, so several can run side by side.
  const adminPort =
    command === "agent" && !(options.args ?? []).includes("--admin-port")
      ? ["--admin-port", "0"]
      : [];
  const args = [CLI, command, ...listen, ...adminPort, ...(options.args ?? [])];
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (child.pid === undefined) throw new Error(`could not spawn ${args.join(" ")}`);
  running.add(child);
  let out = "";
  let err = "";
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
    out += chunk;
  });
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
    err += chunk;
  });
  let status: Exit | null = null;
  const exited = new Promise<Exit>((resolve) => {
    // "close" fires after the exit and after stdio has drained, so the output is complete.
    child.once("close", (code, signal) => {
      running.delete(child);
      status = { code, signal };
      resolve(status);
    });
  });
  const url = `http://127.0.0.1:${port}`;

  const proc: FlotillaProcess = {
    child,
    pid: child.pid,
    port,
    grpcPort,
    url,
    grpcUrl: `http://127.0.0.1:${grpcPort}`,
    stdout: () => out,
    stderr: () => err,
    logs() {
      const records: Array<Record<string, unknown>> = [];
      for (const line of out.split("\n")) {
        if (!line.startsWith("{")) continue;
        try {
          records.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          // A line cut by a kill: not a record.
        }
      }
      return records;
    },
    errorLogs() {
      return proc.logs().filter((r) => typeof r.level === "number" && r.level >= 50);
    },
    exited,
    exitStatus: () => status,
    describe() {
      return `${command} pid ${child.pid} (${status ? `exited ${JSON.stringify(status)}` : "running"})\n--- stdout ---\n${out}\n--- stderr ---\n${err}`;
    },
    async waitForLog(match, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        const found = proc.logs().find(match);
        if (found) return found;
        if (status) break;
        await sleep(50);
      }
      throw new Error(`no matching log line after ${timeoutMs} ms\n${proc.describe()}`);
    },
    async waitReady(timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      let last = "no answer yet";
      while (Date.now() < deadline) {
        if (status) throw new Error(`exited before it was ready\n${proc.describe()}`);
        try {
          const res = await fetch(`${url}/ready`, { signal: AbortSignal.timeout(2_000) });
          await res.body?.cancel();
          if (res.status === 200) return;
          last = `GET /ready answered ${res.status}`;
        } catch (e) {
          last = (e as Error).message;
        }
        await sleep(150);
      }
      throw new Error(`not ready after ${timeoutMs} ms (${last})\n${proc.describe()}`);
    },
    async waitExit(timeoutMs) {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`still running after ${timeoutMs} ms\n${proc.describe()}`)),
          timeoutMs,
        );
      });
      try {
        return await Promise.race([exited, timeout]);
      } finally {
        clearTimeout(timer);
      }
    },
    async stop(graceMs = 15_000) {
      if (status) return status;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
  return proc;
}

/** POSTs a Connect unary JSON request; returns the status, the parsed body and the headers. */
export async function connectJson(
  baseUrl: string,
  method: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }> {
  const res = await fetch(`${baseUrl}/flotilla.v1.IdentityService/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(15_000),
  });
  const text = await res.text();
  let parsed: Record<string, unknown> = {};
  try {
    parsed = text ? (JSON.parse(text) as Record<string, unknown>) : {};
  } catch {
    parsed = { raw: text };
  }
  return { status: res.status, body: parsed, headers: res.headers };
}
