// The agents' control channel on a hub replica: join, challenge-response auth, affinity claim and
// release, heartbeats, and delivery of dispatches to the agents whose sockets this replica holds.
import { randomBytes, randomUUID } from "node:crypto";
import websocket from "@fastify/websocket";
import type { FastifyInstance } from "fastify";
import type { WebSocket } from "ws";
import {
  type AdminAction,
  AGENT_CONNECT_PATH,
  AGENT_JOIN_PATH,
  type AgentFacts,
  type AgentFrame,
  contextFromRow,
  contextToFrame,
  FlotillaError,
  FrameError,
  type HubFrame,
  type Logger,
  MAX_FRAME_BYTES,
  parseAgentFrame,
  runWithContext,
} from "../../shared/index.js";
import { type Db, LOCK_KEYS } from "../../store/index.js";
import { toConnectError } from "../api/index.js";
import {
  DISPATCH_CHANNEL,
  type Dispatch,
  type DispatchStore,
  type ServersService,
} from "../servers/index.js";

/** What the channel reports upward: an agent's observation of a deployment (the observed-state path). */
export interface StatusSink {
  observe(
    organizationId: string,
    o: {
      /** The reporting agent's server: it may speak only of services placed on it. */
      serverId: string;
      serviceId: string;
      deploymentId: string;
      status: string;
      reason?: string;
      endpoint?: string;
    },
  ): Promise<void>;
}

export interface ControlChannelOptions {
  db: Db;
  servers: ServersService;
  dispatches: DispatchStore;
  status: StatusSink;
  hubId: string;
  logger: Logger;
  /** How often agents heartbeat. Default 15 s, so a 90 s freshness window tolerates 5 losses. */
  heartbeatIntervalMs?: number;
  /**
   * Completes a dispatch's arguments at the moment it is sent (secrets are decrypted here and
   * travel only inside the authenticated channel; the row never holds them).
   */
  resolveArgs?: (d: Dispatch) => Promise<Record<string, unknown>>;
  /** How often the sweeps run (stale dispatches and affinity). Default 15 s. */
  sweepIntervalMs?: number;
  /** Dispatches past their deadline are handed out again this many times, then failed. Default 5. */
  maxAttempts?: number;
  onSweep?: (r: {
    requeued: number;
    failed: number;
    offline: number;
    pendingTooLong: number;
  }) => void;
  /** Dispatch counters and timings (metrics live with the process, not the module). */
  observe?: {
    claimed(op: string): void;
    finished(op: string, ok: boolean, seconds: number): void;
    drained(seconds: number): void;
  };
  /** An agent that has not proven its secret by then is disconnected. Default 10 s. */
  authTimeoutMs?: number;
  /** More singleton sweep work, run under the same lock (route() "direct" for unheld agents). */
  sweepMore?: () => Promise<void>;
}

interface Session {
  serverId: string;
  organizationId: string;
  sessionId: string;
  socket: WebSocket;
  /** Set by the agent: while draining it is sent no dispatch (they wait, pending). */
  draining: boolean;
  /** When the agent last spoke: a silent socket (a vanished agent host) is dropped. */
  lastSeen: number;
  /** Results being recorded: they run side by side (each its own compare-and-set). */
  recording: Set<Promise<void>>;
}

/** Results of one agent recorded at once (each takes a pooled connection for one statement). */
const MAX_RECORDING = 8;

/** Dispatches claimed per round trip by a drain. */
const DRAIN_BATCH = 100;

/** How long an admin request through the channel may take (a drain waits for work in flight). */
const ADMIN_TIMEOUT_MS = 5 * 60_000;

// WebSocket close codes in the private range, so an agent can tell why it was dropped.
const CLOSE = { authFailed: 4001, replaced: 4002, authTimeout: 4003, shutdown: 1001 } as const;

interface LogStream {
  serverId: string;
  sessionId: string;
  push(lines: string[]): void;
  end(error?: string): void;
}

/**
 * How long the agent has before the sweep hands a dispatch out again: a job its own timeout plus
 * a minute (a job may run up to an hour; re-sending one still running would only be answered
 * "in flight", but would spend its attempts); anything else 5 minutes (a deploy waits at most
 * 30 s for health, 60 s under Docker, plus a 10 s stop).
 */
