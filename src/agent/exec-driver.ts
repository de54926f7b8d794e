// The exec driver: runs a service's command as the workload user in its own process group, with
// its config as environment, an allocated port, a health check, a restart policy with backoff,
// its output in a log file, and pid files so a restarted agent adopts what still runs instead of doubling it.
import { type ChildProcess, spawn } from "node:child_process";
import {
  chmodSync,
  chownSync,
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { type Logger, openBox, sealBox } from "../shared/index.js";
import { type Driver, probe, type RunSpec, type StatusReport } from "./driver.js";
import type { WorkloadUser } from "./jobs.js";
import { postgresReady, preparePostgres } from "./postgres.js";

interface PidFile {
  pid: number;
  /** /proc/<pid>/stat start time, so a recycled pid is never mistaken for ours. */
  startTime: string;
  deploymentId: string;
  port: number;
  /** The spec without its env, which is in sealedEnv. */
  spec: RunSpec;
  sealedEnv: string;
}

// Restart backoff: 1 s doubling to 60 s; 5 crashes inside 5 minutes is a crash loop.
const RESTART_MIN_MS = 1000;
const RESTART_MAX_MS = 60_000;
const CRASH_LOOP_COUNT = 5;
const CRASH_LOOP_WINDOW_MS = 5 * 60_000;
const HEALTH_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 10_000;
// Logs: one file per service, rotated past 10 MiB (checked at each start and every 30 s; one
// previous file kept).
const LOG_ROTATE_BYTES = 10 * 1024 * 1024;
const LOG_ROTATE_CHECK_MS = 30_000;

/** State and start time of a live process (fields 3 and 22 of /proc/<pid>/stat), or null. */
function processStat(pid: number): { state: string; startTime: string } | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Counted after the parenthesised command name, which may hold spaces.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { state: fields[0] ?? "", startTime: fields[19] ?? "" };
  } catch {
    return null;
  }
}

function processStartTime(pid: number): string | null {
  return processStat(pid)?.startTime ?? null;
}

/** The process is ours and still running: same start time (pids are recycled), not a zombie. */
function isAlive(pid: number, startTime: string): boolean {
  if (!pid) return false;
  const s = processStat(pid);
  return s !== null && s.state !== "Z" && s.startTime === startTime;
}

/**
 * Pid files hold the spec to restart an adopted instance, and its env holds decrypted secrets:
 * they are sealed (AES-256-GCM) under a key the agent derives from its server secret.
 */
function sealEnv(key: Buffer, env: Record<string, string>): string {
  return sealBox(key, JSON.stringify(env), "flotilla/pid-env").toString("base64");
}

function openEnv(key: Buffer, sealed: string): Record<string, string> {
  return JSON.parse(openBox(key, Buffer.from(sealed, "base64"), "flotilla/pid-env")) as Record<
    string,
    string
  >;
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {}
}

async function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, host, () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}

type ExecRun = RunSpec & { exec: NonNullable<RunSpec["exec"]> };

/**
 * Catalogue templates the exec driver knows how to run: a bootstrap before each start (it
 * decides the command line), a readiness probe, and the signal that stops the server cleanly
 * when sent to its leader alone (PostgreSQL: SIGINT is a fast shutdown; signalling the whole
 * group would reach its background workers directly).
 */
const TEMPLATES: Record<
  string,
  {
    prepare(
      volumeDir: string,
      env: Record<string, string>,
      host: string,
      port: number,
      user: WorkloadUser,
    ): Promise<{
      command: string;
      args: string[];
      env: Record<string, string>;
      afterReady?: () => void;
    }>;
    ready(port: number, env: Record<string, string>): Promise<boolean>;
    stopSignal: NodeJS.Signals;
  }
> = {
  postgres16: {
    prepare: preparePostgres,
    ready: (port, env) =>
      postgresReady(port, env.POSTGRES_USER ?? "", env.POSTGRES_DB || env.POSTGRES_USER || ""),
    stopSignal: "SIGINT",
  },
};

