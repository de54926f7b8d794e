// Managed PostgreSQL for real: a hub on PostgreSQL, an agent process running the host's PostgreSQL
// binaries as the unprivileged workload user, and the `flotilla` binary as a new user drives it.
// The URI it prints works with psql; rows survive a redeploy, an agent SIGKILL and restart, and a
// restart; backup, drop, restore brings them back; a stopped database's backup fails with its
// reason; a schedule takes backups through the agent; the password shows up in no log, row or file.
import { execFile, execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase, testPool } from "../support/pg.js";
import {
  CLI,
  type FlotillaProcess,
  killAll,
  ROOT,
  SECRET_A,
  sleep,
  startFlotilla,
} from "./procs.js";

const run = promisify(execFile);
const ADMIN = { email: "dba@example.com", password: "dba-password-123" };
const PSQL = "/usr/lib/postgresql/15/bin/psql";

describe("managed PostgreSQL with the real binary, a hub and an agent", () => {
  let database: TestDatabase;
  let hubDb: pg.Pool;
  let hub: FlotillaProcess;
  let agent: FlotillaProcess;
  let dir: string;
  let agentDir: string;
  let env: NodeJS.ProcessEnv;
  let joinToken: string;
  let uri: string;
  let password: string;
  let serviceId: string;
  /** Every CLI output, for the check that the password is printed only where asked for. */
  const outputs: string[] = [];

  async function flotilla(...args: string[]) {
    let r: { code: number; stdout: string; stderr: string };
    try {
      const ok = await run(process.execPath, [CLI, ...args], { cwd: ROOT, env, timeout: 120_000 });
      r = { code: 0, stdout: ok.stdout, stderr: ok.stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      r = { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
    if (!args.includes("connect-info") && args[1] !== "create") outputs.push(r.stdout, r.stderr);
    return r;
  }
  async function flotillaJson(...args: string[]) {
    const r = await flotilla(...args, "--json");
    expect(r.code, `${args.join(" ")}: ${r.stderr}`).toBe(0);
    return JSON.parse(r.stdout);
  }
  /** psql with the URI Flotilla printed; returns the unaligned, tuples-only output. */
  function psql(sql: string): string {
    return execFileSync(PSQL, [uri, "-XAtc", sql], {
      encoding: "utf8",
      timeout: 20_000,
      stdio: ["ignore", "pipe", "pipe"],
    }).trim();
  }
  async function startAgent(args: string[]) {
    const a = await startFlotilla("agent", {
      args: [...args, "--data-dir", agentDir],
      env: { FLOTILLA_POSTGRES_BINDIR: "" },
    });
    await a.waitForLog((r) => r.msg === "connected to the hub", 30_000);
    return a;
  }
  async function observed(status: string) {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const s = await flotillaJson("services", "get", "shop/pg");
      if (s.service.observed?.status === status) return s.service;
      if (Date.now() > deadline)
        throw new Error(`pg stuck at ${JSON.stringify(s.service.observed)}`);
      await sleep(200);
    }
  }
  /** Pids of PostgreSQL servers running from this test's directory (ours only). */
  function postgresPids(): number[] {
    try {
      return execFileSync("pgrep", ["-f", `postgres -D ${dir}`], { encoding: "utf8" })
        .trim()
        .split("\n")
        .filter(Boolean)
        .map(Number);
    } catch {
      return [];
    }
  }

  beforeAll(async () => {
    database = await createTestDatabase("mp_databases");
    hubDb = testPool(database.url, 2);
    dir = mkdtempSync(join(tmpdir(), "flotilla-databases-"));
    // The workload user (nobody) must be able to walk down to its data directory.
    chmodSync(dir, 0o755);
    agentDir = join(dir, "agent");
    mkdirSync(agentDir, { mode: 0o755 });
    hub = await startFlotilla("hub", {
      env: {
        FLOTILLA_DATABASE_URL: database.url,
        FLOTILLA_SESSION_SECRET: SECRET_A,
        FLOTILLA_ADMIN_EMAIL: ADMIN.email,
        FLOTILLA_ADMIN_PASSWORD: ADMIN.password,
        // Sweeps (schedules included) twice a second.
        FLOTILLA_SWEEP_INTERVAL_MS: "500",
      },
    });
    await hub.waitReady(60_000);
    env = { ...process.env, FLOTILLA_CONFIG_DIR: join(dir, "config"), FLOTILLA_HUB: hub.url };
    for (const k of ["FLOTILLA_TOKEN", "FLOTILLA_PASSWORD"]) delete env[k];
    const login = await flotilla("login", "--email", ADMIN.email, "--password", ADMIN.password);
    expect(login.code, login.stderr).toBe(0);
    await flotillaJson("projects", "create", "Shop");
    joinToken = (await flotillaJson("servers", "add", "box")).token;
    agent = await startAgent(["--hub", hub.url, "--join-token", joinToken]);
  }, 120_000);

  afterAll(async () => {
    await killAll();
    for (const pid of postgresPids()) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {}
    }
    await hubDb?.end();
    await database?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("db create prints a URI that psql connects with, within seconds", async () => {
    const r = await flotillaJson("db", "create", "pg", "--env", "shop/production");
    expect(r.service.kind).toBe("database");
    expect(r.service.visibility).toBe("VISIBILITY_PRIVATE");
    expect(r.connection.status).toBe("running");
    serviceId = r.service.id;
    uri = r.connection.uri;
    password = r.connection.password;
    expect(uri).toMatch(/^postgresql:\/\/pg:[A-Za-z0-9_-]{32}@127\.0\.0\.1:\d+\/pg$/);
    expect(psql("select 1")).toBe("1");
    // It runs as the workload user and listens on loopback only.
    const [pid] = postgresPids();
    expect(
      execFileSync("ps", ["-o", "user=", "-p", String(pid)], { encoding: "utf8" }).trim(),
    ).not.toBe("root");
    expect(psql("show listen_addresses")).toBe("127.0.0.1");
    expect(psql("show password_encryption")).toBe("scram-sha-256");
    // The human form prints the same URI on stdout.
    const info = await flotilla("db", "connect-info", "shop/pg");
    expect(info.stdout).toContain(uri);
  });

  it("rows survive a redeploy, an agent SIGKILL and restart (the server is adopted), and a restart", async () => {
    psql("create table orders (id int primary key, item text)");
    psql("insert into orders select g, 'item ' || g from generate_series(1, 500) g");
    const deployed = await flotilla("deploy", "shop/pg");
    expect(deployed.code, deployed.stderr).toBe(0);
    expect(psql("select count(*) from orders")).toBe("500");

    agent.child.kill("SIGKILL");
    await agent.exited;
    agent = await startAgent([]);
    await agent.waitForLog((r) => r.msg?.toString().startsWith("adopted instances") === true);
    expect(psql("select count(*) from orders")).toBe("500");

    const restarted = await flotilla("services", "restart", "shop/pg");
    expect(restarted.code, restarted.stderr).toBe(0);
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        if (psql("select count(*) from orders") === "500") break;
      } catch {}
      if (Date.now() > deadline) throw new Error("not back after the restart");
      await sleep(200);
    }
    // The restart reused the port: the URI printed at creation still works.
    expect((await flotillaJson("db", "connect-info", "shop/pg")).uri).toBe(uri);
  });

  it("backup, drop the table, restore: the rows are back; the file's size and checksum match the hub's record", async () => {
    const backup = await flotillaJson("db", "backup", "shop/pg");
    expect(backup.state).toBe("done");
    const file = join(agentDir, "backups", serviceId, backup.file);
    const bytes = readFileSync(file);
    expect(String(bytes.length)).toBe(backup.sizeBytes);
    expect(createHash("sha256").update(bytes).digest("hex")).toBe(backup.sha256);
    expect(bytes.subarray(0, 5).toString()).toBe("PGDMP"); // pg_dump's custom format

    psql("drop table orders");
    // Without --yes and without a terminal to ask on, the destructive step is refused.
    const unconfirmed = await flotilla("db", "restore", "shop/pg", backup.id);
    expect(unconfirmed.code).toBe(2);
    expect(unconfirmed.stderr).toContain("--yes");
    expect(psql("select count(*) from pg_tables where tablename = 'orders'")).toBe("0");

    const restored = await flotilla("db", "restore", "shop/pg", backup.id, "--yes");
    expect(restored.code, restored.stderr).toBe(0);
    expect(psql("select count(*), max(item) from orders")).toBe("500|item 99");

    const list = await flotillaJson("db", "backups", "shop/pg");
    expect(list.map((b: { id: string; state: string }) => [b.id, b.state])).toEqual([
      [backup.id, "done"],
    ]);
  });

  it("a backup of a stopped database fails with a clear reason, recorded as failed", async () => {
    expect((await flotilla("services", "stop", "shop/pg")).code).toBe(0);
    await observed("stopped");
    expect(postgresPids()).toEqual([]);
    const r = await flotilla("db", "backup", "shop/pg");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("pg is not running on this server");
    const list = await flotillaJson("db", "backups", "shop/pg");
    expect(list[0].state).toBe("failed");
    expect(list[0].error).toContain("start it");
    expect((await flotilla("services", "start", "shop/pg")).code).toBe(0);
    await observed("running");
    expect(psql("select count(*) from orders")).toBe("500");
  });

  it("the CLI cannot make it PUBLIC", async () => {
    const r = await flotilla("services", "update", "shop/pg", "--public");
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("never PUBLIC");
    expect((await flotillaJson("services", "get", "shop/pg")).service.visibility).toBe(
      "VISIBILITY_PRIVATE",
    );
  });

  it("a schedule takes backups through the agent at its minute", async () => {
    const set = await flotillaJson("db", "schedule", "shop/pg", "* * * * *", "--retention", "1");
    expect(set.cron).toBe("* * * * *");
    const deadline = Date.now() + 150_000;
    for (;;) {
      const list = await flotillaJson("db", "backups", "shop/pg");
      const scheduled = list.filter(
        (b: { origin: string; state: string }) => b.origin === "schedule" && b.state === "done",
      );
      if (scheduled.length >= 1) {
        expect(scheduled[0].sha256).toMatch(/^[0-9a-f]{64}$/);
        break;
      }
      if (Date.now() > deadline) throw new Error(`no scheduled backup: ${JSON.stringify(list)}`);
      await sleep(1000);
    }
    await flotillaJson("db", "schedule", "shop/pg", "--off");
  }, 180_000);

  it("the password is in no log, no CLI output but connect-info's, no hub row and no agent file in plaintext", async () => {
    expect(password).toHaveLength(32);
    expect(hub.stdout() + hub.stderr()).not.toContain(password);
    expect(agent.stdout() + agent.stderr()).not.toContain(password);
    expect(outputs.join("\n")).not.toContain(password);
    const { rows } = await hubDb.query<{ table_name: string }>(
      "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    );
    for (const { table_name } of rows) {
      const dump = await hubDb.query<{ j: string }>(
        `SELECT row_to_json(x)::text AS j FROM ${table_name} x`,
      );
      expect(dump.rows.map((r) => r.j).join("\n"), table_name).not.toContain(password);
    }
    const files = (d: string): string[] =>
      readdirSync(d, { withFileTypes: true }).flatMap((e) =>
        e.isDirectory()
          ? e.name === "volumes" || e.name === "backups"
            ? []
            : files(join(d, e.name))
          : [join(d, e.name)],
      );
    for (const f of files(agentDir)) expect(readFileSync(f, "utf8"), f).not.toContain(password);
  });

  it("an agent SIGKILLed in the middle of a first start: the interrupted deploy is failed with its reason (never re-run blind), and a redeploy bootstraps it from scratch", async () => {
    const created = await flotillaJson(
      "db",
      "create",
      "crashy",
      "--env",
      "shop/production",
      "--no-wait",
    );
    const id = created.service.id;
    // The agent starts the bootstrap (initdb) and dies during it.
    await agent.waitForLog((r) => r.msg === "executing dispatch" && r.op === "deploy", 30_000);
    agent.child.kill("SIGKILL");
    await agent.exited;
    // The dead agent's initdb runs on, orphaned: the new agent's bootstrap kills it before it
    // starts the data directory again (no waiting here for it to end by itself).
    agent = await startAgent([]);
    const deadline = Date.now() + 30_000;
    for (;;) {
      const dispatches = await flotillaJson("servers", "dispatches", "box");
      const first = dispatches.find(
        (d: { serviceId?: string; op: string }) => d.serviceId === id && d.op === "deploy",
      );
      if (first?.state === "failed") {
        expect(first.error).toContain("the agent stopped while executing this dispatch");
        break;
      }
      if (Date.now() > deadline) throw new Error(`deploy dispatch: ${JSON.stringify(first)}`);
      await sleep(200);
    }
    const redeployed = await flotilla("deploy", "shop/crashy");
    expect(redeployed.code, redeployed.stderr + redeployed.stdout).toBe(0);
    const info = await flotillaJson("db", "connect-info", "shop/crashy");
    expect(
      execFileSync(PSQL, [info.uri, "-XAtc", "select current_database()"], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "pipe"],
      }).trim(),
    ).toBe("crashy");
    expect((await flotilla("services", "delete", "shop/crashy", "--purge-data")).code).toBe(0);
    const until = Date.now() + 30_000;
    while (existsSync(join(agentDir, "volumes", id)) && Date.now() < until) await sleep(200);
  });

  it("delete keeps the data directory; --purge-data removes it; no server process outlives either", async () => {
    const volume = join(agentDir, "volumes", serviceId);
    expect((await flotilla("services", "delete", "shop/pg")).code).toBe(0);
    const deadline = Date.now() + 30_000;
    while (postgresPids().length > 0 && Date.now() < deadline) await sleep(200);
    expect(postgresPids()).toEqual([]);
    expect(existsSync(join(volume, "data", "pgdata", "PG_VERSION"))).toBe(true);

    const second = await flotillaJson("db", "create", "scratch", "--env", "shop/production");
    const scratchVolume = join(agentDir, "volumes", second.service.id);
    expect(existsSync(scratchVolume)).toBe(true);
    expect((await flotilla("services", "delete", "shop/scratch", "--purge-data")).code).toBe(0);
    const until = Date.now() + 30_000;
    while (existsSync(scratchVolume) && Date.now() < until) await sleep(200);
    expect(existsSync(scratchVolume)).toBe(false);
    expect(postgresPids()).toEqual([]);
  });
});
