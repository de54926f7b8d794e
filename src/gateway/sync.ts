// The gateway's sync with its hub: reconcile at startup, on every (re)connect of the event stream
// and when the config hash differs; apply deploy/undeploy events as they come, acknowledged after
// the local write; report observed status per deployment. Retries with backoff, forever.
import { Agent as HttpAgent, request as httpRequest } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import type WebSocket from "ws";
import type { DeploymentContent } from "../shared/index.js";
import {
  DEFAULT_CONTENT_BATCH,
  type DeploymentsResponse,
  type ExpectedRow,
  FLOTILLA_VERSION,
  GATEWAY_SYNC,
  GATEWAY_VERSION_HEADER,
  type HubToGatewayFrame,
  readBody,
  readTar,
  type StatusReport,
  UnsafeArchiveError,
} from "../shared/index.js";
import { ws } from "./lazy.js";
import type { ConfigStore } from "./routes.js";
import type { LocalStore, StoredRow } from "./store.js";

export interface SyncLogger {
  info(o: object, msg: string): void;
  warn(o: object, msg: string): void;
  error(o: object, msg: string): void;
}

export interface HubSyncOptions {
  /** One hub URL, or several comma-separated (replicas): a lost event stream moves to the next. */
  hubUrl: string;
  token: string;
  store: LocalStore;
  config: ConfigStore;
  logger: SyncLogger;
  /** Deployments per content request. Default 50. */
  batchSize?: number;
  /** How often the config hash is compared with the hub's. Default 30 s. */
  hashCheckIntervalMs?: number;
  /** Backoff bounds for failed syncs and reconnects. Defaults 200 ms .. 15 s. */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** Per hub request. Default 30 s. */
  requestTimeoutMs?: number;
}

export interface ReconcileResult {
  deleted: number;
  fetched: number;
  stateOnly: number;
  converged: boolean;
}

/**
 * No hub answer comes near this (a list of 100,000 deployments is ~20 MB, a content batch a few
 * MB): a bound, not a setting.
 */
const MAX_HUB_ANSWER_BYTES = 256 * 1024 * 1024;

export class HubError extends Error {
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
    this.name = "HubError";
  }
}

export class HubSync {
  private stopped = false;
  private socket: WebSocket | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private hashTimer: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private reconnectAttempts = 0;
  private readonly reports = new Map<string, StatusReport>();
  private reportTimer: NodeJS.Timeout | undefined;
  private lastHubHash: string | null = null;
  /** Facts for /ready and /metrics. */
  readonly stats = {
    connected: false,
    reconciles: 0,
    reconcileFailures: 0,
    lastReconcileAt: 0,
    lastReconcileMs: 0,
    eventsApplied: 0,
    eventsIgnored: 0,
    archivesRejected: 0,
    converged: false,
    /** From an event's arrival to the route table that includes it being swapped in. */
    lastEventToSwapMs: 0,
  };

  private readonly hubs: string[];
  private hubIndex = 0;
  private readonly sleeping = new Set<() => void>();
  private readonly agents = {
    http: new HttpAgent({ keepAlive: true }),
    https: new HttpsAgent({ keepAlive: true }),
  };

  constructor(private readonly o: HubSyncOptions) {
    this.hubs = o.hubUrl
      .split(",")
      .map((u) => u.trim().replace(/\/+$/, ""))
      .filter(Boolean);
  }

  /** The hub replica this gateway talks to now; requests and the event stream follow it. */
  private get base(): string {
    return this.hubs[this.hubIndex % this.hubs.length]!;
  }