function templateOf(spec: RunSpec) {
  if (!spec.template) return undefined;
  const t = TEMPLATES[spec.template];
  if (!t)
    throw new Error(
      `this agent does not know template ${spec.template} (it knows: ${Object.keys(TEMPLATES).join(", ")}); upgrade it`,
    );
  return t;
}

function execRun(spec: RunSpec): ExecRun {
  if (spec.driver !== "exec" || !spec.exec) throw new Error("the exec driver runs exec specs only");
  return spec as ExecRun;
}

class Instance {
  child: ChildProcess | undefined;
  pid = 0;
  port = 0;
  stopping = false;
  crashes: number[] = [];
  restartTimer: NodeJS.Timeout | undefined;
  startTime = "";
  constructor(public spec: ExecRun) {}
}

/**
 * The agent's directory as the exec driver lays it out. As root, workloads run as the workload
 * user, which must walk down to its volumes and backups: the data directory and those two parents
 * are traverse-only for others (0711: no listing), each service's directory inside is the
 * workload user's own (0700). Everything else stays the agent's alone: instances/ (pid files
 * with the sealed env) and logs/ are 0700, agent.json and the dispatch ledger 0600. Modes are
 * set on every start, so a directory made by an older agent (0700 or 0755) is corrected.
 */
export function prepareDataDir(dataDir: string): void {
  const asRoot = process.getuid?.() === 0;
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  for (const d of ["instances", "logs"]) {
    mkdirSync(join(dataDir, d), { recursive: true, mode: 0o700 });
    chmodSync(join(dataDir, d), 0o700);
  }
  for (const d of ["volumes", "backups"]) {
    mkdirSync(join(dataDir, d), { recursive: true, mode: 0o711 });
    chmodSync(join(dataDir, d), 0o711);
  }
  if (!asRoot) return;
  // Anything else at the top (agent.json, the dispatch ledger, what an older agent left) keeps
  // no group or other bits: with the directory traversable, a known name must open nothing.
  for (const name of readdirSync(dataDir)) {
    if (name === "volumes" || name === "backups") continue;
    const path = join(dataDir, name);
    const mode = statSync(path).mode & 0o777;
    if (mode & 0o077) chmodSync(path, mode & 0o700);
  }
  chmodSync(dataDir, 0o711);
}

export class ExecDriver implements Driver {
  readonly name = "exec" as const;
  private readonly instances = new Map<string, Instance>();

  constructor(
    private readonly dataDir: string,
    private readonly user: WorkloadUser,
    private readonly report: (r: StatusReport) => void,
    private readonly logger: Logger,
    /** 32 bytes that seal the env in pid files; the agent derives it from its server secret. */
    private readonly sealKey: Buffer,
    /** Reported for PUBLIC instances (they bind 0.0.0.0) so gateways on other hosts reach them. */
    private readonly advertiseHost = "127.0.0.1",
  ) {
    prepareDataDir(dataDir);
    // A chatty long-running instance must not fill the disk between two starts.
    this.rotation = setInterval(() => {
      for (const serviceId of this.instances.keys()) this.rotate(serviceId);
    }, LOG_ROTATE_CHECK_MS);
    this.rotation.unref();
  }

  private readonly rotation: NodeJS.Timeout;

  /** PUBLIC binds 0.0.0.0 and is reported at the advertised host; PRIVATE stays on loopback. */
  private endpointHost(spec: { visibility?: string }): string {
    return spec.visibility === "PUBLIC" ? this.advertiseHost : "127.0.0.1";
  }

  private pidFile(serviceId: string) {
    return join(this.dataDir, "instances", `${serviceId}.json`);
  }

  /** Stops whatever runs for the service, then runs the new deployment until healthy. */
  async deploy(spec: RunSpec): Promise<{ endpoint: string }> {
    await this.stop(spec.serviceId);
    return this.start(spec);
  }

