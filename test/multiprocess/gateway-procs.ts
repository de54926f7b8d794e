// Multi-process test support for gateways: a hub with an owner, RPC calls, `flotilla gateway`
// processes, and a loopback upstream that says which API answered.
import { type ChildProcess, spawn } from "node:child_process";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { CLI, ROOT, sleep } from "./procs.js";

export const ADMIN = { email: "gw-ops@example.com", password: "gw-ops-password-123" };

export async function rpc(
  hubUrl: string,
  path: string,
  body: unknown,
  token?: string,
): Promise<Record<string, unknown>> {
  const res = await fetch(`${hubUrl}/flotilla.v1.${path}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: JSON.stringify(body),
  });
  const json = (await res.json()) as Record<string, unknown>;
  if (res.status !== 200) throw new Error(`${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

/** An upstream on loopback that answers with its name, the path and the headers it got. */
export async function startUpstream(name: string): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = JSON.stringify({
        upstream: name,
        method: req.method,
        path: req.url,
        headers: req.headers,
        bodyBytes: Buffer.concat(chunks).length,
      });
      res.writeHead(200, { "content-type": "application/json", "x-upstream": name });
      res.end(body);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

export interface GatewayProcess {
  child: ChildProcess;
  url: string;
  adminUrl: string;
  stdout(): string;
  logs(): Array<Record<string, unknown>>;
  /** The startup record: routes served from the local store before the hub answered. */
  startup: Record<string, unknown>;
  status(): Promise<{
    deployments: Array<{ apiId: string; deploymentId: string; state: string; deployedAt: number }>;
    routes: number;
  }>;
  ready(): Promise<Record<string, unknown>>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const running = new Set<ChildProcess>();

export async function killGateways(): Promise<void> {
  await Promise.all(
    [...running].map(
      (c) =>
        new Promise<void>((resolve) => {
          c.once("close", () => resolve());
          c.kill("SIGKILL");
        }),
    ),
  );
}

export async function startGatewayProcess(o: {
  hub: string;
  token: string;
  dataDir: string;
  port?: number;
  extra?: string[];
}): Promise<GatewayProcess> {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("FLOTILLA_")) env[k] = v;
  const child = spawn(
    process.execPath,
    [
      CLI,
      "gateway",
      "--hub",
      o.hub,
      "--token",
      o.token,
      "--port",
      String(o.port ?? 0),
      "--host",
      "127.0.0.1",
      "--admin-port",
      "0",
      "--data-dir",
      o.dataDir,
      "--hash-check-seconds",
      "1",
      ...(o.extra ?? []),
    ],
    { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] },
  );
  running.add(child);
  let out = "";
  let err = "";
  child.stdout!.setEncoding("utf8").on("data", (c: string) => {
    out += c;
  });
  child.stderr!.setEncoding("utf8").on("data", (c: string) => {
    err += c;
  });
  let exited = false;
  const closed = new Promise<void>((resolve) =>
    child.once("close", () => {
      exited = true;
      running.delete(child);
      resolve();
    }),
  );
  const logs = () =>
    out
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .flatMap((l) => {
        try {
          return [JSON.parse(l) as Record<string, unknown>];
        } catch {
          return [];
        }
      });
  const deadline = Date.now() + 20_000;
  let startup: Record<string, unknown> | undefined;
  while (!startup) {
    startup = logs().find((r) => r.msg === "gateway serving from its local store");
    if (startup) break;
    if (exited || Date.now() > deadline)
      throw new Error(`gateway did not start\n--- stdout ---\n${out}\n--- stderr ---\n${err}`);
    await sleep(30);
  }
  const url = String(startup.url);
  const adminUrl = String(startup.adminUrl);
  return {
    child,
    url,
    adminUrl,
    stdout: () => out,
    logs,
    startup,
    async status() {
      return (await (await fetch(`${adminUrl}/status`)).json()) as Awaited<
        ReturnType<GatewayProcess["status"]>
      >;
    },
    async ready() {
      return (await (await fetch(`${adminUrl}/ready`)).json()) as Record<string, unknown>;
    },
    async kill(signal = "SIGKILL") {
      if (exited) return;
      child.kill(signal);
      await closed;
    },
  };
}

/** Polls until fn returns a truthy value; throws with the last value after the deadline. */
export async function eventually<T>(
  fn: () => Promise<T>,
  what: string,
  timeoutMs = 20_000,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
      last = v;
    } catch (e) {
      last = (e as Error).message;
    }
    if (Date.now() > deadline)
      throw new Error(`${what}: not after ${timeoutMs} ms (${String(last)})`);
    await sleep(100);
  }
}
