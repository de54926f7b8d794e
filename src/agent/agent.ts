// The agent: joins a hub once, then keeps its control channel open (reconnecting with jittered
// backoff), proves its secret to each connection, heartbeats, and executes dispatches exactly once.
import { hkdfSync } from "node:crypto";
import { statfsSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { availableParallelism, networkInterfaces, totalmem } from "node:os";
import WebSocket from "ws";
import {
  type AdminAction,
  AGENT_CONNECT_PATH,
  AGENT_JOIN_PATH,
  type AgentFacts,
  type AgentFrame,
  authProof,
  contextFromFrame,
  directKey,
  directSealKey,
  FLOTILLA_VERSION,
  FrameError,
  type HubFrame,
  type Logger,
  MAX_FRAME_BYTES,
  parseHubFrame,
  runWithContext,
} from "../shared/index.js";
import { serveAdmin } from "./admin.js";
import { DockerDriver, dockerAvailable } from "./docker-driver.js";
import type { Driver, RunSpec, StatusReport } from "./driver.js";
import { ExecDriver } from "./exec-driver.js";
import { checkJobArgs, resolveWorkloadUser, runJob, type WorkloadUser } from "./jobs.js";
import { backupTask, pruneTask, restoreTask, type TaskContext } from "./postgres.js";
import {
  type Credentials,
  Ledger,
  loadCredentials,
  type Outcome,
  saveCredentials,
} from "./state.js";

export const AGENT_VERSION = FLOTILLA_VERSION;

export interface AgentOptions {
  /**
   * The hub URL (http or https), or several replicas' URLs comma-separated; required to join
   * (the first is used), else taken from the saved credentials.
   */
  hub?: string;
  dataDir: string;
  /** A one-time join token, used when the data directory holds no credentials yet. */
  joinToken?: string;
  workloadUser?: string;
  logger: Logger;
  /** Serve the local admin API (status, drain, resume, reload, probes) on 127.0.0.1:port; 0 picks one. */
  adminPort?: number;
  /**
   * The address the admin API listens on. Default 127.0.0.1. Anything else is reachable from
   * other hosts, so there every request must be signed by the hub (see src/shared/direct.ts).
   */
  adminHost?: string;
  /**
   * The URL hub replicas use to reach this admin API when none holds the agent's socket
   * (route() "direct"). Sent in the hello; unset, no hub delivers directly.
   */
  adminAdvertiseUrl?: string;
  /**
   * The address reported for PUBLIC services (they bind 0.0.0.0), which gateways on other hosts
   * proxy to. Default: this host's first non-internal IPv4 address (loopback when it has none);
   * `flotilla up` passes 127.0.0.1.
   */
  advertiseHost?: string;
  /** Reconnect backoff bounds. Defaults 250 ms doubling to 10 s, with ±20% jitter. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

export interface AgentStatus {
  version: string;
  server_id: string;
  connected: boolean;
  draining: boolean;
  dispatches_in_flight: number;
  instances: Array<{ serviceId: string; deploymentId: string; pid: number; port: number }>;
}

export interface Agent {
  serverId: string;
  /** http://127.0.0.1:port of the admin API, when it is served. */
  adminUrl: string | undefined;
  admin(action: AdminAction): Promise<unknown>;
  /** Resolves once the first connection is authenticated. */
  connected(): Promise<void>;
  isConnected(): boolean;
  close(): Promise<void>;
}

/**
 * The first non-internal IPv4 address of this host (interfaces in the order the OS lists them),
 * or 127.0.0.1 when it has none: what PUBLIC services are advertised at by default.
 */
export function defaultAdvertiseHost(
  interfaces: ReturnType<typeof networkInterfaces> = networkInterfaces(),
): string {
  for (const addresses of Object.values(interfaces))
    for (const a of addresses ?? []) if (a.family === "IPv4" && !a.internal) return a.address;
  return "127.0.0.1";
}

function facts(dataDir: string, drivers: string[]): AgentFacts {
  let free = 0;
  try {
    const s = statfsSync(dataDir);
    free = s.bavail * s.bsize;
  } catch {}
  return {
    agent_version: AGENT_VERSION,
    drivers,
    cores: availableParallelism(),
    memory_bytes: totalmem(),
    disk_free_bytes: free,
  };
}

/** POSTs JSON with node:http(s) (fetch would load undici: ~15 MB the agent cannot spare). */
function postJson(
  url: URL,
  body: unknown,
): Promise<{ status: number; json: Record<string, string> }> {
  const payload = Buffer.from(JSON.stringify(body));
  const request = url.protocol === "https:" ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: "POST",
        headers: { "content-type": "application/json", "content-length": payload.length },
        timeout: 30_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          let json: Record<string, string> = {};
          try {
            json = JSON.parse(Buffer.concat(chunks).toString("utf8"));
          } catch {}
          resolve({ status: res.statusCode ?? 0, json });
        });
      },
    );
    req.once("error", reject);
    req.once("timeout", () => req.destroy(new Error("the hub did not answer within 30 s")));
    req.end(payload);
  });
}

