// The newcomer path as root: `flotilla up` in a freshly made directory, then `flotilla db create`
// prints a URI psql connects with, and backup/restore work, without any chmod by the user; the
// embedded store, secrets, credentials, pid files and logs stay unreadable to others while the
// workload user reaches its volume. Under a parent the workload user cannot traverse, the create
// fails with a message that says exactly what to run.
import { execFile, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI, type FlotillaProcess, freePorts, killAll, ROOT, startFlotilla } from "./procs.js";

const run = promisify(execFile);
const ADMIN = { email: "newcomer@example.com", password: "newcomer-password-1" };
const PSQL = "/usr/lib/postgresql/15/bin/psql";
const asRoot = process.getuid?.() === 0;

/** `flotilla up` on `dataDir` as the README's first steps run it, logged in through the CLI. */
async function upAndLogin(dataDir: string, configDir: string) {
  const [gatewayPort] = await freePorts(1);
  const up = await startFlotilla("up", {
    args: ["--data-dir", dataDir, "--gateway-port", String(gatewayPort)],
    env: { FLOTILLA_ADMIN_EMAIL: ADMIN.email, FLOTILLA_ADMIN_PASSWORD: ADMIN.password },
  });
  await up.waitReady(90_000);
  await up.waitForLog((r) => r.component === "agent" && r.msg === "connected to the hub", 60_000);
  const env: NodeJS.ProcessEnv = { ...process.env, FLOTILLA_CONFIG_DIR: configDir };
  for (const k of Object.keys(env))
    if (k.startsWith("FLOTILLA_") && k !== "FLOTILLA_CONFIG_DIR") delete env[k];
  env.FLOTILLA_HUB = up.url;
  const flotilla = async (...args: string[]) => {
    try {
      const ok = await run(process.execPath, [CLI, ...args], { cwd: ROOT, env, timeout: 120_000 });
      return { code: 0, stdout: ok.stdout, stderr: ok.stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };
  const login = await flotilla("login", "--email", ADMIN.email, "--password", ADMIN.password);
  expect(login.code, login.stderr).toBe(0);
  const project = await flotilla("projects", "create", "Shop");
  expect(project.code, project.stderr).toBe(0);
  return { up, flotilla };
}

/** Every path under root with its mode, owner and whether a user other than root can reach it. */
function walk(root: string) {
  const out: Array<{ path: string; mode: number; uid: number; dir: boolean; reachable: boolean }> =
    [];
  const visit = (path: string, parentReachable: boolean) => {
    const s = statSync(path);
    const mode = s.mode & 0o777;
    out.push({ path, mode, uid: s.uid, dir: s.isDirectory(), reachable: parentReachable });
    if (s.isDirectory())
      for (const name of readdirSync(path))
        visit(join(path, name), parentReachable && (mode & 0o001) !== 0);
  };
  visit(root, true);
  return out;
}

describe.skipIf(!asRoot)("flotilla up as root, then flotilla db create (a newcomer's path)", () => {
  let dir: string;
  let dataDir: string;
  let up: FlotillaProcess;
  let flotilla: Awaited<ReturnType<typeof upAndLogin>>["flotilla"];
  let uri: string;
  let dbCreated = false;
  const psql = (sql: string) =>
    execFileSync(PSQL, [uri, "-XAtc", sql], {
      encoding: "utf8",
      timeout: 20_000,
      stdio: ["ignore", "pipe", "pipe"],
    }).trim();

  beforeAll(async () => {
    // A project directory as `mkdir` makes it (umask 022: 0755); nobody runs chmod.
    dir = join(tmpdir(), `flotilla-newcomer-${randomBytes(4).toString("hex")}`);
    mkdirSync(dir);
    dataDir = join(dir, ".flotilla");
    ({ up, flotilla } = await upAndLogin(dataDir, join(dir, "config")));
  }, 180_000);

  afterAll(async () => {
    if (dbCreated) await flotilla("services", "delete", "shop/pg", "--purge-data");
    await killAll();
    try {
      const pids = execFileSync("pgrep", ["-f", `postgres -D ${dir}`], { encoding: "utf8" });
      for (const pid of pids.trim().split("\n").filter(Boolean))
        process.kill(Number(pid), "SIGKILL");
    } catch {}
    rmSync(dir, { recursive: true, force: true });
  });

  it("db create prints a URI psql connects with; backup, drop, restore bring the rows back", async () => {
    const created = await flotilla("db", "create", "pg", "--env", "shop/production");
    expect(created.code, created.stderr + created.stdout).toBe(0);
    dbCreated = true;
    uri = created.stdout.match(/postgresql:\/\/\S+/)?.[0] ?? "";
    expect(uri).toMatch(/^postgresql:\/\/pg:[A-Za-z0-9_-]{32}@127\.0\.0\.1:\d+\/pg$/);
    expect(psql("select 1")).toBe("1");
    const info = JSON.parse((await flotilla("db", "connect-info", "shop/pg", "--json")).stdout);
    expect(info.uri).toBe(uri);
    psql(
      "create table orders (id int primary key); insert into orders select generate_series(1, 50)",
    );

    const backup = await flotilla("db", "backup", "shop/pg", "--json");
    expect(backup.code, backup.stderr).toBe(0);
    const backupId = JSON.parse(backup.stdout).id as string;
    psql("drop table orders");
    const restored = await flotilla("db", "restore", "shop/pg", backupId, "--yes");
    expect(restored.code, restored.stderr + restored.stdout).toBe(0);
    expect(psql("select count(*) from orders")).toBe("50");
  });

  it.skipIf(existsSync("/var/run/docker.sock"))(
    "db create with a driver the server lacks fails at once with the agent's reason, not after the timeout",
    async () => {
      const started = Date.now();
      const r = await flotilla(
        "db",
        "create",
        "dk",
        "--env",
        "shop/production",
        "--driver",
        "docker",
        "--timeout",
        "60",
      );
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("docker driver is not available");
      expect(r.stderr).toContain("[database.not_running]");
      // The timeout is 60 s; the refusal is seen within a few polls of a second.
      expect(Date.now() - started).toBeLessThan(30_000);
      await flotilla("services", "delete", "shop/dk");
    },
  );

  it("others can reach only the way down to the volumes and backups; the store, secrets, pid files and logs are root's alone", () => {
    const entries = walk(dataDir);
    const rel = (p: string) => relative(dataDir, p) || ".";
    // Directories a user other than root may traverse: exactly these, and traverse-only (0711).
    const traversable = entries.filter((e) => e.reachable && e.dir && (e.mode & 0o001) !== 0);
    const byOthers = traversable.filter((e) => e.uid === 0).map((e) => rel(e.path));
    expect(byOthers.sort()).toEqual(
      ["."]
        .concat(["agent", "agent/backups", "agent/volumes"])
        .concat(
          entries
            .filter((e) => /^agent\/volumes\/[^/]+$/.test(rel(e.path)))
            .map((e) => rel(e.path)),
        )
        .sort(),
    );
    for (const e of traversable.filter((x) => x.uid === 0)) expect(e.mode, rel(e.path)).toBe(0o711);
    // Nothing root owns is readable or writable by others where they can reach it.
    for (const e of entries.filter((x) => x.reachable && x.uid === 0))
      expect(e.mode & 0o066, `${rel(e.path)} ${e.mode.toString(8)}`).toBe(0);
    // The workload user's own: its volume and its backups, nobody else's.
    const nobody = Number(execFileSync("id", ["-u", "nobody"], { encoding: "utf8" }).trim());
    const workloadDirs = entries.filter((e) =>
      /^agent\/(volumes\/[^/]+\/data|backups\/[^/]+)$/.test(rel(e.path)),
    );
    expect(workloadDirs.length).toBe(2);
    for (const e of workloadDirs) expect([e.uid, e.mode], rel(e.path)).toEqual([nobody, 0o700]);
    // The named secrets, each by its own mode too (not only by where it sits).
    const modeOf = (p: string) => statSync(join(dataDir, p)).mode & 0o777;
    expect(modeOf("pgdata")).toBe(0o700);
    expect(modeOf("session.secret")).toBe(0o600);
    expect(modeOf("agent/agent.json")).toBe(0o600);
    expect(modeOf("agent/dispatches.jsonl")).toBe(0o600);
    expect(modeOf("agent/instances")).toBe(0o700);
    expect(modeOf("agent/logs")).toBe(0o700);
    expect(modeOf("gateway")).toBe(0o700);
    expect(statSync(`${dataDir}.master-key`).mode & 0o777).toBe(0o600);
    expect(up.errorLogs()).toEqual([]);
  });
});

describe.skipIf(!asRoot)(
  "flotilla up as root under a directory the workload user cannot traverse",
  () => {
    let dir: string;

    afterAll(async () => {
      await killAll();
      rmSync(dir, { recursive: true, force: true });
    });

    it("db create fails and says which directory to chmod, and how", async () => {
      // mkdtemp makes its directory 0700: the workload user (nobody) cannot walk through it.
      dir = mkdtempSync(join(tmpdir(), "flotilla-closed-"));
      const { flotilla } = await upAndLogin(join(dir, "project", ".flotilla"), join(dir, "config"));
      const created = await flotilla("db", "create", "pg", "--env", "shop/production");
      expect(created.code).not.toBe(0);
      const said = created.stdout + created.stderr;
      expect(said).toContain(`${dir} is not traversable for it`);
      expect(said).toContain(`chmod o+x ${dir}`);
      // Nothing of the user's was changed to make it work.
      expect(statSync(dir).mode & 0o777).toBe(0o700);
    }, 240_000);
  },
);
