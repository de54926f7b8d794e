// Managed PostgreSQL under the exec driver: finding the host's binaries, the first-start bootstrap (what
// the postgres image's entrypoint does), a readiness probe that speaks the startup message, and the
// backup, restore and prune jobs (pg_dump custom format into the agent's backup directory).
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  accessSync,
  chownSync,
  constants,
  createReadStream,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { connect } from "node:net";
import { delimiter, dirname, join } from "node:path";
import { runJob, type WorkloadUser } from "./jobs.js";

/** Where distributions install PostgreSQL's server binaries, one directory per major version. */
export const POSTGRES_LIB_ROOT = "/usr/lib/postgresql";
const NEEDED = ["postgres", "initdb", "pg_dump", "pg_restore"] as const;
const BOOTSTRAPPED = ".flotilla-bootstrapped";
const FILE = /^[A-Za-z0-9._-]{1,200}$/;

export interface PostgresBinaries {
  dir: string;
  postgres: string;
  initdb: string;
  pg_dump: string;
  pg_restore: string;
}

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/**
 * The first directory holding every binary the template needs: $FLOTILLA_POSTGRES_BINDIR, then
 * PATH, then /usr/lib/postgresql/<version>/bin, newest version first. None: an error that lists
 * every place it looked.
 */
export function findPostgresBinaries(
  env: NodeJS.ProcessEnv = process.env,
  libRoot = POSTGRES_LIB_ROOT,
): PostgresBinaries {
  const candidates: string[] = [];
  if (env.FLOTILLA_POSTGRES_BINDIR) candidates.push(env.FLOTILLA_POSTGRES_BINDIR);
  candidates.push(...(env.PATH ?? "").split(delimiter).filter(Boolean));
  let versions: string[] = [];
  try {
    versions = readdirSync(libRoot)
      .filter((v) => /^\d+(\.\d+)?$/.test(v))
      .sort((a, b) => Number(b) - Number(a));
  } catch {}
  candidates.push(...versions.map((v) => join(libRoot, v, "bin")));
  for (const dir of candidates) {
    if (NEEDED.every((b) => executable(join(dir, b))))
      return {
        dir,
        postgres: join(dir, "postgres"),
        initdb: join(dir, "initdb"),
        pg_dump: join(dir, "pg_dump"),
        pg_restore: join(dir, "pg_restore"),
      };
  }
  throw new Error(
    `PostgreSQL binaries (${NEEDED.join(", ")}) not found on this server; looked in ${[
      ...(env.FLOTILLA_POSTGRES_BINDIR ? ["$FLOTILLA_POSTGRES_BINDIR"] : []),
      `PATH (${(env.PATH ?? "").split(delimiter).filter(Boolean).join(", ") || "empty"})`,
      `${libRoot}/*/bin (${versions.length ? versions.join(", ") : "no versions installed"})`,
    ].join(
      "; ",
    )}. Install PostgreSQL (e.g. apt install postgresql), set FLOTILLA_POSTGRES_BINDIR, or use the docker driver`,
  );
}

/** Field 22 of /proc/<pid>/stat (start time), so a recycled pid is never taken for ours. */
function startTimeOf(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? null;
  } catch {
    return null;
  }
}

/**
 * A bootstrap step of an agent that died (SIGKILL) may still run: initdb or the single-user
 * server, orphaned, writing into the data directory. It is killed and waited for before the
 * directory is started again, so two never write into it at once. Recorded per step in
 * `<volume>/.bootstrap.pid` as "pid start-time".
 */
export async function killOrphanedStep(marker: string): Promise<void> {
  let pid = 0;
  let start = "";
  try {
    [pid, start] = readFileSync(marker, "utf8").trim().split(" ") as unknown as [number, string];
    pid = Number(pid);
  } catch {
    return;
  }
  if (pid > 0 && startTimeOf(pid) === start) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {}
    // Gone (or a zombie of the dead agent, reaped by init) within milliseconds; 5 s bounds it.
    const deadline = Date.now() + 5000;
    while (startTimeOf(pid) === start && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
  }
  rmSync(marker, { force: true });
}

/** Runs a program as the workload user to completion; rejects with its output when it fails. */
function runAs(
  user: WorkloadUser,
  command: string,
  args: string[],
  opts: { input?: string; env?: Record<string, string>; pidFile?: string } = {},
): Promise<string> {
  const asRoot = process.getuid?.() === 0;
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: "/",
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LC_ALL: "C", ...opts.env },
      uid: asRoot ? user.uid : undefined,
      gid: asRoot ? user.gid : undefined,
      stdio: ["pipe", "pipe", "pipe"],
    });
    if (opts.pidFile && child.pid)
      writeFileSync(opts.pidFile, `${child.pid} ${startTimeOf(child.pid) ?? ""}\n`);
    let out = "";
    child.stdout.on("data", (c: Buffer) => {
      out = (out + c.toString("utf8")).slice(-8000);
    });
    child.stderr.on("data", (c: Buffer) => {
      out = (out + c.toString("utf8")).slice(-8000);
    });
    child.once("error", (e) => reject(new Error(`cannot run ${command}: ${e.message}`)));
    child.once("close", (code, signal) => {
      if (code === 0) resolve(out);
      else
        reject(
          new Error(
            `${command.split("/").pop()} ${args[0] ?? ""} failed (${signal ?? `exit ${code}`}): ${out.trim().split("\n").slice(-5).join(" | ")}`,
          ),
        );
    });
    child.stdin.end(opts.input ?? "");
  });
}