  async start(run: RunSpec): Promise<{ endpoint: string }> {
    const spec = execRun(run);
    const existing = this.instances.get(spec.serviceId);
    if (existing && !existing.stopping && isAlive(existing.pid, existing.startTime))
      return { endpoint: `${this.endpointHost(existing.spec)}:${existing.port}` };
    if (existing) clearTimeout(existing.restartTimer);
    const instance = existing ?? new Instance(spec);
    instance.spec = spec;
    instance.stopping = false;
    this.instances.set(spec.serviceId, instance);
    this.report({
      serviceId: spec.serviceId,
      deploymentId: spec.deploymentId,
      status: "deploying",
    });
    return this.launch(instance);
  }

  logFile(serviceId: string): string {
    return join(this.dataDir, "logs", `${serviceId}.log`);
  }

  /**
   * The workload writes straight into its log file (not through a pipe to the agent), so it
   * never blocks on, or dies of, an agent that is restarting. Rotated by copy-and-truncate, which
   * O_APPEND writers survive.
   */
  private openLogFd(serviceId: string): number {
    this.rotate(serviceId);
    return openSync(this.logFile(serviceId), "a", 0o640);
  }

  /** Copy-and-truncate past 10 MiB (one previous file kept); O_APPEND writers carry on. */
  private rotate(serviceId: string): void {
    const file = this.logFile(serviceId);
    try {
      if (statSync(file).size > LOG_ROTATE_BYTES) {
        copyFileSync(file, `${file}.1`);
        truncateSync(file, 0);
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT")
        this.logger.warn({ err, service: serviceId }, "log rotation failed");
    }
  }

  private async launch(instance: Instance): Promise<{ endpoint: string }> {
    const spec = instance.spec;
    const host = spec.visibility === "PUBLIC" ? "0.0.0.0" : "127.0.0.1";
    // A restarted or redeployed instance keeps its port, so its endpoint stays put.
    const port = spec.exec.port ? instance.port || (await freePort(host)) : 0;
    const volumeEnv: Record<string, string> = {};
    const volumeDirs: Record<string, string> = {};
    for (const v of spec.volumes) {
      // Volumes are directories under the agent's data dir that outlive deployments.
      const dir = join(this.dataDir, "volumes", spec.serviceId, v.name);
      // The service's directory is traversable (its volumes' names are no secret); each
      // volume is the workload user's alone.
      mkdirSync(join(this.dataDir, "volumes", spec.serviceId), { recursive: true, mode: 0o711 });
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      if (process.getuid?.() === 0) chownSync(dir, this.user.uid, this.user.gid);
      volumeEnv[`FLOTILLA_VOLUME_${v.name.toUpperCase().replace(/-/g, "_")}`] = dir;
      volumeDirs[v.name] = dir;
    }
    // A template's bootstrap decides the command line (and may take seconds on a first start).
    let command = spec.exec.command;
    let args = spec.exec.args;
    let workloadEnv = spec.env;
    let afterReady: (() => void) | undefined;
    const template = templateOf(spec);
    if (template) {
      try {
        const prepared = await template.prepare(
          volumeDirs.data ?? join(this.dataDir, "volumes", spec.serviceId, "data"),
          spec.env,
          host,
          port,
          this.user,
        );
        ({ command, args, env: workloadEnv, afterReady } = prepared);
      } catch (err) {
        this.fail(instance, (err as Error).message, false);
        throw err;
      }
    }
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin",
      ...workloadEnv,
      ...volumeEnv,
      FLOTILLA_SERVICE: spec.serviceSlug,
      FLOTILLA_SERVICE_ID: spec.serviceId,
      FLOTILLA_DEPLOYMENT_ID: spec.deploymentId,
      HOST: host,
      ...(port ? { PORT: String(port) } : {}),
    };
    const logFd = this.openLogFd(spec.serviceId);
    const asRoot = process.getuid?.() === 0;
    let child: ChildProcess;
    try {
      child = spawn(command, args, {
        cwd: spec.exec.workingDirectory || "/",
        env,
        uid: asRoot ? this.user.uid : undefined,
        gid: asRoot ? this.user.gid : undefined,
        detached: true,
        stdio: ["ignore", logFd, logFd],
      });
    } finally {
      closeSync(logFd);
    }
    instance.child = child;
    instance.port = port;
    const spawned = await new Promise<Error | null>((resolve) => {
      child.once("spawn", () => resolve(null));
      child.once("error", (err) => resolve(err));
    });
    if (spawned) {
      const reason =
        (spawned as NodeJS.ErrnoException).code === "ENOENT"
          ? `command not found: ${command}`
          : `cannot start ${command}: ${spawned.message}`;
      this.fail(instance, reason, false);
      throw new Error(reason);
    }
    instance.pid = child.pid!;
    instance.startTime = processStartTime(child.pid!) ?? "";
    // The instance must not keep the agent alive: it outlives an agent restart by design.
    child.unref();
    if (instance.stopping) {
      // A stop arrived while this start was on its way: it wins.
      killGroup(instance.pid, "SIGKILL");
      throw new Error("stopped before it was running");
    }
    const pidFile: PidFile = {
      pid: child.pid!,
      startTime: instance.startTime,
      deploymentId: spec.deploymentId,
      port,
      spec: { ...spec, env: {} },
      sealedEnv: sealEnv(this.sealKey, spec.env),
    };
    writeFileSync(this.pidFile(spec.serviceId), JSON.stringify(pidFile), { mode: 0o600 });
    let exited: string | null = null;
    child.once("exit", (code, signal) => {
      exited = signal ? `killed by ${signal}` : `exited with code ${code}`;
      this.onExit(instance, child, code, exited);
    });

    // Healthy when the check passes; a service with a port and no check must at least accept a
    // TCP connection; one with neither must still be alive 300 ms later.
    const startedAt = Date.now();
    const deadline = startedAt + HEALTH_TIMEOUT_MS;
    const check = spec.healthCheck.type
      ? spec.healthCheck
      : port
        ? ({ type: "tcp", path: "" } as const)
        : null;
    for (;;) {
      if (exited) {
        // No output in the reason: every member of the organization reads reasons, and what
        // an application prints (a session, a reset link) is for those who may read its logs.
        const reason = `${spec.exec.command} ${exited} before it was healthy; its output: flotilla logs`;
        throw new Error(reason);
      }
      const healthy = template
        ? await template.ready(port, spec.env)
        : check
          ? await probe(check as { type: "tcp" | "http"; path: string }, port)
          : Date.now() - startedAt > 300;
      if (healthy && !exited) break;
      if (Date.now() > deadline) {
        killGroup(instance.pid, "SIGKILL");
        throw new Error(`not healthy within ${HEALTH_TIMEOUT_MS / 1000} s`);
      }
      // 25 ms: a database that starts in ~30 ms is connectable a poll later, not 100 ms later.
      await new Promise((r) => setTimeout(r, template ? 25 : 100));
    }
    const endpoint = port ? `${this.endpointHost(spec)}:${port}` : "";
    this.report({
      serviceId: spec.serviceId,
      deploymentId: spec.deploymentId,
      status: "running",
      ...(endpoint ? { endpoint } : {}),
    });
    this.logger.info({ service: spec.serviceId, pid: instance.pid, port }, "instance running");
    afterReady?.();
    return { endpoint };
  }