async function join(hub: string, token: string, dataDir: string): Promise<Credentials> {
  const res = await postJson(new URL(AGENT_JOIN_PATH, hub), {
    token,
    facts: facts(dataDir, ["exec"]),
  });
  const body = res.json;
  if (res.status !== 200)
    throw new Error(`joining ${hub} failed: ${body.message ?? `HTTP ${res.status}`}`);
  const creds: Credentials = {
    hub,
    server_id: body.server_id!,
    organization_id: body.organization_id!,
    name: body.name!,
    secret: body.secret!,
  };
  saveCredentials(dataDir, creds);
  return creds;
}

/** The deploy arguments the hub sends (secrets in env arrive only inside the channel). */
function runSpecFrom(args: Record<string, unknown>): RunSpec {
  const service = args.service as {
    id: string;
    slug: string;
    visibility: "PUBLIC" | "PRIVATE";
    environment_id: string;
  };
  const deployment = args.deployment as { id: string; spec: Record<string, unknown> };
  const spec = deployment?.spec as {
    driver: RunSpec["driver"];
    template?: string;
    exec?: RunSpec["exec"];
    docker?: RunSpec["docker"];
    healthCheck: RunSpec["healthCheck"];
    restartPolicy: RunSpec["restartPolicy"];
    volumes: RunSpec["volumes"];
  };
  if (!service?.id || !deployment?.id || !spec)
    throw new Error("the dispatch lacks its service or deployment");
  if (spec.driver === "exec" ? !spec.exec : spec.driver === "docker" ? !spec.docker : true)
    throw new Error(`the deployment's spec has no ${spec.driver} section`);
  return {
    serviceId: service.id,
    serviceSlug: service.slug,
    environmentId: service.environment_id,
    deploymentId: deployment.id,
    visibility: service.visibility,
    driver: spec.driver,
    ...(typeof spec.template === "string" ? { template: spec.template } : {}),
    ...(spec.exec ? { exec: spec.exec } : {}),
    ...(spec.docker ? { docker: spec.docker } : {}),
    healthCheck: spec.healthCheck,
    restartPolicy: spec.restartPolicy,
    volumes: spec.volumes ?? [],
    env: (args.env as Record<string, string>) ?? {},
  };
}

