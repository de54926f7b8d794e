// The newcomer's path through the core domain, with the real `flotilla` binary against `flotilla up`:
// the CLI and the Connect JSON API (as curl sends it) reach the same results.
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI, type FlotillaProcess, killAll, ROOT, startFlotilla } from "./procs.js";

const run = promisify(execFile);
const EMAIL = "newcomer@example.com";
const PASSWORD = "newcomer-password-1";
const SECRET_VALUE = "cli-secret-value-8c1f";

describe("core domain from the CLI and from the API", () => {
  let dir: string;
  let up: FlotillaProcess;
  let env: NodeJS.ProcessEnv;

  /** Runs the CLI; resolves with its exit code and output even when it fails. */
  async function flotilla(...args: string[]) {
    try {
      const r = await run(process.execPath, [CLI, ...args], { cwd: ROOT, env, timeout: 30_000 });
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  }
  async function flotillaJson(...args: string[]) {
    // Options go before `--`: what follows it is the workload's own command line.
    const split = args.indexOf("--");
    const r = await flotilla(
      ...(split < 0
        ? [...args, "--json"]
        : [...args.slice(0, split), "--json", ...args.slice(split)]),
    );
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout);
  }
  /** A Connect JSON call, exactly as curl would send it. */
  async function api(path: string, body: unknown, token: string) {
    const res = await fetch(`${up.url}/flotilla.v1.${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as Record<string, never> };
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "flotilla-cli-core-"));
    up = await startFlotilla("up", {
      // No local agent: this file is about the core domain's records, not about running them.
      args: ["--data-dir", join(dir, "data"), "--no-agent"],
      env: { FLOTILLA_ADMIN_EMAIL: EMAIL, FLOTILLA_ADMIN_PASSWORD: PASSWORD },
    });
    await up.waitReady(60_000);
    env = { ...process.env, FLOTILLA_CONFIG_DIR: join(dir, "config"), FLOTILLA_HUB: up.url };
    for (const k of ["FLOTILLA_TOKEN", "FLOTILLA_PASSWORD"]) delete env[k];
    const login = await flotilla("login", "--email", EMAIL, "--password", PASSWORD);
    expect(login.code, login.stderr).toBe(0);
  }, 120_000);

  afterAll(async () => {
    await killAll();
    rmSync(dir, { recursive: true, force: true });
  });

  it("services update changes only what it is given: --public keeps the port, health and restart policy", async () => {
    await flotillaJson("projects", "create", "Keep");
    await flotillaJson(
      "services",
      "create",
      "kept",
      "--env",
      "keep/production",
      "--port",
      "3000",
      "--health",
      "http:/healthz",
      "--restart",
      "on-failure",
      "--volume",
      "data:/data",
      "--",
      "node",
      "server.js",
    );
    const spec = {
      exec: { command: "node", args: ["server.js"], port: 3000 },
      healthCheck: { type: "http", path: "/healthz" },
      restartPolicy: "RESTART_POLICY_ON_FAILURE",
      volumes: [{ name: "data", mountPath: "/data" }],
    };
    const made = await flotillaJson("services", "update", "keep/kept", "--public");
    expect(made.visibility).toBe("VISIBILITY_PUBLIC");
    expect(made.spec).toMatchObject(spec);
    const moved = await flotillaJson("services", "update", "keep/kept", "--port", "4000");
    expect(moved.visibility).toBe("VISIBILITY_PUBLIC");
    expect(moved.spec).toMatchObject({ ...spec, exec: { ...spec.exec, port: 4000 } });
  });

  it("creates a project and service, sets a variable and a secret, deploys, lists history and rolls back", async () => {
    const created = await flotillaJson("projects", "create", "Demo");
    expect(created.project.slug).toBe("demo");
    expect(created.production.slug).toBe("production");

    const svc = await flotillaJson(
      "services",
      "create",
      "web",
      "--env",
      "demo/production",
      "--port",
      "3000",
      "--",
      "node",
      "server.js",
      "--verbose",
    );
    expect(svc.service.spec.exec).toMatchObject({
      command: "node",
      args: ["server.js", "--verbose"],
    });
    expect(svc.service.visibility).toBe("VISIBILITY_PRIVATE");

    expect((await flotilla("config", "set", "GREETING=hello", "--service", "demo/web")).code).toBe(
      0,
    );
    const setSecret = await flotilla(
      "config",
      "set",
      `API_KEY=${SECRET_VALUE}`,
      "--secret",
      "--service",
      "demo/web",
    );
    expect(setSecret.code, setSecret.stderr).toBe(0);
    expect(setSecret.stdout).not.toContain(SECRET_VALUE);

    const listed = await flotillaJson("config", "list", "--service", "demo/web");
    expect(listed.entries).toEqual([
      expect.objectContaining({ key: "API_KEY", kind: "secret", value: null }),
      expect.objectContaining({ key: "GREETING", kind: "variable", value: "hello" }),
    ]);

    const first = await flotillaJson("deploy", "demo/web");
    expect(first).toMatchObject({ number: 1, reason: "deploy", desired: true });
    const second = await flotillaJson("deploy", "demo/web");
    expect(second.number).toBe(2);
    const rolledBack = await flotillaJson("rollback", "demo/web");
    expect(rolledBack).toMatchObject({
      number: 3,
      reason: "rollback",
      sourceDeploymentId: first.id,
    });

    const history = await flotillaJson("deployments", "list", "demo/web");
    expect(
      history.map((d: { number: number; desired?: boolean }) => [d.number, Boolean(d.desired)]),
    ).toEqual([
      [3, true],
      [2, false],
      [1, false],
    ]);

    // The same history through the API, as curl sends it: identical JSON.
    const token = JSON.parse((await run("cat", [join(dir, "config", "credentials.json")])).stdout)
      .token as string;
    const viaApi = await api(
      "ServicesService/ListDeployments",
      { serviceId: svc.service.id },
      token,
    );
    expect(viaApi.status).toBe(200);
    expect(viaApi.body.deployments).toEqual(history);

    // A rollback through the API lands in the same history the CLI shows.
    const apiRollback = await api(
      "ServicesService/Rollback",
      { serviceId: svc.service.id, deploymentId: second.id },
      token,
    );
    expect(apiRollback.status).toBe(200);
    const after = await flotillaJson("deployments", "list", "demo/web", "--limit", "1");
    expect(after[0]).toMatchObject({ number: 4, sourceDeploymentId: second.id, desired: true });
  }, 60_000);

  it("reveals a secret only on request, and the reveal is in the audit log without the value", async () => {
    const got = await flotilla("config", "get", "API_KEY", "--service", "demo/web");
    expect(got.code, got.stderr).toBe(0);
    expect(got.stdout.trim()).toBe(SECRET_VALUE);
    const audit = await flotillaJson("audit", "--limit", "5");
    const reveal = audit.find((e: { action: string }) => e.action === "config.reveal");
    expect(reveal.details).toEqual({ key: "API_KEY" });
    expect(JSON.stringify(audit)).not.toContain(SECRET_VALUE);
    expect(up.stdout()).not.toContain(SECRET_VALUE);
  });

  it("imports a .env file in one step and reports the effective config", async () => {
    const file = join(dir, "prod.env");
    writeFileSync(file, "# shared\nLOG_LEVEL=debug\nGREETING='from env'\n");
    const imported = await flotillaJson("config", "import", file, "--env", "demo/production");
    expect(imported.keys).toEqual(["LOG_LEVEL", "GREETING"]);
    const effective = await flotillaJson("config", "list", "--service", "demo/web", "--effective");
    const byKey = Object.fromEntries(
      effective.entries.map((e: { key: string; value: string; from: string }) => [
        e.key,
        [e.value, e.from],
      ]),
    );
    // The service's own GREETING overrides the environment's.
    expect(byKey.GREETING).toEqual(["hello", "service"]);
    expect(byKey.LOG_LEVEL).toEqual(["debug", "environment"]);
    const described = await flotillaJson("services", "get", "demo/web");
    expect(described.configChanged).toBe(true);
  });

  it("gives scripts exit codes: 5 for an unknown service, 2 for an invalid key, 3 without a token", async () => {
    const missing = await flotilla("deploy", "demo/nope");
    expect(missing.code).toBe(5);
    expect(missing.stderr).toContain("resource.not_found");
    const bad = await flotilla("config", "set", "BAD-KEY=1", "--service", "demo/web");
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("validation.failed");
    const anonymous = await flotilla("projects", "list", "--token", "flt_not-a-token");
    expect(anonymous.code).toBe(3);
  });

  it("a flag that is not a number, a file it cannot read or a hub that is not a URL is a usage error (exit 2, config.invalid) naming the flag", async () => {
    const cases: Array<[string[], string]> = [
      [["audit", "--limit", "abc"], "--limit must be a whole number"],
      [["audit", "--limit", "99999999999"], "--limit must be a whole number"],
      [["deployments", "list", "demo/web", "--limit", "x"], "--limit must be a whole number"],
      [["logs", "demo/web", "--lines", "abc"], "--lines must be a whole number"],
      [["servers", "dispatches", "local", "--limit", "x"], "--limit must be a whole number"],
      [["run", "demo/web", "--timeout", "x", "--", "true"], "--timeout must be a whole number"],
      [
        ["apis", "create", "x", "--kind", "rest", "--definition", "@/nonexistent/def.json"],
        "--definition: cannot read /nonexistent/def.json",
      ],
      [["whoami", "--hub", "not-a-url"], "--hub must be an http:// or https:// URL"],
    ];
    for (const [args, message] of cases) {
      const r = await flotilla(...args);
      expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toContain(message);
      expect(r.stderr).toContain("[config.invalid]");
    }
  });

  it("fleet status exits 1 while a member is offline (a gateway that never connected), 0 once it is gone", async () => {
    expect((await flotilla("gateways", "create", "never-connected")).code).toBe(0);
    const down = await flotilla("fleet", "status", "--kind", "gateway", "--refresh");
    expect(down.code, down.stdout).toBe(1);
    expect(down.stdout).toMatch(/never-connected\s+offline/);
    const removed = await flotilla("gateways", "remove", "never-connected");
    expect(removed.code, removed.stderr).toBe(0);
    // --refresh probes again at most once a second.
    await new Promise((r) => setTimeout(r, 1100));
    const after = await flotilla("fleet", "status", "--kind", "gateway", "--refresh");
    expect(after.code, after.stdout).toBe(0);
    expect(after.stdout).not.toContain("never-connected");
  });

  it("streams events live with events --follow", async () => {
    const child = execFile(
      process.execPath,
      [CLI, "events", "--follow", "--json", "--limit", "1"],
      {
        cwd: ROOT,
        env,
      },
    );
    let out = "";
    child.stdout?.on("data", (chunk) => {
      out += chunk;
    });
    try {
      // The first line is the replayed latest event; then a new deployment arrives live.
      const deadline = Date.now() + 10_000;
      while (!out.includes("\n") && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 50));
      const deployed = await flotillaJson("deploy", "demo/web");
      while (!out.includes(deployed.id) && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 50));
      const lines = out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l));
      const live = lines.find((e) => e.subjectId === deployed.id);
      expect(live).toMatchObject({
        type: "deployment.created",
        payload: { number: deployed.number },
      });
    } finally {
      child.kill("SIGTERM");
    }
  });
});