/**
 * As root, the workload user must be able to walk down to its data directory: the first
 * ancestor it cannot traverse is named, instead of an initdb "Permission denied" later.
 */
function checkReachable(dir: string, user: WorkloadUser): void {
  if (process.getuid?.() !== 0) return;
  const chain: string[] = [];
  for (let d = dirname(dir); ; d = dirname(d)) {
    chain.unshift(d);
    if (d === dirname(d)) break;
  }
  for (const d of chain) {
    const s = statSync(d);
    const bit = s.uid === user.uid ? 0o100 : s.gid === user.gid ? 0o010 : 0o001;
    if (!(s.mode & bit))
      throw new Error(
        `the workload user ${user.name} cannot reach ${dir}: ${d} is not traversable for it (mode ${(s.mode & 0o777).toString(8)}); run \`chmod o+x ${d}\` (traverse only, no listing), or give Flotilla a --data-dir under a traversable path such as /var/lib/flotilla`,
      );
  }
}

export interface PostgresLaunch {
  command: string;
  args: string[];
  env: Record<string, string>;
  /** Runs once the server is ready (the first start's background sync). */
  afterReady?: () => void;
}

/**
 * Before the server starts: on the first start (no completed bootstrap in the volume), initdb
 * with the generated superuser and a password file (scram-sha-256), then the database, in
 * single-user mode; later starts find it done and only start the server. Listens on `host`
 * (loopback) only, no Unix socket, at the port the driver allocated.
 */