  /**
   * One hub request on node:http, connections kept alive (a sync keeps four in flight). Not
   * undici: loading it costs ~20 MB of RSS, which a gateway whose traffic never leaves the fast
   * path would otherwise carry for these few calls.
   */
  private call(
    method: "GET" | "POST",
    path: string,
    body?: unknown,
    timeoutMs = this.o.requestTimeoutMs ?? 30_000,
  ): Promise<Buffer> {
    const url = new URL(`${this.base}${path}`);
    const secure = url.protocol === "https:";
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = (secure ? httpsRequest : httpRequest)(
        url,
        {
          method,
          agent: secure ? this.agents.https : this.agents.http,
          headers: {
            authorization: `Bearer ${this.o.token}`,
            ...(payload
              ? { "content-type": "application/json", "content-length": payload.length }
              : {}),
          },
          // Idle time on the socket, before the answer's head and between its chunks.
          timeout: timeoutMs,
        },
        (res) => {
          readBody(res, MAX_HUB_ANSWER_BYTES).then((buf) => {
            if (buf === null)
              reject(
                new HubError(`${method} ${path}: the answer passed ${MAX_HUB_ANSWER_BYTES} bytes`),
              );
            else if (res.statusCode === 200) resolve(buf);
            else
              reject(
                new HubError(
                  `${method} ${path} answered ${res.statusCode}: ${buf.toString("utf8").slice(0, 200)}`,
                  res.statusCode,
                ),
              );
          }, reject);
        },
      );
      req.on("timeout", () =>
        req.destroy(new HubError(`${method} ${path}: no answer within ${timeoutMs} ms`)),
      );
      req.on("error", reject);
      req.end(payload);
    });
  }

  private async json<T>(method: "GET" | "POST", path: string, body?: unknown): Promise<T> {
    return JSON.parse((await this.call(method, path, body)).toString("utf8")) as T;
  }

  /**
   * Fetches the content of these deployments, `batchSize` per request, four requests in flight,
   * and hands each answer to `onBatch` as it arrives (deployment id to its JSON text, kept as the
   * hub sent it). Rejects the whole archive on an unsafe entry or on content naming another
   * deployment than its directory.
   */
  async fetchContent(
    ids: string[],
    onBatch: (contents: Map<string, string>) => void,
  ): Promise<void> {
    const wanted = new Set(ids);
    const batch = this.o.batchSize ?? DEFAULT_CONTENT_BATCH;
    const fetchOne = async (slice: string[]) => {
      const archive = await this.call("POST", GATEWAY_SYNC.content, { deploymentIds: slice });
      let entries: ReturnType<typeof readTar>;
      try {
        entries = readTar(archive);
      } catch (err) {
        if (err instanceof UnsafeArchiveError) this.stats.archivesRejected++;
        throw err;
      }
      const contents = new Map<string, string>();
      for (const e of entries) {
        const [dir, file] = e.path.split("/");
        if (file !== "api.json" || !dir || !wanted.has(dir)) continue;
        const text = e.body.toString("utf8");
        if ((JSON.parse(text) as DeploymentContent).deploymentId !== dir)
          throw new UnsafeArchiveError(e.path);
        contents.set(dir, text);
      }
      onBatch(contents);
    };
    // Four requests in flight: the hub answers each in a few milliseconds, the round trips
    // overlap. Each answer is written and dropped before the next is asked for, so what a sync
    // holds at once is four batches, whatever the number of deployments. The first failure stops
    // the others; this returns (or throws) once none is running, so no answer is written after
    // the caller has moved on.
    let next = 0;
    let failure: { err: unknown } | undefined;
    const worker = async () => {
      while (!failure && next * batch < ids.length) {
        const from = batch * next++;
        try {
          await fetchOne(ids.slice(from, from + batch));
        } catch (err) {
          failure ??= { err };
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(4, Math.ceil(ids.length / batch)) }, worker));
    if (failure) throw failure.err;
  }

  /** One deployment's content as JSON text, or null if the hub no longer has it. */
  private async fetchOneContent(deploymentId: string): Promise<string | null> {
    let text: string | null = null;
    await this.fetchContent([deploymentId], (contents) => {
      text = contents.get(deploymentId) ?? null;
    });
    return text;
  }

  private report(r: StatusReport): void {
    this.reports.set(r.apiId, r);
    if (!this.reportTimer) {
      this.reportTimer = setTimeout(() => void this.flushReports(), 100);
      this.reportTimer.unref();
    }
  }

  /** The config store's reporter: observed status goes to the hub in batches. */
  readonly reporter = (r: StatusReport) => this.report(r);

  /** Sends up to 500 waiting reports; `last` is stop()'s final attempt, with its own timeout. */
  private async flushReports(last?: { lastMs: number }): Promise<void> {
    this.reportTimer = undefined;
    if ((this.stopped && !last) || this.reports.size === 0) return;
    const batch = [...this.reports.values()].slice(0, 500);
    try {
      await this.call("POST", GATEWAY_SYNC.status, { reports: batch }, last?.lastMs);
      for (const r of batch) if (this.reports.get(r.apiId) === r) this.reports.delete(r.apiId);
    } catch (err) {
      this.o.logger.warn({ err: (err as Error).message }, "status report failed; will retry");
    }
    // A backlog (a full sync reports 10,000) goes 500 a second: the hub writes each report, and
    // a burst of 10,000 delayed its other work (a deploy's event by ~400 ms in the benchmark).
    if (this.reports.size > 0 && !this.reportTimer) {
      this.reportTimer = setTimeout(() => void this.flushReports(), 1000);
      this.reportTimer.unref();
    }
  }

  /**
   * One reconcile pass: deletes first (only for rows the hub confirms are gone), then fetches,
   * then state-only updates. Every write goes through the store's guard.
   */
  async reconcileOnce(): Promise<ReconcileResult> {
    const started = performance.now();
    const hub = await this.json<DeploymentsResponse>("GET", GATEWAY_SYNC.deployments);
    const expected = new Map(hub.deployments.map((d) => [d.apiId, d]));
    const local = this.o.store.index();
    const localByApi = new Map(local.map((r) => [r.apiId, r]));
    const result: ReconcileResult = { deleted: 0, fetched: 0, stateOnly: 0, converged: false };

    // 1. Deletes: rows the hub no longer lists, confirmed absent by the existence check. If the
    // check fails, this pass throws and deletes nothing.
    const gone = local.filter((r) => !expected.has(r.apiId));
    const removed: string[] = [];
    for (let i = 0; i < gone.length; i += 500) {
      const slice = gone.slice(i, i + 500);
      const { existing } = await this.json<{ existing: string[] }>("POST", GATEWAY_SYNC.exists, {
        deploymentIds: slice.map((r) => r.deploymentId),
      });
      const still = new Set(existing);
      for (const r of slice) {
        if (still.has(r.deploymentId)) continue;
        if (this.o.store.delete(r.apiId, r.deploymentId)) {
          removed.push(r.apiId);
          result.deleted++;
        }
      }
    }
    if (removed.length) this.o.config.apply([], removed);

    // 2. Fetches: deployments whose content this gateway lacks.
    const newer = (d: ExpectedRow, l: ExpectedRow | undefined) =>
      !l ||
      l.deployedAt < d.deployedAt ||
      (l.deployedAt === d.deployedAt && l.deploymentId <= d.deploymentId);
    const toFetch = hub.deployments.filter((d) => {
      const l = localByApi.get(d.apiId);
      return (
        d.state === "DEPLOYED" &&
        newer(d, l) &&
        (!l || l.deploymentId !== d.deploymentId || l.missingContent === true)
      );
    });
    // Each answer is written as it arrives; the routes it changed are compiled and swapped in
    // every 1,000 rows (a table rebuild per 50-row answer would build 200 tables for a sync of
    // 10,000) and once at the end.
    const byDeployment = new Map(toFetch.map((d) => [d.deploymentId, d]));
    let unapplied: string[] = [];
    // Events apply between two answers (an undeploy of a row written here, say): what reaches
    // the routes is what the store holds when they are applied, never the row as written.
    const applyWritten = () => {
      const rows: StoredRow[] = [];
      const gone: string[] = [];
      for (const apiId of unapplied) {
        const row = this.o.store.get(apiId);
        if (row) rows.push(row);
        else gone.push(apiId);
      }
      unapplied = [];
      this.o.config.apply(rows, gone);
    };
    const write = (contents: Map<string, string>) => {
      const rows: StoredRow[] = [];
      for (const [deploymentId, content] of contents) {
        // Undeployed between the list and the fetch: absent here, the next pass sees the new state.
        rows.push({ ...byDeployment.get(deploymentId)!, content });
      }
      const changed = this.o.store.upsertMany(rows);
      result.fetched += changed.length;
      for (const r of changed) unapplied.push(r.apiId);
      if (unapplied.length >= 1000) applyWritten();
    };
    try {
      await this.fetchContent([...byDeployment.keys()], write);
    } finally {
      // Rows written before a failed request are served too: the store and the routes agree.
      if (unapplied.length) applyWritten();
    }

    // 3. State-only updates: same deployment, new state or timestamp (undeploys), or rows this
    // gateway never had content for and does not need (UNDEPLOYED).
    const fetched = new Set(toFetch.map((d) => d.apiId));
    const stateRows: StoredRow[] = hub.deployments
      .filter((d) => {
        if (fetched.has(d.apiId)) return false;
        const l = localByApi.get(d.apiId);
        if (!l) return d.state === "UNDEPLOYED";
        return (l.state !== d.state || l.deployedAt !== d.deployedAt) && newer(d, l);
      })
      .map((d) => ({ ...d, content: null }));
    if (stateRows.length) {
      const changed = this.o.store.upsertMany(stateRows);
      result.stateOnly = changed.length;
      // A state-only change keeps the stored content; the config store needs the whole row.
      this.o.config.apply(changed.map((r) => this.o.store.get(r.apiId) ?? r));
    }

    this.lastHubHash = hub.configHash;
    result.converged = this.o.store.configHash() === hub.configHash;
    this.stats.reconciles++;
    this.stats.lastReconcileAt = Date.now();
    this.stats.lastReconcileMs = performance.now() - started;
    this.stats.converged = result.converged;
    this.o.logger.info(
      { ...result, ms: Math.round(this.stats.lastReconcileMs) },
      "reconciled with the hub",
    );
    return result;
  }

  /** Runs reconcile until it succeeds (backoff with jitter); concurrent requests coalesce. */
  requestReconcile(reason: string): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      let attempt = 0;
      do {
        this.again = false;
        for (;;) {
          if (this.stopped) return;
          try {
            const r = await this.reconcileOnce();
            // Not converged (the hub moved during the pass): one more pass, after a short pause.
            if (!r.converged) {
              this.again = true;
              await this.sleep(this.backoff(0));
            }
            break;
          } catch (err) {
            this.stats.reconcileFailures++;
            this.o.logger.warn(
              { err: (err as Error).message, reason, attempt },
              "reconcile failed; retrying",
            );
            await this.sleep(this.backoff(attempt++));
          }
        }
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private backoff(attempt: number): number {
    const min = this.o.backoffMinMs ?? 200;
    const max = this.o.backoffMaxMs ?? 15_000;
    const ceiling = Math.min(max, min * 2 ** attempt);
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  /** A backoff pause; stop() ends every one at once (a pause can be 15 s). */
  private sleep(ms: number): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.sleeping.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      timer.unref();
      this.sleeping.add(done);
    });
  }

  /** Applies one deploy/undeploy event through the guard; stale or equal-and-losing events change nothing. */
  async applyEvent(
    frame: Extract<HubToGatewayFrame, { type: "event" }>,
    received = performance.now(),
  ): Promise<void> {
    const row = frame.row;
    const local = this.o.store.get(row.apiId);
    const stale =
      local &&
      (local.deployedAt > row.deployedAt ||
        (local.deployedAt === row.deployedAt &&
          local.deploymentId >= row.deploymentId &&
          local.content !== null));
    if (stale) {
      this.stats.eventsIgnored++;
      return;
    }
    let stored: StoredRow = { ...row, content: null };
    if (
      row.state === "DEPLOYED" &&
      (!local || local.deploymentId !== row.deploymentId || local.content === null)
    ) {
      const content = await this.fetchOneContent(row.deploymentId);
      // Gone already (undeployed or redeployed since): the later event or a reconcile covers it.
      if (content === null) return;
      stored = { ...row, content };
    }
    if (this.o.store.upsert(stored)) {
      this.stats.eventsApplied++;
      this.o.config.apply([this.o.store.get(row.apiId) ?? stored]);
      await this.o.config.settled();
      this.stats.lastEventToSwapMs = performance.now() - received;
    } else this.stats.eventsIgnored++;
  }

  private connect(): void {
    if (this.stopped) return;
    const wsUrl = `${this.base.replace(/^http/, "ws")}${GATEWAY_SYNC.events}`;
    const socket = new (ws().WebSocket)(wsUrl, {
      headers: {
        authorization: `Bearer ${this.o.token}`,
        [GATEWAY_VERSION_HEADER]: FLOTILLA_VERSION,
      },
      handshakeTimeout: 10_000,
    });
    this.socket = socket;
    let chain = Promise.resolve();
    socket.on("open", () => {
      this.reconnectAttempts = 0;
      this.stats.connected = true;
      this.o.logger.info({ hub: this.base }, "event stream connected");
      // Events missed while disconnected are recovered by a full reconcile on every connect.
      void this.requestReconcile("connect");
    });
    socket.on("message", (data) => {
      let frame: HubToGatewayFrame;
      try {
        frame = JSON.parse(String(data));
      } catch {
        return;
      }
      if (frame.type !== "event") return;
      // One event at a time, in arrival order; acknowledged only after the local write.
      const received = performance.now();
      chain = chain
        .then(() =>
          this.applyEvent(frame as Extract<HubToGatewayFrame, { type: "event" }>, received),
        )
        .then(
          () => {
            if (socket.readyState === socket.OPEN)
              socket.send(
                JSON.stringify({ type: "ack", id: frame.type === "event" ? frame.id : "" }),
              );
          },
          (err) => {
            // Not acknowledged: the hub resends it, and the next reconcile covers it anyway.
            this.o.logger.warn({ err: (err as Error).message }, "event not applied");
            void this.requestReconcile("event failed");
          },
        );
    });
    const retry = () => {
      if (this.socket !== socket) return;
      this.socket = undefined;
      this.stats.connected = false;
      if (this.stopped) return;
      // No stream yet and never reconciled: sync without it; its "open" reconciles again. Not
      // while that pass runs: each failed retry (every 200 ms at first) would queue another.
      if (this.stats.reconciles === 0 && !this.running)
        void this.requestReconcile("event stream unavailable");
      // Several replicas: the next attempt goes to the next one (a dead replica is skipped).
      if (this.hubs.length > 1) this.hubIndex = (this.hubIndex + 1) % this.hubs.length;
      const delay = this.backoff(this.reconnectAttempts++);
      this.reconnectTimer = setTimeout(() => this.connect(), delay);
      this.reconnectTimer.unref();
    };
    socket.on("close", retry);
    socket.on("error", (err) => {
      // "close" follows and schedules the reconnect, backing off: a refused stream never opened.
      if (err.message.endsWith(": 401"))
        this.o.logger.error(
          { hub: this.base },
          "the hub refused this gateway's token (401): check --token; serving from the local store",
        );
    });
  }

  /**
   * Starts the stream and the periodic hash check. The first reconcile waits for the stream: one
   * started before it opened would have to run again (events in between could be missed), which
   * at 10,000 deployments costs a second list of them; a stream that fails to open reconciles
   * without it.
   */
  start(): void {
    this.connect();
    const every = this.o.hashCheckIntervalMs ?? 30_000;
    this.hashTimer = setInterval(() => void this.checkHash(), every);
    this.hashTimer.unref();
  }

  private async checkHash(): Promise<void> {
    if (this.running) return;
    try {
      const { configHash } = await this.json<{ configHash: string }>(
        "GET",
        GATEWAY_SYNC.configHash,
      );
      this.lastHubHash = configHash;
      if (configHash !== this.o.store.configHash())
        void this.requestReconcile("config hash differs");
    } catch {
      // The hub is unreachable: the next check or reconnect tries again.
    }
  }

  get hubHash(): string | null {
    return this.lastHubHash;
  }

  /** Drops the event stream (tests use this to cut it mid-stream). */
  dropStream(): void {
    this.socket?.terminate();
  }

  /**
   * Stops at once, whatever the hub is doing: pauses end, and requests in flight are cut (a hub
   * that stopped answering would otherwise hold the shutdown for the 30 s request timeout). The
   * status reports still waiting get one last request of at most 2 s.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.hashTimer);
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.reportTimer);
    this.socket?.close();
    for (const wake of [...this.sleeping]) wake();
    this.agents.http.destroy();
    this.agents.https.destroy();
    await this.running?.catch(() => {});
    await this.flushReports({ lastMs: 2000 }).catch(() => {});
    this.agents.http.destroy();
    this.agents.https.destroy();
  }
}
