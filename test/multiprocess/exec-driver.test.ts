// Deployments that really run: `flotilla up` (hub and local agent in one process) runs the example
// HTTP service with the exec driver, as the unprivileged workload user; config reaches it on
// redeploy; crashes restart it; an agent restart adopts it; stop and delete leave no process.
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ServicesService } from "../../src/gen/flotilla/v1/services_pb.js";
import { CLI, type FlotillaProcess, killAll, ROOT, sleep, startFlotilla } from "./procs.js";

const ADMIN = { email: "exec@example.com", password: "exec-password-1" };
const SECRET = `s3cret-${randomBytes(6).toString("hex")}`;
const SHORT_SECRET = `p${randomBytes(2).toString("hex")}`;

// JSON answers of the API under test, read field by field.
// biome-ignore lint/suspicious/noExplicitAny: a JSON document of any shape
type Json = Record<string, any>;

describe("the exec driver under flotilla up", () => {
  let dir: string;
  let up: FlotillaProcess;
  let token: string;
  let environmentId: string;
  const marker = `flotilla-test-${randomBytes(4).toString("hex")}`;

  async function rpc(path: string, body: unknown) {
    const res = await fetch(`${up.url}/flotilla.v1.${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
    const json = (await res.json()) as Record<string, never>;
    if (res.status !== 200) throw new Error(`${path}: ${res.status} ${JSON.stringify(json)}`);
    return json as Json;
  }

  /** Pids of processes whose command line carries this test's marker (ours, nobody else's). */
  function instances(tag: string): number[] {
    try {
      return execFileSync("pgrep", ["-f", `${marker}-${tag}`], { encoding: "utf8" })
        .trim()
        .split("\n")
        .filter(Boolean)
        .map(Number);
    } catch {
      return [];
    }
  }

  async function observed(serviceId: string, until: (o: Json) => boolean) {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const s = (await rpc("ServicesService/GetService", { serviceId })).service;
      if (until(s.observed ?? {})) return s.observed as Record<string, string>;
      if (Date.now() > deadline)
        throw new Error(`observed state stuck at ${JSON.stringify(s.observed)}`);
      await sleep(100);
    }
  }

  async function startUp() {
    up = await startFlotilla("up", {
      args: ["--data-dir", join(dir, "data")],
      env: { FLOTILLA_ADMIN_EMAIL: ADMIN.email, FLOTILLA_ADMIN_PASSWORD: ADMIN.password },
    });
    await up.waitReady(60_000);
  }

  async function createHello(tag: string, extra: Record<string, unknown> = {}) {
    const r = await rpc("ServicesService/CreateService", {
      environmentId,
      name: tag,
      visibility: "VISIBILITY_PRIVATE",
      spec: {
        driver: "DRIVER_EXEC",
        exec: {
          command: process.execPath,
          args: [join(ROOT, "examples", "hello-server.mjs"), `${marker}-${tag}`],
          port: 8000,
        },
        healthCheck: { type: "http", path: "/healthz" },
        restartPolicy: "RESTART_POLICY_ALWAYS",
      },
      ...extra,
    });
    return r.service.id as string;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "flotilla-exec-"));
    await startUp();
    await up.waitForLog((r) => r.msg === "connected to the hub", 20_000);
    const login = await fetch(`${up.url}/flotilla.v1.IdentityService/Login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(ADMIN),
    });
    token = ((await login.json()) as { sessionToken: string }).sessionToken;
    const project = await rpc("ProjectService/CreateProject", { name: "Exec" });
    environmentId = project.production.id;
  }, 120_000);

  afterAll(async () => {
    await killAll();
    for (const tag of ["web", "crash", "gone", "waited", "guesser"])
      for (const pid of instances(tag)) process.kill(pid, "SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });

  it("deploys the example service, serves at the reported endpoint, and a redeploy carries new config", async () => {
    const serviceId = await createHello("web");
    await rpc("ConfigService/SetConfig", {
      target: { scope: "CONFIG_SCOPE_SERVICE", id: serviceId },
      key: "GREETING",
      value: "hello",
      kind: "CONFIG_KIND_VARIABLE",
    });
    await rpc("ConfigService/SetConfig", {
      target: { scope: "CONFIG_SCOPE_SERVICE", id: serviceId },
      key: "API_KEY",
      value: SECRET,
      kind: "CONFIG_KIND_SECRET",
    });
    const first = await rpc("ServicesService/Deploy", { serviceId });
    const o1 = await observed(
      serviceId,
      (o) => o.status === "running" && o.deploymentId === first.deployment.id,
    );
    expect(o1.endpoint).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(await (await fetch(`http://${o1.endpoint}/`)).text()).toMatch(/^hello from web/);
    // The workload runs as the unprivileged user, not as root.
    const [pid] = instances("web");
    expect(
      execFileSync("ps", ["-o", "user=", "-p", String(pid)], { encoding: "utf8" }).trim(),
    ).not.toBe("root");

    await rpc("ConfigService/SetConfig", {
      target: { scope: "CONFIG_SCOPE_SERVICE", id: serviceId },
      key: "GREETING",
      value: "bonjour",
      kind: "CONFIG_KIND_VARIABLE",
    });
    const second = await rpc("ServicesService/Deploy", { serviceId });
    const o2 = await observed(
      serviceId,
      (o) => o.status === "running" && o.deploymentId === second.deployment.id,
    );
    expect(await (await fetch(`http://${o2.endpoint}/`)).text()).toMatch(/^bonjour from web/);
    expect(instances("web")).toHaveLength(1);
    const history = await rpc("ServicesService/ListDeployments", { serviceId });
    expect(history.deployments.map((d: { status: string }) => d.status)).toEqual([
      "running",
      "superseded",
    ]);
    // The secret reached the workload's environment only; no log line of hub or agent has it.
    expect(up.stdout() + up.stderr()).not.toContain(SECRET);
    // The agent's pid files keep the env to restart an adopted instance, sealed.
    const instancesDir = join(dir, "data", "agent", "instances");
    const pidFiles = readdirSync(instancesDir).map((f) =>
      readFileSync(join(instancesDir, f), "utf8"),
    );
    expect(pidFiles.length).toBeGreaterThan(0);
    for (const text of pidFiles) expect(text).not.toContain(SECRET);
  }, 60_000);

  it("a job runs in the service's context: its config, as the workload user; output comes back, secrets masked", async () => {
    const services = (await rpc("ServicesService/ListServices", {})).services as Array<{
      id: string;
      slug: string;
    }>;
    const web = services.find((x) => x.slug === "web")!;
    // A secret shorter than the 8 characters below which plain config values are left alone.
    await rpc("ConfigService/SetConfig", {
      target: { scope: "CONFIG_SCOPE_SERVICE", id: web.id },
      key: "PIN",
      value: SHORT_SECRET,
      kind: "CONFIG_KIND_SECRET",
    });
    const cli = spawnSync(
      process.execPath,
      [
        CLI,
        "run",
        web.id,
        "--",
        "sh",
        "-c",
        'echo "$GREETING"; echo "key=$API_KEY"; echo "pin=$PIN"; id -u; exit 3',
      ],
      {
        cwd: ROOT,
        env: { ...process.env, FLOTILLA_HUB: up.url, FLOTILLA_TOKEN: token },
        encoding: "utf8",
        timeout: 60_000,
      },
    );
    expect(cli.status).toBe(3);
    const [greeting, key, pin, uid] = cli.stdout.trim().split("\n");
    expect(greeting).toBe("bonjour");
    // The job had the secret; what it printed is masked before it reaches the dispatch row.
    expect(key).toBe("key=[redacted]");
    expect(pin).toBe("pin=[redacted]");
    expect(uid).not.toBe("0");
    expect(cli.stdout + cli.stderr).not.toContain(SECRET);

    // A short secret inside a longer value: the longer one is masked whole, not cut around the
    // short one (which would leave the password beside it in clear).
    const password = `pw-${randomBytes(6).toString("hex")}`;
    for (const [key, value, kind] of [
      ["DB_USER", "adm", "CONFIG_KIND_SECRET"],
      ["DATABASE_URL", `postgres://adm:${password}@db/app`, "CONFIG_KIND_VARIABLE"],
    ])
      await rpc("ConfigService/SetConfig", {
        target: { scope: "CONFIG_SCOPE_SERVICE", id: web.id },
        key,
        value,
        kind,
      });
    const run = (serviceId: string, script: string) =>
      spawnSync(process.execPath, [CLI, "run", serviceId, "--", "sh", "-c", script], {
        cwd: ROOT,
        env: { ...process.env, FLOTILLA_HUB: up.url, FLOTILLA_TOKEN: token },
        encoding: "utf8",
        timeout: 60_000,
      });
    const url = run(web.id, 'echo "url=$DATABASE_URL"');
    expect(url.stdout.trim()).toBe("url=[redacted]");
    expect(url.stdout).not.toContain(password);
    // Another service's job is masked with its own config only: printing a guess of web's short
    // secret does not tell whether it is one.
    const other = await createHello("guesser");
    const guess = run(other, `echo "guess=${SHORT_SECRET}"`);
    expect(guess.stdout.trim()).toBe(`guess=${SHORT_SECRET}`);
  }, 60_000);

  it("a job's binary output is recorded, and a job whose child escapes its group still ends on time", async () => {
    const services = (await rpc("ServicesService/ListServices", {})).services as Array<{
      id: string;
      slug: string;
    }>;
    const web = services.find((x) => x.slug === "web")!;
    const run = (args: string[]) =>
      spawnSync(process.execPath, [CLI, "run", web.id, ...args], {
        cwd: ROOT,
        env: { ...process.env, FLOTILLA_HUB: up.url, FLOTILLA_TOKEN: token },
        encoding: "utf8",
        timeout: 60_000,
      });
    // 20 MB of output: the agent keeps the last 64 KiB, the rest streams past.
    const chatty = run([
      "--",
      "sh",
      "-c",
      "head -c 20000000 /dev/zero | tr '\\0' x; echo; echo last",
    ]);
    expect(chatty.status, chatty.stderr).toBe(0);
    expect(chatty.stdout.endsWith("\nlast\n")).toBe(true);
    expect(chatty.stdout.length).toBeLessThanOrEqual(64 * 1024);
    const binary = run(["--", "printf", "a\\000b"]);
    expect(binary.status, binary.stderr).toBe(0);
    expect(binary.stdout).toBe("a\uFFFDb");
    const started = Date.now();
    const escaped = run(["--", "sh", "-c", "setsid sleep 30 & echo started"]);
    expect(escaped.status, escaped.stderr).toBe(0);
    expect(escaped.stdout.trim()).toBe("started");
    expect(Date.now() - started).toBeLessThan(15_000);
  }, 60_000);

  it("a workload killed with SIGKILL is restarted within its backoff, on the same endpoint", async () => {
    const serviceId = await createHello("crash");
    await rpc("ServicesService/Deploy", { serviceId });
    const before = await observed(serviceId, (o) => o.status === "running");
    const [pid] = instances("crash");
    process.kill(pid!, "SIGKILL");
    await observed(serviceId, (o) => o.status === "failed");
    const after = await observed(serviceId, (o) => o.status === "running");
    expect(after.endpoint).toBe(before.endpoint);
    const now = instances("crash");
    expect(now).toHaveLength(1);
    expect(now[0]).not.toBe(pid);
    expect((await fetch(`http://${after.endpoint}/`)).status).toBe(200);
  }, 60_000);

  it("after the agent is killed with SIGKILL and restarted, instances are adopted: none doubled, none orphaned", async () => {
    const before = [...instances("web"), ...instances("crash")].sort();
    expect(before).toHaveLength(2);
    up.child.kill("SIGKILL");
    await up.exited;
    // The workloads outlive their agent...
    expect([...instances("web"), ...instances("crash")].sort()).toEqual(before);
    await startUp();
    await up.waitForLog(
      (r) => r.msg === "adopted instances that survived the agent restart",
      20_000,
    );
    await up.waitForLog((r) => r.msg === "connected to the hub", 20_000);
    // ...and are adopted, not started again.
    await sleep(1000);
    expect([...instances("web"), ...instances("crash")].sort()).toEqual(before);
  }, 90_000);

  it("stop and delete leave no process behind", async () => {
    const serviceId = await createHello("gone");
    await rpc("ServicesService/Deploy", { serviceId });
    await observed(serviceId, (o) => o.status === "running");
    expect(instances("gone")).toHaveLength(1);
    await rpc("ServicesService/StopService", { serviceId });
    await observed(serviceId, (o) => o.status === "stopped");
    expect(instances("gone")).toEqual([]);
    await rpc("ServicesService/StartService", { serviceId });
    await observed(serviceId, (o) => o.status === "running");
    expect(instances("gone")).toHaveLength(1);
    await rpc("ServicesService/DeleteService", { serviceId });
    const deadline = Date.now() + 15_000;
    while (instances("gone").length && Date.now() < deadline) await sleep(100);
    expect(instances("gone")).toEqual([]);
  }, 60_000);

  it("logs: the last lines, then new ones while following, from the agent that runs the service", async () => {
    const r = await rpc("ServicesService/CreateService", {
      environmentId,
      name: "ticker",
      visibility: "VISIBILITY_PRIVATE",
      spec: {
        driver: "DRIVER_EXEC",
        exec: {
          command: "sh",
          args: ["-c", `echo started ${marker}-ticker; while true; do echo tick; sleep 0.2; done`],
        },
      },
    });
    const serviceId = r.service.id as string;
    await rpc("ServicesService/Deploy", { serviceId });
    await observed(serviceId, (o) => o.status === "running");
    const client = createClient(
      ServicesService,
      createConnectTransport({
        baseUrl: up.url,
        httpVersion: "1.1",
        interceptors: [
          (next) => async (req) => {
            req.header.set("authorization", `Bearer ${token}`);
            return next(req);
          },
        ],
      }),
    );
    const lines: string[] = [];
    for await (const batch of client.streamLogs({ serviceId, lines: 1000 }))
      lines.push(...batch.lines);
    expect(lines[0]).toBe(`started ${marker}-ticker`);
    const abort = new AbortController();
    const followed: string[] = [];
    const following = (async () => {
      for await (const batch of client.streamLogs(
        { serviceId, lines: 1, follow: true },
        { signal: abort.signal },
      ))
        followed.push(...batch.lines);
    })().catch(() => {});
    const deadline = Date.now() + 10_000;
    while (followed.length < 5 && Date.now() < deadline) await sleep(100);
    abort.abort();
    await following;
    expect(followed.length).toBeGreaterThanOrEqual(5);
    expect(followed.slice(1).every((l) => l === "tick")).toBe(true);
    await rpc("ServicesService/DeleteService", { serviceId });
  }, 60_000);

  it("SIGTERM stops flotilla up promptly while workloads run, and they keep running for the next start", async () => {
    const running = instances("web");
    expect(running).toHaveLength(1);
    const stopped = await up.stop(15_000);
    expect(stopped).toEqual({ code: 0, signal: null });
    expect(instances("web")).toEqual(running);
    await startUp();
    await up.waitForLog((r) => r.msg === "connected to the hub", 20_000);
  }, 60_000);

  it("a spec whose command does not exist ends failed with that reason", async () => {
    const r = await rpc("ServicesService/CreateService", {
      environmentId,
      name: "broken",
      visibility: "VISIBILITY_PRIVATE",
      spec: { driver: "DRIVER_EXEC", exec: { command: "/no/such/binary" } },
    });
    await rpc("ServicesService/Deploy", { serviceId: r.service.id });
    const o = await observed(r.service.id, (x) => x.status === "failed");
    expect(o.reason).toBe("command not found: /no/such/binary");
    // ...and the CLI shows it.
    const shown = execFileSync(process.execPath, [CLI, "services", "get", r.service.id], {
      cwd: ROOT,
      env: { ...process.env, FLOTILLA_HUB: up.url, FLOTILLA_TOKEN: token },
      encoding: "utf8",
    });
    expect(shown).toContain("failed (command not found: /no/such/binary)");
    // flotilla deploy waits for the agent and exits 1 with the reason.
    const cli = (args: string[]) =>
      spawnSync(process.execPath, [CLI, ...args], {
        cwd: ROOT,
        env: { ...process.env, FLOTILLA_HUB: up.url, FLOTILLA_TOKEN: token },
        encoding: "utf8",
        timeout: 60_000,
      });
    const failed = cli(["deploy", r.service.id]);
    expect(failed.status).toBe(1);
    expect(failed.stdout).toContain("failed: command not found: /no/such/binary");
  }, 60_000);

  it("what an application prints stays out of a failure's reason, which viewers read; flotilla deploy shows it to whoever may read logs", async () => {
    // What it prints is computed by the shell, so the service's own command line (which a
    // viewer reads in its spec) does not hold it.
    const hex = randomBytes(6).toString("hex");
    const printed = `session=42-${hex}`;
    const r = await rpc("ServicesService/CreateService", {
      environmentId,
      name: "talker",
      visibility: "VISIBILITY_PRIVATE",
      spec: {
        driver: "DRIVER_EXEC",
        exec: { command: "/bin/sh", args: ["-c", `echo session=$((6 * 7))-${hex}; exit 1`] },
      },
    });
    const serviceId = r.service.id as string;
    const cli = spawnSync(process.execPath, [CLI, "deploy", serviceId], {
      cwd: ROOT,
      env: { ...process.env, FLOTILLA_HUB: up.url, FLOTILLA_TOKEN: token },
      encoding: "utf8",
      timeout: 60_000,
    });
    expect(cli.status).toBe(1);
    expect(cli.stdout).toContain("failed: /bin/sh exited with code 1");
    expect(cli.stdout).not.toContain(printed);
    expect(cli.stderr).toMatch(new RegExp(`the last lines it printed[^\\n]*\\n\\s+${printed}`));
    // A viewer (no logs.read) reads the reason and the server's dispatches: no output in them.
    const email = `viewer-${randomBytes(4).toString("hex")}@example.com`;
    await rpc("OrganizationService/AddMember", {
      email,
      role: "ROLE_VIEWER",
      initialPassword: ADMIN.password,
    });
    const viewerLogin = await fetch(`${up.url}/flotilla.v1.IdentityService/Login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email, password: ADMIN.password }),
    });
    const viewer = ((await viewerLogin.json()) as { sessionToken: string }).sessionToken;
    const asViewer = async (path: string, body: unknown) => {
      const res = await fetch(`${up.url}/flotilla.v1.${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${viewer}` },
        body: JSON.stringify(body),
      });
      expect(res.status, path).toBe(200);
      return res.text();
    };
    const service = await asViewer("ServicesService/GetService", { serviceId });
    expect(service).toContain("exited with code 1");
    expect(service).not.toContain(printed);
    expect(await asViewer("ServerService/ListDispatches", { server: "local" })).not.toContain(
      printed,
    );
    expect(await asViewer("ServicesService/ListEvents", { serviceId })).not.toContain(printed);
    await rpc("ServicesService/DeleteService", { serviceId });
  }, 60_000);

  it("flotilla deploy waits until the deployment runs and prints where, exit 0", async () => {
    const serviceId = await createHello("waited");
    const r = spawnSync(process.execPath, [CLI, "deploy", serviceId], {
      cwd: ROOT,
      env: { ...process.env, FLOTILLA_HUB: up.url, FLOTILLA_TOKEN: token },
      encoding: "utf8",
      timeout: 60_000,
    });
    expect(r.status, r.stderr).toBe(0);
    const endpoint = /is running at (\S+)\./.exec(r.stdout)?.[1];
    expect(endpoint).toMatch(/^127\.0\.0\.1:\d+$/);
    expect((await fetch(`http://${endpoint}/`)).status).toBe(200);
    expect(r.stderr).toContain("waited: running");
    await rpc("ServicesService/DeleteService", { serviceId });
  }, 60_000);
});