export async function preparePostgres(
  volumeDir: string,
  env: Record<string, string>,
  host: string,
  port: number,
  user: WorkloadUser,
): Promise<PostgresLaunch> {
  const bins = findPostgresBinaries(process.env);
  const pgdata = join(volumeDir, "pgdata");
  const superuser = env.POSTGRES_USER;
  const password = env.POSTGRES_PASSWORD;
  const database = env.POSTGRES_DB || superuser;
  if (!superuser || !password || !database)
    throw new Error(
      "POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB must be in the service's config (a managed database gets them at creation)",
    );
  let afterReady: (() => void) | undefined;
  if (!existsSync(join(volumeDir, BOOTSTRAPPED))) {
    checkReachable(volumeDir, user);
    const stepPid = join(volumeDir, ".bootstrap.pid");
    await killOrphanedStep(stepPid);
    // A bootstrap that died half-way left no data anyone wrote to: start it again from scratch.
    rmSync(pgdata, { recursive: true, force: true });
    const pwfile = join(volumeDir, ".pwfile");
    writeFileSync(pwfile, password, { mode: 0o600 });
    try {
      if (process.getuid?.() === 0) chownSync(pwfile, user.uid, user.gid);
      // --no-sync: initdb's fsync of ~1,000 files costs 1-2 s here; the data is synced as soon
      // as the server is ready (syncInBackground).
      await runAs(
        user,
        bins.initdb,
        [
          "-D",
          pgdata,
          "-U",
          superuser,
          `--pwfile=${pwfile}`,
          "--auth=scram-sha-256",
          "--encoding=UTF8",
          "--locale=C",
          "--no-sync",
        ],
        { pidFile: stepPid },
      );
    } finally {
      rmSync(pwfile, { force: true });
    }
    if (database !== "postgres") {
      await runAs(
        user,
        bins.postgres,
        [
          "--single",
          "-D",
          pgdata,
          "-c",
          "exit_on_error=true",
          "-c",
          "fsync=off",
          "-c",
          "listen_addresses=",
          "-c",
          "unix_socket_directories=",
          "postgres",
        ],
        { input: `CREATE DATABASE "${database.replace(/"/g, '""')}"\n`, pidFile: stepPid },
      );
    }
    rmSync(stepPid, { force: true });
    writeFileSync(join(volumeDir, BOOTSTRAPPED), `${new Date().toISOString()}\n`);
    // After the server is ready, not during its start: ~1,000 fsyncs would compete with it.
    afterReady = () => syncInBackground(bins, pgdata, user);
  }
  // The server needs no password: it is in pg_authid, hashed. Keep it out of its environment.
  const { POSTGRES_PASSWORD: _dropped, ...serverEnv } = env;
  return {
    command: bins.postgres,
    args: [
      "-D",
      pgdata,
      "-p",
      String(port),
      "-c",
      `listen_addresses=${host}`,
      "-c",
      "unix_socket_directories=",
    ],
    env: serverEnv,
    ...(afterReady ? { afterReady } : {}),
  };
}

/** `initdb --sync-only` after the fast bootstrap, detached: durable within a second or two. */
function syncInBackground(bins: PostgresBinaries, pgdata: string, user: WorkloadUser) {
  const asRoot = process.getuid?.() === 0;
  const child = spawn(bins.initdb, ["--sync-only", "-D", pgdata], {
    uid: asRoot ? user.uid : undefined,
    gid: asRoot ? user.gid : undefined,
    stdio: "ignore",
    detached: true,
  });
  child.once("error", () => {});
  child.unref();
}

/**
 * Ready when the server answers a startup message with an authentication request ('R'); while it
 * starts or recovers it answers an error ("the database system is starting up") or nothing.
 */
export function postgresReady(port: number, user: string, database: string): Promise<boolean> {
  const params = Buffer.from(`user\0${user}\0database\0${database}\0\0`);
  const message = Buffer.alloc(8 + params.length);
  message.writeInt32BE(message.length, 0);
  message.writeInt32BE(196608, 4); // protocol 3.0
  params.copy(message, 8);
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port }, () => socket.write(message));
    const done = (ready: boolean) => {
      socket.destroy();
      resolve(ready);
    };
    socket.once("data", (b: Buffer) => done(b[0] === 0x52));
    socket.once("error", () => done(false));
    socket.setTimeout(2000, () => done(false));
  });
}

export interface TaskContext {
  user: WorkloadUser;
  /** The agent's directory for this service's backups (created here, owned by the workload user). */
  backupDir: string;
  /** The loopback port of the service's running instance, or null when it does not run. */
  runningPort: number | null;
  slug: string;
  env: Record<string, string>;
}