  private fail(instance: Instance, reason: string, _restarting: boolean) {
    this.report({
      serviceId: instance.spec.serviceId,
      deploymentId: instance.spec.deploymentId,
      status: "failed",
      reason,
    });
  }

  private onExit(instance: Instance, child: ChildProcess, code: number | null, how: string) {
    if (instance.child !== child) return;
    // The pid is no longer ours: it may be recycled for an unrelated process.
    instance.pid = 0;
    rmSync(this.pidFile(instance.spec.serviceId), { force: true });
    // The group too: nothing the workload started outlives it.
    killGroup(child.pid!, "SIGKILL");
    if (instance.stopping) return;
    const policy = instance.spec.restartPolicy;
    const restart = policy === "always" || (policy === "on-failure" && code !== 0);
    const now = Date.now();
    instance.crashes = instance.crashes.filter((t) => now - t < CRASH_LOOP_WINDOW_MS);
    instance.crashes.push(now);
    this.logger.warn({ service: instance.spec.serviceId, how }, "instance exited");
    if (!restart) {
      this.fail(instance, `${instance.spec.exec.command} ${how}`, false);
      return;
    }
    if (instance.crashes.length >= CRASH_LOOP_COUNT) {
      this.fail(
        instance,
        `crash loop: ${how}, ${instance.crashes.length} times in 5 minutes; not restarting`,
        false,
      );
      return;
    }
    const delay = Math.min(RESTART_MIN_MS * 2 ** (instance.crashes.length - 1), RESTART_MAX_MS);
    this.fail(
      instance,
      `${instance.spec.exec.command} ${how}; restarting in ${delay / 1000} s`,
      true,
    );
    instance.restartTimer = setTimeout(() => {
      if (instance.stopping) return;
      this.launch(instance).catch((err) => this.fail(instance, (err as Error).message, false));
    }, delay);
  }