export async function startAgent(o: AgentOptions): Promise<Agent> {
  if (o.adminAdvertiseUrl !== undefined && !/^https?:\/\/\S{1,500}$/.test(o.adminAdvertiseUrl))
    throw new Error(
      `--admin-advertise-url ${o.adminAdvertiseUrl.slice(0, 80)} is not an http(s) URL of at most 500 characters`,
    );
  let creds = loadCredentials(o.dataDir);
  if (!creds) {
    if (!o.hub || !o.joinToken)
      throw new Error(
        `${o.dataDir} holds no credentials: pass --hub and --join-token (from flotilla servers add)`,
      );
    creds = await join(o.hub.split(",")[0]!.trim(), o.joinToken, o.dataDir);
    o.logger.info({ server: creds.server_id, serverName: creds.name }, "joined the hub");
  }
  // Several replicas, comma-separated: each reconnect tries the next, so an agent whose hub died
  // comes back through another one (as behind a load balancer).
  const hubs = (o.hub ?? creds.hub)
    .split(",")
    .map((h) => h.trim())
    .filter(Boolean);
  let hubIndex = 0;
  let { secret } = creds;
  const serverId = creds.server_id;
  const workloadUser: WorkloadUser = resolveWorkloadUser(o.workloadUser ?? "nobody");
  const ledger = new Ledger(o.dataDir);
  const log = o.logger.child({ server: serverId });
  const minBackoff = o.minBackoffMs ?? 250;
  const maxBackoff = o.maxBackoffMs ?? 10_000;

  let socket: WebSocket | undefined;
  let authenticated = false;
  let draining = false;
  let closing = false;
  let heartbeat: NodeJS.Timeout | undefined;
  let retry: NodeJS.Timeout | undefined;
  let backoff = minBackoff;
  const inFlight = new Map<string, Promise<void>>();
  const serviceQueues = new Map<string, Promise<void>>();
  // Values the hub sent as config: never repeated in a reason, an error or a job's output the
  // agent reports (an app's crash output often prints its database URL). Values of secret keys
  // (the hub names them) are masked from 3 characters, a README's `s3cret` included; other values
  // from 8, as shorter ones ("true", "8080", "bonjour") are too common to mask.
  // Kept per service and applied to that service's own reports only: a job's output masked with
  // another service's short secrets would tell its author which guesses are some secret here.
  const maskedByService = new Map<string, Set<string>>();
  const remember = (
    serviceId: string,
    env: Record<string, string> | undefined,
    secretKeys: unknown,
  ) => {
    const secret = new Set(Array.isArray(secretKeys) ? secretKeys : []);
    const masked = maskedByService.get(serviceId) ?? new Set<string>();
    maskedByService.set(serviceId, masked);
    for (const [key, value] of Object.entries(env ?? {}))
      if (value.length >= (secret.has(key) ? 3 : 8)) masked.add(value);
  };
  const redact = (serviceId: string, text: string) => {
    const masked = maskedByService.get(serviceId);
    if (!masked) return text;
    let out = text;
    // Longest first: a short secret inside a longer value (a user name in a database URL) must
    // not cut the longer one's mask apart, leaving the rest of it (the password) in clear.
    for (const v of [...masked].sort((a, b) => b.length - a.length))
      out = out.split(v).join("[redacted]");
    return out;
  };
  /** The service a dispatch is about ("" for none). */
  const serviceOf = (frame: Extract<HubFrame, { type: "dispatch" }>) =>
    (frame.args.service as { id?: string } | undefined)?.id ??
    frame.service_id ??
    String(frame.args.service_id ?? "");
  // Status reports wait here while the channel is down; only the latest per service matters.
  const unsent = new Map<string, StatusReport>();
  const sendStatus = (r: StatusReport) => {
    if (socket && authenticated) {
      send(socket, {
        v: 1,
        type: "status",
        service_id: r.serviceId,
        deployment_id: r.deploymentId,
        status: r.status,
        ...(r.reason !== undefined ? { reason: redact(r.serviceId, r.reason).slice(0, 4000) } : {}),
        ...(r.endpoint !== undefined ? { endpoint: r.endpoint } : {}),
      });
    } else unsent.set(r.serviceId, r);
  };
  // exec always; docker when an engine answers (DOCKER_HOST or the default socket).
  // Pid files seal their env under a key only this server's secret yields.
  const sealKey = Buffer.from(
    hkdfSync("sha256", secret, serverId, "flotilla/agent-pid-env/v1", 32),
  );
  const advertiseHost = o.advertiseHost ?? defaultAdvertiseHost();
  const execDriver = new ExecDriver(
    o.dataDir,
    workloadUser,
    sendStatus,
    log,
    sealKey,
    advertiseHost,
  );
  const drivers: Driver[] = [execDriver];
  if (await dockerAvailable()) drivers.push(await DockerDriver.create(sendStatus, log));
  const driverNames = drivers.map((d) => d.name);
  const adopted = (await Promise.all(drivers.map((d) => d.adopt()))).flat();
  if (adopted.length) log.info({ adopted }, "adopted instances that survived the agent restart");
  const driverFor = (name: string) => {
    const d = drivers.find((x) => x.name === name);
    if (!d)
      throw new Error(
        `the ${name} driver is not available on this server (it has: ${driverNames.join(", ")})`,
      );
    return d;
  };
  /** The driver running a service now (exec first), for stop, delete and logs. */
  const runnerOf = (serviceId: string) => drivers.find((d) => d.has(serviceId)) ?? drivers[0]!;
  let markConnected: () => void = () => {};
  const firstConnection = new Promise<void>((resolve) => {
    markConnected = resolve;
  });

  const send = (ws: WebSocket, frame: AgentFrame) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
  };

  /** Built-in jobs of managed databases: backup, restore, prune (args.task names one). */
  async function databaseTask(frame: Extract<HubFrame, { type: "dispatch" }>): Promise<Outcome> {
    const args = frame.args;
    const env = (args.env as Record<string, string> | undefined) ?? {};
    remember(serviceOf(frame), env, args.secret_keys);
    const service = (args.service ?? {}) as { id?: string; slug?: string };
    const serviceId = serviceOf(frame);
    if (!/^[0-9a-f-]{36}$/.test(serviceId)) throw new Error(`${args.task} needs its service`);
    if (drivers.some((d) => d !== execDriver && d.has(serviceId)))
      throw new Error(`${args.task} runs for exec-driven databases only in this version`);
    const ctx: TaskContext = {
      user: workloadUser,
      backupDir: execDriver.backupDir(serviceId),
      runningPort: execDriver.runningPort(serviceId),
      slug: service.slug ?? serviceId,
      env,
    };
    try {
      const result =
        args.task === "postgres.backup"
          ? await backupTask(args, ctx)
          : args.task === "postgres.restore"
            ? await restoreTask(args, ctx)
            : args.task === "postgres.prune"
              ? pruneTask(args, ctx)
              : undefined;
      if (!result) throw new Error(`unknown task ${String(args.task).slice(0, 40)}`);
      return {
        ok: true,
        result: {
          ...result,
          stdout: redact(serviceId, result.stdout),
          stderr: redact(serviceId, result.stderr),
        },
      };
    } catch (err) {
      const r = (err as { result?: { stdout: string; stderr: string } }).result;
      return {
        ok: false,
        error: (err as Error).message,
        ...(r
          ? {
              result: {
                ...r,
                stdout: redact(serviceId, r.stdout),
                stderr: redact(serviceId, r.stderr),
              },
            }
          : {}),
      };
    }
  }

  async function execute(frame: Extract<HubFrame, { type: "dispatch" }>): Promise<Outcome> {
    if (frame.op !== "job") return { ok: true, result: await lifecycle(frame) };
    if (typeof frame.args.task === "string") return databaseTask(frame);
    const job = checkJobArgs(frame.args);
    remember(serviceOf(frame), job.env, frame.args.secret_keys);
    const raw = await runJob(job, workloadUser);
    // The result goes into the dispatch row: never with a config value the job printed.
    // PostgreSQL's jsonb refuses NUL: binary output would never be recorded.
    const clean = (text: string) => redact(serviceOf(frame), text).replaceAll("\0", "\uFFFD");
    const result = { ...raw, stdout: clean(raw.stdout), stderr: clean(raw.stderr) };
    return result.exit_code === 0
      ? { ok: true, result }
      : {
          ok: false,
          result,
          error: `${job.command} exited with ${result.exit_code ?? result.signal}`,
        };
  }

  async function lifecycle(frame: Extract<HubFrame, { type: "dispatch" }>) {
    const serviceId = frame.service_id;
    if (!serviceId) throw new Error(`${frame.op} needs a service`);
    if (frame.op === "stop") return runnerOf(serviceId).stop(serviceId, true);
    if (frame.op === "delete")
      return runnerOf(serviceId).remove(serviceId, frame.args.purge_data === true);
    const spec = runSpecFrom(frame.args);
    remember(serviceId, spec.env, frame.args.secret_keys);
    const driver = driverFor(spec.driver);
    // A service moving between drivers: the old instance goes first.
    const previous = drivers.find((d) => d !== driver && d.has(serviceId));
    if (previous) await previous.remove(serviceId, false);
    if (frame.op === "start") return driver.start(spec);
    // deploy and restart: whatever runs for the service stops first.
    return driver.deploy(spec);
  }

  const logStreams = new Map<string, () => void>();

  /** Sends the last lines of a service's log, then (follow) new lines until told to stop. */
  /** Sends lines in frames of at most ~256 KiB, each line cut to 64 KiB (the frame schema's bound). */
  function sendLines(ws: WebSocket, stream: string, lines: string[]) {
    let batch: string[] = [];
    let bytes = 0;
    for (const raw of lines) {
      const line = raw.length > 65_536 ? `${raw.slice(0, 65_520)}[cut]` : raw;
      if (batch.length && (bytes + line.length > 256 * 1024 || batch.length >= 1000)) {
        send(ws, { v: 1, type: "log", stream, lines: batch });
        batch = [];
        bytes = 0;
      }
      batch.push(line);
      // JSON escaping can double a line's size; count it twice to stay under the frame limit.
      bytes += line.length * 2;
    }
    if (batch.length) send(ws, { v: 1, type: "log", stream, lines: batch });
  }

  async function streamLogs(ws: WebSocket, frame: Extract<HubFrame, { type: "logs" }>) {
    try {
      const runner = runnerOf(frame.service_id);
      sendLines(ws, frame.stream, await runner.tail(frame.service_id, frame.lines));
      if (!frame.follow) {
        send(ws, { v: 1, type: "log_end", stream: frame.stream });
        return;
      }
      const stop = runner.follow(frame.service_id, (more) => sendLines(ws, frame.stream, more));
      const end = () => {
        stop();
        logStreams.delete(frame.stream);
      };
      logStreams.set(frame.stream, end);
      ws.once("close", end);
    } catch (err) {
      send(ws, {
        v: 1,
        type: "log_end",
        stream: frame.stream,
        error: (err as Error).message.slice(0, 4000),
      });
    }
  }

  /** A dispatch runs once: a resend is answered from the ledger; one in flight is not started again. */
  function onDispatch(ws: WebSocket, frame: Extract<HubFrame, { type: "dispatch" }>) {
    const known = ledger.get(frame.id);
    if (known || inFlight.has(frame.id)) {
      send(ws, { v: 1, type: "ack", id: frame.id, duplicate: true });
      if (known) send(ws, { v: 1, type: "result", id: frame.id, ...known });
      return;
    }
    if (draining) {
      // Not started: the hub puts it back to pending and holds it until the agent resumes.
      send(ws, { v: 1, type: "defer", id: frame.id, reason: "the agent is draining" });
      return;
    }
    send(ws, { v: 1, type: "ack", id: frame.id, duplicate: false });
    startDispatch(frame);
  }

  /**
   * A dispatch delivered straight to the admin API (route() "direct": no replica holds this
   * agent's socket). The same ledger decides, so a dispatch that also arrives over the channel
   * (or twice here) still runs once; the answer is its outcome, or why it was not started.
   */
  async function directDispatch(
    frame: Extract<HubFrame, { type: "dispatch" }>,
  ): Promise<Outcome | { deferred: string }> {
    const known = ledger.get(frame.id);
    if (known) return known;
    if (!inFlight.has(frame.id)) {
      if (draining) return { deferred: "the agent is draining" };
      startDispatch(frame);
    }
    await inFlight.get(frame.id);
    return (
      ledger.get(frame.id) ?? {
        ok: false,
        error: "the agent could not record this dispatch's outcome",
      }
    );
  }

  function startDispatch(frame: Extract<HubFrame, { type: "dispatch" }>) {
    const ctx = { ...contextFromFrame(frame.ctx) };
    // Lifecycle operations of one service run one after another, in the order they arrive:
    // a stop never races the start before it, and two deploys never start two instances.
    // Jobs run on their own: an hour-long job must not hold up the service's deploys and stops.
    const key = frame.op === "job" ? frame.id : (frame.service_id ?? frame.id);
    const previous = serviceQueues.get(key) ?? Promise.resolve();
    const work = previous
      .then(() =>
        runWithContext(ctx, async () => {
          log.info({ dispatch: frame.id, op: frame.op }, "executing dispatch");
          ledger.begin(frame.id);
          let outcome: Outcome;
          try {
            outcome = await execute(frame);
          } catch (err) {
            outcome = { ok: false, error: (err as Error).message };
          }
          // The frame schema bounds an error to 4,096 characters; an app's crash output may not.
          if (outcome.error)
            outcome.error = redact(serviceOf(frame), outcome.error)
              .replaceAll("\0", "\uFFFD")
              .slice(0, 4000);
          ledger.record(frame.id, outcome);
          log.info({ dispatch: frame.id, ok: outcome.ok }, "dispatch executed");
          // The socket may have been replaced meanwhile: report on whichever is current.
          if (socket) send(socket, { v: 1, type: "result", id: frame.id, ...outcome });
        }),
      )
      .catch((err) => log.error({ err, dispatch: frame.id }, "dispatch bookkeeping failed"))
      .finally(() => {
        inFlight.delete(frame.id);
        if (serviceQueues.get(key) === work) serviceQueues.delete(key);
      });
    serviceQueues.set(key, work);
    inFlight.set(frame.id, work);
  }

  function connect() {
    if (closing) return;
    const url = new URL(AGENT_CONNECT_PATH, hubs[hubIndex % hubs.length]);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url, { maxPayload: MAX_FRAME_BYTES, handshakeTimeout: 10_000 });
    socket = ws;
    ws.on("open", () => {
      send(ws, {
        v: 1,
        type: "hello",
        server_id: serverId,
        ...facts(o.dataDir, driverNames),
        ...(advertisedAdminUrl ? { admin_url: advertisedAdminUrl } : {}),
      });
    });
    ws.on("message", (data, isBinary) => {
      let frame: HubFrame;
      try {
        if (isBinary) throw new FrameError("frame.malformed", "binary frames are not accepted");
        frame = parseHubFrame(data.toString());
      } catch (err) {
        const e = err as FrameError;
        log.warn({ code: e.code, reason: e.message }, "malformed hub frame rejected");
        send(ws, { v: 1, type: "error", code: e.code ?? "frame.malformed", message: e.message });
        return;
      }
      switch (frame.type) {
        case "challenge":
          send(ws, { v: 1, type: "auth", proof: authProof(secret, serverId, frame.nonce) });
          return;
        case "welcome": {
          authenticated = true;
          backoff = minBackoff;
          log.info({ session: frame.session_id }, "connected to the hub");
          clearInterval(heartbeat);
          // A hub that vanished without closing the TCP connection (power loss, a partition)
          // answers no ping: after two silent intervals the socket is dropped and the next
          // replica is tried, instead of waiting minutes for TCP to notice.
          let lastPong = Date.now();
          ws.on("pong", () => {
            lastPong = Date.now();
          });
          heartbeat = setInterval(() => {
            if (Date.now() - lastPong > 2 * frame.heartbeat_interval_ms + 5000) {
              log.warn("the hub answers no ping; reconnecting");
              ws.terminate();
              return;
            }
            const f = facts(o.dataDir, driverNames);
            send(ws, { v: 1, type: "heartbeat", disk_free_bytes: f.disk_free_bytes });
            if (ws.readyState === WebSocket.OPEN) ws.ping();
          }, frame.heartbeat_interval_ms);
          heartbeat.unref();
          for (const r of unsent.values()) sendStatus(r);
          unsent.clear();
          if (draining) send(ws, { v: 1, type: "drain_state", draining: true });
          markConnected();
          return;
        }
        case "dispatch":
          if (!authenticated) return;
          onDispatch(ws, frame);
          return;
        case "logs":
          if (!authenticated) return;
          void streamLogs(ws, frame);
          return;
        case "logs_stop":
          logStreams.get(frame.stream)?.();
          return;
        case "admin":
          if (!authenticated) return;
          admin(frame.action).then(
            (result) => send(ws, { v: 1, type: "admin_result", id: frame.id, ok: true, result }),
            (err: Error) =>
              send(ws, { v: 1, type: "admin_result", id: frame.id, ok: false, error: err.message }),
          );
          return;
        case "error":
          log.warn({ code: frame.code, reason: frame.message }, "the hub refused a frame");
          return;
      }
    });
    ws.on("error", (err) => log.warn({ err: err.message }, "control channel error"));
    ws.on("close", (code, reason) => {
      if (socket === ws) {
        authenticated = false;
        clearInterval(heartbeat);
      }
      if (closing || socket !== ws) return;
      // Jittered exponential backoff: a hub restart is not met by every agent at once.
      const delay = Math.round(backoff * (0.8 + Math.random() * 0.4));
      backoff = Math.min(backoff * 2, maxBackoff);
      log.info(
        { code, reason: reason.toString(), retryInMs: delay },
        "control channel closed; reconnecting",
      );
      hubIndex++;
      retry = setTimeout(connect, delay);
    });
  }

  function status(): AgentStatus {
    return {
      version: AGENT_VERSION,
      server_id: serverId,
      connected: authenticated,
      draining,
      dispatches_in_flight: inFlight.size,
      instances: drivers.flatMap((d) => d.list()),
    };
  }

  async function admin(action: AdminAction): Promise<unknown> {
    switch (action) {
      case "status":
        return status();
      case "drain": {
        draining = true;
        if (socket) send(socket, { v: 1, type: "drain_state", draining: true });
        const finishing = inFlight.size;
        await Promise.allSettled(inFlight.values());
        log.info({ finished: finishing }, "drained: no dispatch in flight");
        return { drained: true, finished_in_flight: finishing };
      }
      case "resume":
        draining = false;
        if (socket) send(socket, { v: 1, type: "drain_state", draining: false });
        return { draining: false };
      case "reload": {
        // Re-read the credentials (a re-enrolled or rotated secret) without touching instances.
        const fresh = loadCredentials(o.dataDir);
        if (!fresh || fresh.server_id !== serverId)
          throw new Error(`${o.dataDir}/agent.json no longer names server ${serverId}`);
        const changed = fresh.secret !== secret;
        secret = fresh.secret;
        if (changed) socket?.close(1000, "credentials reloaded");
        return {
          reloaded: true,
          reconnecting: changed,
          instances: drivers.reduce((n, d) => n + d.list().length, 0),
        };
      }
    }
  }

  const adminServer =
    o.adminPort === undefined
      ? undefined
      : await serveAdmin({
          port: o.adminPort,
          host: o.adminHost ?? "127.0.0.1",
          status,
          admin,
          log,
          // Derived per request: a reload may have replaced the secret.
          signingKey: () => directKey(secret, serverId),
          sealingKey: () => directSealKey(secret, serverId),
          dispatch: directDispatch,
        });
  const advertisedAdminUrl =
    o.adminAdvertiseUrl && adminServer
      ? o.adminAdvertiseUrl.replace("{port}", new URL(adminServer.url).port)
      : undefined;
  connect();
  return {
    serverId,
    adminUrl: adminServer?.url,
    admin,
    connected: () => firstConnection,
    isConnected: () => authenticated,
    async close() {
      closing = true;
      clearTimeout(retry);
      clearInterval(heartbeat);
      await Promise.allSettled(inFlight.values());
      await Promise.all(drivers.map((d) => d.close()));
      await adminServer?.close();
      if (socket && socket.readyState !== WebSocket.CLOSED) {
        const ws = socket;
        await new Promise<void>((resolve) => {
          ws.once("close", () => resolve());
          ws.close(1000, "agent stopping");
          setTimeout(resolve, 2000).unref();
        });
      }
    },
  };
}