function deadlineSeconds(d: Dispatch): number {
  const timeoutMs = Number(d.args.timeout_ms);
  return d.op === "job" && Number.isFinite(timeoutMs) && timeoutMs > 0
    ? Math.ceil(timeoutMs / 1000) + 60
    : 300;
}

export class ControlChannel {
  private readonly sessions = new Map<string, Session>();
  private readonly logStreams = new Map<string, LogStream>();
  private readonly adminCalls = new Map<
    string,
    { serverId: string; sessionId: string; settle(ok: boolean, value: unknown): void }
  >();
  private readonly drains = new Map<string, { running: Promise<void>; again: boolean }>();
  private unlisten: (() => Promise<void>) | undefined;
  private sweeper: NodeJS.Timeout | undefined;
  private closing = false;

  constructor(private readonly o: ControlChannelOptions) {}

  /** Registers the join endpoint and the WebSocket route, and listens for dispatch wake-ups. */
  async register(app: FastifyInstance): Promise<void> {
    await app.register(websocket, { options: { maxPayload: MAX_FRAME_BYTES } });
    app.post(AGENT_JOIN_PATH, async (request, reply) => {
      const body = (request.body ?? {}) as { token?: unknown; facts?: Partial<AgentFacts> };
      try {
        const { server, secret } = await this.o.servers.join(
          String(body.token ?? ""),
          typeof body.facts === "object" && body.facts ? body.facts : {},
        );
        this.o.logger.info({ server: server.id, name: server.name }, "server joined");
        return {
          server_id: server.id,
          organization_id: server.organizationId,
          name: server.name,
          secret,
        };
      } catch (err) {
        const e = toConnectError(err);
        const status = err instanceof FlotillaError ? err.httpStatus : 500;
        return reply
          .code(status)
          .send({ code: e.metadata.get("flotilla-error-code"), message: e.rawMessage });
      }
    });
    app.get(AGENT_CONNECT_PATH, { websocket: true }, (socket) => this.accept(socket));
    this.unlisten = await this.o.db.listen(
      DISPATCH_CHANNEL,
      (serverId) => this.wake(serverId),
      // Wake-ups sent while the listener was reconnecting are lost: drain every agent held here.
      () => {
        for (const serverId of this.sessions.keys()) this.wake(serverId);
      },
    );
    this.sweeper = setInterval(() => void this.sweep(), this.o.sweepIntervalMs ?? 15_000);
    this.sweeper.unref();
  }

  /**
   * A service's log lines from the agent that runs it: the last `lines`, then (follow) new ones
   * until `signal` aborts. Needs this replica to hold the agent's socket.
   */
  async *streamLogs(
    serverId: string,
    serviceId: string,
    lines: number,
    follow: boolean,
    signal: AbortSignal,
  ): AsyncGenerator<string[]> {
    const session = this.sessions.get(serverId);
    if (!session)
      throw new FlotillaError(
        "agent.unavailable",
        `the agent of server ${serverId} is not connected to this hub; try again when it is online`,
      );
    const stream = randomUUID();
    const queue: string[][] = [];
    let ended = false;
    let failure: string | undefined;
    let wake: (() => void) | undefined;
    this.logStreams.set(stream, {
      serverId,
      sessionId: session.sessionId,
      push: (l) => {
        queue.push(l);
        wake?.();
      },
      end: (error) => {
        ended = true;
        failure = error;
        wake?.();
      },
    });
    const onAbort = () => wake?.();
    signal.addEventListener("abort", onAbort);
    this.send(session.socket, { v: 1, type: "logs", stream, service_id: serviceId, lines, follow });
    try {
      while (!signal.aborted) {
        const next = queue.shift();
        if (next) {
          yield next;
          continue;
        }
        if (ended) break;
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = undefined;
      }
      if (failure) throw new FlotillaError("internal", failure);
    } finally {
      signal.removeEventListener("abort", onAbort);
      this.logStreams.delete(stream);
      if (!ended) this.send(session.socket, { v: 1, type: "logs_stop", stream });
    }
  }