async function sha256Of(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

function prepareBackupDir(dir: string, user: WorkloadUser) {
  // The parent is shared by every service's directory: traverse-only, like volumes/.
  mkdirSync(dirname(dir), { recursive: true, mode: 0o711 });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (process.getuid?.() === 0) chownSync(dir, user.uid, user.gid);
}

function connectionArgs(ctx: TaskContext, port: number): string[] {
  return ["-h", "127.0.0.1", "-p", String(port), "-U", ctx.env.POSTGRES_USER ?? ""];
}

function requireRunning(ctx: TaskContext, what: string): number {
  if (ctx.runningPort === null)
    throw new Error(
      `${ctx.slug} is not running on this server, so it cannot be ${what}; start it (flotilla services start) and retry`,
    );
  return ctx.runningPort;
}

/** Result fields of a job the hub reads back (exit code and output, as for any job). */
interface TaskResult {
  exit_code: number;
  stdout: string;
  stderr: string;
  duration_ms: number;
  [k: string]: unknown;
}

/** pg_dump in custom format into the backup directory; returns the file's name, size and SHA-256. */
export async function backupTask(
  args: Record<string, unknown>,
  ctx: TaskContext,
): Promise<TaskResult> {
  const id = String(args.backup_id ?? "");
  if (!/^[0-9a-f-]{36}$/.test(id)) throw new Error("postgres.backup needs a backup_id");
  const port = requireRunning(ctx, "backed up");
  const bins = findPostgresBinaries(process.env);
  prepareBackupDir(ctx.backupDir, ctx.user);
  const name = `${id}.dump`;
  const file = join(ctx.backupDir, name);
  const started = performance.now();
  const r = await runJob(
    {
      command: bins.pg_dump,
      args: [
        "--format=custom",
        ...connectionArgs(ctx, port),
        "-d",
        ctx.env.POSTGRES_DB ?? "",
        "-f",
        file,
      ],
      env: { PGPASSWORD: ctx.env.POSTGRES_PASSWORD ?? "", PGCONNECT_TIMEOUT: "10" },
      timeout_ms: Number(args.timeout_ms) || 3_600_000,
    },
    ctx.user,
  );
  if (r.exit_code !== 0) {
    rmSync(file, { force: true });
    throw Object.assign(
      new Error(
        `pg_dump failed (${r.signal ?? `exit ${r.exit_code}`}): ${r.stderr.trim().split("\n").slice(-3).join(" | ")}`,
      ),
      { result: r },
    );
  }
  return {
    ...r,
    exit_code: 0,
    file: name,
    size_bytes: statSync(file).size,
    sha256: await sha256Of(file),
    duration_ms: Math.round(performance.now() - started),
  };
}

/** pg_restore of a backup file (its checksum checked first) into the running database, replacing its objects. */
export async function restoreTask(
  args: Record<string, unknown>,
  ctx: TaskContext,
): Promise<TaskResult> {
  const name = String(args.file ?? "");
  if (!FILE.test(name)) throw new Error("postgres.restore needs the backup's file name");
  const file = join(ctx.backupDir, name);
  if (!existsSync(file))
    throw new Error(`the backup file ${name} is no longer in this server's backup directory`);
  const actual = await sha256Of(file);
  if (actual !== args.sha256)
    throw new Error(
      `the backup file ${name} does not match its recorded checksum (it changed on disk); refusing to restore it`,
    );
  const port = requireRunning(ctx, "restored");
  const bins = findPostgresBinaries(process.env);
  const started = performance.now();
  const r = await runJob(
    {
      command: bins.pg_restore,
      args: [
        "--clean",
        "--if-exists",
        "--no-owner",
        "--single-transaction",
        "--exit-on-error",
        ...connectionArgs(ctx, port),
        "-d",
        ctx.env.POSTGRES_DB ?? "",
        file,
      ],
      env: { PGPASSWORD: ctx.env.POSTGRES_PASSWORD ?? "", PGCONNECT_TIMEOUT: "10" },
      timeout_ms: Number(args.timeout_ms) || 3_600_000,
    },
    ctx.user,
  );
  if (r.exit_code !== 0)
    throw Object.assign(
      new Error(
        `pg_restore failed (${r.signal ?? `exit ${r.exit_code}`}); the database is as it was (one transaction): ${r.stderr.trim().split("\n").slice(-3).join(" | ")}`,
      ),
      { result: r },
    );
  return { ...r, exit_code: 0, duration_ms: Math.round(performance.now() - started) };
}

/** Removes backup files the hub no longer keeps (beyond a schedule's retention). */
export function pruneTask(args: Record<string, unknown>, ctx: TaskContext): TaskResult {
  const files = Array.isArray(args.files) ? args.files : [];
  let removed = 0;
  for (const f of files) {
    if (typeof f !== "string" || !FILE.test(f)) continue;
    const path = join(ctx.backupDir, f);
    if (existsSync(path)) {
      rmSync(path, { force: true });
      removed++;
    }
  }
  return { exit_code: 0, stdout: `removed ${removed} file(s)\n`, stderr: "", duration_ms: 0 };
}