  /** SIGTERM to the group, a grace period, then SIGKILL; resolves when nothing is left. */
  async stop(serviceId: string, report = false): Promise<void> {
    const instance = this.instances.get(serviceId);
    if (!instance) return;
    instance.stopping = true;
    clearTimeout(instance.restartTimer);
    const { pid, startTime } = instance;
    if (isAlive(pid, startTime)) {
      const template = TEMPLATES[instance.spec.template ?? ""];
      if (template) {
        try {
          process.kill(pid, template.stopSignal);
        } catch {}
      } else killGroup(pid, "SIGTERM");
      const deadline = Date.now() + STOP_GRACE_MS;
      while (isAlive(pid, startTime) && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 50));
      killGroup(pid, "SIGKILL");
      // A killed process is gone or a zombie within milliseconds; 5 s bounds the wait anyway.
      const killDeadline = Date.now() + 5000;
      while (isAlive(pid, startTime) && Date.now() < killDeadline)
        await new Promise((r) => setTimeout(r, 20));
    }
    rmSync(this.pidFile(serviceId), { force: true });
    if (report)
      this.report({ serviceId, deploymentId: instance.spec.deploymentId, status: "stopped" });
  }

  async remove(serviceId: string, purgeData: boolean): Promise<void> {
    await this.stop(serviceId, true);
    this.instances.delete(serviceId);
    if (purgeData) {
      rmSync(join(this.dataDir, "volumes", serviceId), { recursive: true, force: true });
      rmSync(this.backupDir(serviceId), { recursive: true, force: true });
    }
  }

  /**
   * After an agent restart: instances whose pid file names a live process with the recorded
   * start time are adopted (watched by polling: they are no longer our children); stale files
   * are removed. Returns the adopted service ids.
   */
  async adopt(): Promise<string[]> {
    const dir = join(this.dataDir, "instances");
    const adopted: string[] = [];
    for (const name of existsSync(dir) ? readdirSync(dir) : []) {
      const file = join(dir, name);
      let p: PidFile;
      let spec: ExecRun;
      try {
        p = JSON.parse(readFileSync(file, "utf8")) as PidFile;
        // Pid files written before drivers were named lack "driver": they are exec instances.
        spec = execRun({
          ...p.spec,
          driver: p.spec.driver ?? "exec",
          env: p.sealedEnv ? openEnv(this.sealKey, p.sealedEnv) : {},
        });
      } catch {
        rmSync(file, { force: true });
        continue;
      }
      if (p.startTime && isAlive(p.pid, p.startTime)) {
        const instance = new Instance(spec);
        instance.pid = p.pid;
        instance.startTime = p.startTime;
        instance.port = p.port;
        this.instances.set(spec.serviceId, instance);
        adopted.push(spec.serviceId);
        this.watchAdopted(instance);
      } else {
        rmSync(file, { force: true });
      }
    }
    return adopted;
  }

  private watchAdopted(instance: Instance) {
    const timer = setInterval(() => {
      if (instance.child || instance.stopping) return clearInterval(timer);
      if (!isAlive(instance.pid, instance.startTime)) {
        clearInterval(timer);
        // An adopted instance died: apply its restart policy as if it had been our child.
        const ghost = { pid: instance.pid } as ChildProcess;
        instance.child = ghost;
        this.onExit(instance, ghost, null, "exited while the agent was away");
      }
    }, 500);
    timer.unref();
  }

  /** Where the service's backups live: kept across deployments, removed with --purge-data. */
  backupDir(serviceId: string): string {
    return join(this.dataDir, "backups", serviceId);
  }

  /** The loopback port of the service's instance when it is running now, else null. */
  runningPort(serviceId: string): number | null {
    const i = this.instances.get(serviceId);
    return i && !i.stopping && isAlive(i.pid, i.startTime) && i.port ? i.port : null;
  }

  has(serviceId: string): boolean {
    return this.instances.has(serviceId);
  }

  /** Running instances: service id, deployment, pid, port. */
  list() {
    return [...this.instances.values()]
      .filter((i) => !i.stopping && isAlive(i.pid, i.startTime))
      .map((i) => ({
        serviceId: i.spec.serviceId,
        deploymentId: i.spec.deploymentId,
        pid: i.pid,
        port: i.port,
      }));
  }

  /** The last `lines` lines of the service's log (read from the end of its file). */
  async tail(serviceId: string, lines: number): Promise<string[]> {
    const file = this.logFile(serviceId);
    let size: number;
    try {
      size = statSync(file).size;
    } catch {
      return [];
    }
    // 256 bytes a line is generous; read at most 1 MiB from the end.
    const want = Math.min(size, Math.min(1024 * 1024, Math.max(4096, lines * 256)));
    const buf = Buffer.alloc(want);
    const fd = openSync(file, "r");
    try {
      readSync(fd, buf, 0, want, size - want);
    } finally {
      closeSync(fd);
    }
    const all = buf.toString("utf8").split("\n");
    if (all.at(-1) === "") all.pop();
    if (want < size) all.shift(); // a line cut by the window
    return all.slice(-lines);
  }

  /**
   * Calls `emit` with new lines as they are appended, until the returned stop function is called.
   * Polls the file (250 ms): inotify is not available everywhere and a workload may rotate it.
   */
  follow(serviceId: string, emit: (lines: string[]) => void): () => void {
    const file = this.logFile(serviceId);
    let offset = existsSync(file) ? statSync(file).size : 0;
    let partial = "";
    const timer = setInterval(() => {
      let size: number;
      try {
        size = statSync(file).size;
      } catch {
        return;
      }
      if (size < offset) offset = 0; // truncated by rotation
      if (size === offset) return;
      const n = Math.min(size - offset, 1024 * 1024);
      const buf = Buffer.alloc(n);
      const fd = openSync(file, "r");
      try {
        readSync(fd, buf, 0, n, offset);
      } finally {
        closeSync(fd);
      }
      offset += n;
      const lines = (partial + buf.toString("utf8")).split("\n");
      partial = lines.pop() ?? "";
      if (lines.length) emit(lines);
    }, 250);
    timer.unref();
    return () => clearInterval(timer);
  }

  async close(): Promise<void> {
    // Instances keep running across an agent restart; they are adopted at the next start.
    clearInterval(this.rotation);
    for (const i of this.instances.values()) clearTimeout(i.restartTimer);
  }
}