  /** Asks the server's agent to do an admin action (status, drain, resume, reload) and waits. */
  async admin(
    serverId: string,
    action: AdminAction,
    timeoutMs = ADMIN_TIMEOUT_MS,
  ): Promise<unknown> {
    const session = this.sessions.get(serverId);
    if (!session)
      throw new FlotillaError(
        "agent.unavailable",
        `the agent of server ${serverId} is not connected to this hub; try again when it is online`,
      );
    const id = randomUUID();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.adminCalls.delete(id);
        reject(
          new FlotillaError(
            "agent.unavailable",
            `the agent did not answer ${action} within ${timeoutMs / 1000} s`,
          ),
        );
      }, timeoutMs);
      timer.unref();
      this.adminCalls.set(id, {
        serverId,
        sessionId: session.sessionId,
        settle: (ok, value) => {
          clearTimeout(timer);
          this.adminCalls.delete(id);
          if (ok) resolve(value);
          else
            reject(
              new FlotillaError(
                "resource.conflict",
                `the agent refused ${action}: ${String(value)}`,
              ),
            );
        },
      });
      this.send(session.socket, { v: 1, type: "admin", id, action });
    });
  }

  /** True when this replica holds the server's agent socket. */
  holds(serverId: string): boolean {
    return this.sessions.has(serverId);
  }

  /** Delivers the server's pending dispatches if this replica holds its agent; coalesced per server. */
  wake(serverId: string): void {
    if (this.closing || !this.sessions.has(serverId)) return;
    const current = this.drains.get(serverId);
    if (current) {
      current.again = true;
      return;
    }
    const entry = { running: Promise.resolve(), again: false };
    entry.running = (async () => {
      do {
        entry.again = false;
        const started = performance.now();
        await this.drain(serverId)
          .then(() => this.o.observe?.drained((performance.now() - started) / 1000))
          .catch((err) =>
            this.o.logger.warn(
              { err, server: serverId },
              "dispatch drain failed; the next wake-up retries",
            ),
          );
      } while (entry.again && !this.closing);
      this.drains.delete(serverId);
    })();
    this.drains.set(serverId, entry);
  }

  private async drain(serverId: string): Promise<void> {
    for (;;) {
      const session = this.sessions.get(serverId);
      if (!session || session.draining) return;
      // One compare-and-set claims the batch; another drain's rows are skipped, not shared.
      const batch = await this.o.dispatches.claimBatch(serverId, this.o.hubId, DRAIN_BATCH);
      for (const [i, d] of batch.entries()) {
        if (this.sessions.get(serverId) !== session || session.draining) {
          // The agent went away or started draining: the rest wait, pending, as before the claim.
          for (const rest of batch.slice(i)) await this.o.dispatches.release(rest.id, this.o.hubId);
          return;
        }
        this.o.observe?.claimed(d.op);
        await this.deliver(session, d);
      }
      if (batch.length < DRAIN_BATCH) return;
    }
  }

  /** Completes the arguments and sends the frame; a dispatch that cannot go out goes back to pending. */
  private async deliver(session: Session, d: Dispatch): Promise<void> {
    let args: Record<string, unknown>;
    try {
      args = this.o.resolveArgs ? await this.o.resolveArgs(d) : d.args;
    } catch (err) {
      await this.o.dispatches.fail(
        d.id,
        this.o.hubId,
        `could not prepare the dispatch: ${(err as Error).message}`,
      );
      return;
    }
    // The socket may have gone while the arguments were prepared.
    if (
      this.sessions.get(session.serverId) !== session ||
      session.socket.readyState !== session.socket.OPEN
    ) {
      await this.o.dispatches.release(d.id, this.o.hubId);
      return;
    }
    this.sendDispatch(session, d, args);
  }

  private sendDispatch(session: Session, d: Dispatch, args: Record<string, unknown>): void {
    const ctx = {
      ...contextFromRow({ correlation_id: d.correlationId, traceparent: d.traceparent }),
      tenant: d.organizationId,
    };
    // The executing replica continues the trace stored with the dispatch.
    runWithContext(ctx, () => {
      this.o.logger.info(
        { dispatch: d.id, op: d.op, server: d.serverId, attempt: d.attempts },
        "dispatch sent",
      );
      this.send(session.socket, {
        v: 1,
        type: "dispatch",
        id: d.id,
        ctx: contextToFrame(ctx),
        op: d.op,
        service_id: d.serviceId,
        deployment_id: d.deploymentId,
        args,
      });
    });
  }

  private send(socket: WebSocket, frame: HubFrame): void {
    if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(frame));
  }

  private accept(socket: WebSocket): void {
    const log = this.o.logger;
    let phase: "hello" | "auth" | "open" = "hello";
    let hello: Extract<AgentFrame, { type: "hello" }> | undefined;
    let session: Session | undefined;
    const nonce = randomBytes(32).toString("hex");
    const authTimer = setTimeout(
      () => socket.close(CLOSE.authTimeout, "authenticate within the time limit"),
      this.o.authTimeoutMs ?? 10_000,
    );
    authTimer.unref();
    // Frames are handled one at a time, in arrival order.
    let queue = Promise.resolve();

    socket.on("message", (data, isBinary) => {
      queue = queue.then(async () => {
        let frame: AgentFrame;
        try {
          if (isBinary) throw new FrameError("frame.malformed", "binary frames are not accepted");
          frame = parseAgentFrame(data.toString());
        } catch (err) {
          const e = err as FrameError;
          log.warn(
            { code: e.code, reason: e.message, server: hello?.server_id },
            "malformed agent frame rejected",
          );
          this.send(socket, {
            v: 1,
            type: "error",
            code: e.code ?? "frame.malformed",
            message: e.message,
          });
          return;
        }
        try {
          if (phase === "hello") {
            if (frame.type !== "hello") throw new FrameError("frame.malformed", "say hello first");
            hello = frame;
            phase = "auth";
            this.send(socket, { v: 1, type: "challenge", nonce });
          } else if (phase === "auth") {
            if (frame.type !== "auth")
              throw new FrameError("frame.malformed", "answer the challenge first");
            const server = await this.o.servers.verifyProof(hello!.server_id, nonce, frame.proof);
            if (!server) {
              log.warn({ server: hello!.server_id }, "agent failed authentication");
              socket.close(CLOSE.authFailed, "authentication failed");
              return;
            }
            session = await this.open(socket, server.id, server.organizationId, hello!);
            clearTimeout(authTimer);
            phase = "open";
          } else {
            await this.handle(session!, frame);
          }
        } catch (err) {
          const code = err instanceof FrameError ? err.code : "internal";
          log.warn({ err, server: hello?.server_id }, "agent frame refused");
          // Before the channel is open, a failure (a database blip during the claim) must not
          // leave the agent connected but never welcomed: close, and it reconnects.
          if (phase !== "open" && !(err instanceof FrameError)) {
            socket.close(1011, "the hub could not open the channel; reconnect");
            return;
          }
          this.send(socket, {
            v: 1,
            type: "error",
            code,
            message:
              err instanceof FrameError ? err.message : "the hub could not handle this frame",
          });
        }
      });
    });
    socket.on("error", (err) => log.warn({ err, server: hello?.server_id }, "agent socket error"));
    socket.on("close", () => {
      clearTimeout(authTimer);
      queue = queue.then(() => this.closed(session));
    });
  }

  private async open(
    socket: WebSocket,
    serverId: string,
    organizationId: string,
    hello: AgentFacts,
  ) {
    const sessionId = randomUUID();
    await this.o.servers.claim(serverId, this.o.hubId, sessionId, {
      agent_version: hello.agent_version,
      drivers: hello.drivers,
      cores: hello.cores,
      memory_bytes: hello.memory_bytes,
      disk_free_bytes: hello.disk_free_bytes,
      ...(hello.admin_url !== undefined ? { admin_url: hello.admin_url } : {}),
    });
    const previous = this.sessions.get(serverId);
    const session: Session = {
      serverId,
      organizationId,
      sessionId,
      socket,
      draining: false,
      lastSeen: Date.now(),
      recording: new Set(),
    };
    this.sessions.set(serverId, session);
    // Newest connection wins; the old socket's close finds the row no longer names it.
    if (previous)
      previous.socket.close(CLOSE.replaced, "a newer connection of this agent took over");
    this.o.logger.info({ server: serverId, session: sessionId }, "agent connected");
    this.send(socket, {
      v: 1,
      type: "welcome",
      session_id: sessionId,
      heartbeat_interval_ms: this.o.heartbeatIntervalMs ?? 15_000,
    });
    // Reconcile on connect. In-progress dispatches may have lost their frame or their result
    // (a dropped connection, a hub restart): send them again; the agent answers a dispatch it
    // already ran from its ledger, and does not start one it is running a second time.
    for (const d of await this.o.dispatches.inProgressFor(serverId)) {
      const taken = await this.o.dispatches.retake(d.id, this.o.hubId, deadlineSeconds(d));
      if (taken) await this.deliver(session, taken);
    }
    // Then whatever was intended while the agent was away.
    this.wake(serverId);
    return session;
  }

  /** The agent's outcome for a dispatch, as one addressed compare-and-set. */
  private async recordResult(
    serverId: string,
    frame: Extract<AgentFrame, { type: "result" }>,
  ): Promise<void> {
    // One compare-and-set, addressed: only a dispatch in progress for this server moves.
    const outcome = {
      ok: frame.ok,
      ...(frame.result !== undefined ? { result: frame.result } : {}),
      ...(frame.error !== undefined ? { error: frame.error } : {}),
    };
    let d = await this.o.dispatches.finish(frame.id, serverId, outcome).catch(async (err: Error) =>
      // A result the database refuses must still end the dispatch, with the reason.
      this.o.dispatches.finish(frame.id, serverId, {
        ok: false,
        error: `the agent's result could not be recorded: ${err.message}`,
      }),
    );
    const recorded = d !== null;
    if (!d) {
      // A repeated result (already recorded), or one about another server's dispatch.
      d = (await this.o.dispatches.get(frame.id).catch(() => undefined)) ?? null;
      if (!d || d.serverId !== serverId)
        throw new FrameError(
          "frame.malformed",
          `dispatch ${frame.id} is not addressed to this server`,
        );
    }
    const row = d;
    // The executing replica's log lines carry the trace and correlation stored with the intent.
    runWithContext(
      {
        ...contextFromRow({ correlation_id: row.correlationId, traceparent: row.traceparent }),
        tenant: row.organizationId,
      },
      () => this.o.logger.info({ dispatch: row.id, ok: frame.ok, recorded }, "dispatch result"),
    );
    if (recorded)
      this.o.observe?.finished(row.op, frame.ok, (Date.now() - row.createdAt.getTime()) / 1000);
  }

  private async handle(session: Session, frame: AgentFrame): Promise<void> {
    const { serverId, sessionId } = session;
    session.lastSeen = Date.now();
    switch (frame.type) {
      case "heartbeat": {
        const owned = await this.o.servers.heartbeat(serverId, this.o.hubId, sessionId, frame);
        if (!owned)
          session.socket.close(CLOSE.replaced, "another connection of this agent took over");
        return;
      }
      case "ack":
        this.o.logger.debug(
          { dispatch: frame.id, duplicate: frame.duplicate },
          "dispatch acknowledged",
        );
        return;
      case "result": {
        // Results are independent of each other: recorded side by side (up to
        // MAX_RECORDING per agent), not one round trip after another. Frames before a result
        // (its service's status reports) were handled before it started, so the row still
        // says done only after what the agent reported on the way.
        while (session.recording.size >= MAX_RECORDING) await Promise.race(session.recording);
        const recording: Promise<void> = this.recordResult(serverId, frame)
          .catch((err) => {
            this.o.logger.warn({ err, server: serverId }, "agent frame refused");
            this.send(session.socket, {
              v: 1,
              type: "error",
              code: err instanceof FrameError ? err.code : "internal",
              message:
                err instanceof FrameError ? err.message : "the hub could not handle this frame",
            });
          })
          .finally(() => session.recording.delete(recording));
        session.recording.add(recording);
        return;
      }
      case "defer": {
        // Not started by the agent: back to pending, delivered again when it resumes.
        const d = await this.o.dispatches.get(frame.id).catch(() => undefined);
        if (!d || d.serverId !== serverId)
          throw new FrameError(
            "frame.malformed",
            `dispatch ${frame.id} is not addressed to this server`,
          );
        // Only while this replica holds the claim: a defer about another replica's delivery
        // leaves it to that replica (or the reaper).
        await this.o.dispatches.release(d.id, this.o.hubId);
        this.o.logger.info(
          { dispatch: d.id, reason: frame.reason },
          "dispatch deferred by the agent",
        );
        return;
      }
      case "drain_state":
        session.draining = frame.draining;
        this.o.logger.info({ server: serverId, draining: frame.draining }, "agent drain state");
        if (!frame.draining) this.wake(serverId);
        return;
      case "admin_result": {
        const call = this.adminCalls.get(frame.id);
        if (!call || call.serverId !== serverId) return;
        call.settle(frame.ok, frame.ok ? frame.result : frame.error);
        return;
      }
      case "log":
      case "log_end": {
        const stream = this.logStreams.get(frame.stream);
        // Only the server a stream was asked of may answer it.
        if (!stream || stream.serverId !== serverId) return;
        if (frame.type === "log") stream.push(frame.lines);
        else stream.end(frame.error);
        return;
      }
      case "status":
        await runWithContext(
          {
            ...contextFromRow({
              correlation_id: frame.ctx?.correlation,
              traceparent: frame.ctx?.traceparent,
            }),
            tenant: session.organizationId,
          },
          () =>
            this.o.status.observe(session.organizationId, {
              serverId: session.serverId,
              serviceId: frame.service_id,
              deploymentId: frame.deployment_id,
              status: frame.status,
              ...(frame.reason !== undefined ? { reason: frame.reason } : {}),
              ...(frame.endpoint !== undefined ? { endpoint: frame.endpoint } : {}),
            }),
        );
        return;
      default:
        throw new FrameError(
          "frame.malformed",
          `${frame.type} is not expected after authentication`,
        );
    }
  }

  private async closed(session: Session | undefined): Promise<void> {
    if (!session) return;
    for (const s of this.logStreams.values())
      if (s.sessionId === session.sessionId) s.end("the agent disconnected");
    for (const call of this.adminCalls.values())
      if (call.sessionId === session.sessionId) call.settle(false, "the agent disconnected");
    if (this.sessions.get(session.serverId) === session) this.sessions.delete(session.serverId);
    const released = await this.o.servers
      .release(session.serverId, this.o.hubId, session.sessionId)
      .catch((err) => {
        this.o.logger.warn(
          { err, server: session.serverId },
          "release failed; the reaper will clear it",
        );
        return false;
      });
    this.o.logger.info(
      { server: session.serverId, session: session.sessionId, released },
      "agent disconnected",
    );
  }

  /**
   * One replica at a time (a session advisory lock; the others skip the tick): dispatches past
   * their deadline back to pending (or failed at the attempt limit), stale affinity cleared.
   */
  async sweep(): Promise<void> {
    if (this.closing) return;
    // Every replica, lock or not: pending dispatches of the agents it holds are delivered even if
    // a wake-up was lost or a drain failed; an agent silent for three heartbeats is dropped (its
    // host vanished without closing the connection), so its affinity is released.
    const silentMs = 3 * (this.o.heartbeatIntervalMs ?? 15_000) + 5000;
    for (const [serverId, session] of this.sessions) {
      if (Date.now() - session.lastSeen > silentMs) {
        this.o.logger.warn({ server: serverId }, "agent silent; dropping its connection");
        session.socket.terminate();
        continue;
      }
      this.wake(serverId);
    }
    try {
      const outcome = await this.o.db.tryExclusiveLock(LOCK_KEYS.dispatchReaper, async () => {
        const { requeued, failed } = await this.o.dispatches.reap(this.o.maxAttempts ?? 5);
        const offline = await this.o.servers.reapStale();
        const pendingTooLong = await this.o.dispatches.countPendingOlderThan(60);
        await this.o.sweepMore?.();
        return { requeued: requeued.length, failed, offline: offline.length, pendingTooLong };
      });
      if (outcome.ran && outcome.value) {
        const v = outcome.value;
        if (v.requeued || v.failed || v.offline || v.pendingTooLong) this.o.logger.info(v, "sweep");
        this.o.onSweep?.(v);
      }
    } catch (err) {
      this.o.logger.warn({ err }, "sweep failed; the next tick retries");
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.sweeper);
    await this.unlisten?.();
    const closing = [...this.sessions.values()].map(
      (s) =>
        new Promise<void>((resolve) => {
          s.socket.once("close", () => resolve());
          s.socket.close(CLOSE.shutdown, "hub shutting down");
          setTimeout(resolve, 2000).unref();
        }),
    );
    await Promise.all(closing);
    await Promise.all([...this.drains.values()].map((d) => d.running));
  }
}
