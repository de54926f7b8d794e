// The hub process: store, migrations, identity, the Connect API on HTTP/1.1 and gRPC on h2c, and probes.
import { randomBytes, randomUUID } from "node:crypto";
import {
  createServer as createH2Server,
  type Http2Server,
  type ServerHttp2Session,
} from "node:http2";
import type { AddressInfo } from "node:net";
import { type ConnectRouter, createContextValues } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import Fastify, { type FastifyInstance } from "fastify";
import {
  checkId,
  contextFromHttpHeaders,
  createLogger,
  createMetrics,
  ERROR_CODE_HEADER,
  FlotillaError,
  FrameError,
  type IncomingContext,
  type Logger,
  type Metrics,
} from "../shared/index.js";
import {
  type Db,
  LOCK_KEYS,
  migrate,
  openPglite,
  openPostgres,
  type PoolSettings,
} from "../store/index.js";
import {
  type ConnectOnFastifyOptions,
  configRoutes,
  connectOnFastify,
  contextResponseHeaders,
  createAuthInterceptor,
  databasesRoutes,
  identityRoutes,
  kIncoming,
  kRemoteAddr,
  projectRoutes,
  serversRoutes,
  servicesRoutes,
} from "./api/index.js";
import { recordAudit } from "./audit/index.js";
import { ConfigService, Keyring, type MasterKey } from "./config/index.js";
import { ControlChannel } from "./control/index.js";
import { DatabasesService } from "./databases/index.js";
import {
  DEFAULT_LOGIN_LIMITS,
  IdentityService,
  type LoginLimits,
  SessionCodec,
} from "./identity/index.js";
import { type EventBus, memoryBus, OutboxRelay, postgresBus } from "./outbox/index.js";
import { ProjectsService } from "./projects/index.js";
import { DispatchStore, ServersService } from "./servers/index.js";
import {
  CREDENTIAL_KEYS,
  type ObservedStatus,
  ServicesService,
  templateOf,
} from "./services/index.js";

export type StoreOptions =
  | { kind: "postgres"; url: string; pool?: Partial<PoolSettings> }
  | { kind: "embedded"; dataDir: string };

export interface HubOptions {
  store: StoreOptions;
  /** Default 127.0.0.1. */
  host?: string;
  /** The HTTP/1.1 port: Connect (JSON and binary), probes, metrics. 0 picks a free port. */
  port: number;
  /** The cleartext HTTP/2 port for gRPC callers. 0 picks a free port; null turns it off. */
  grpcPort?: number | null;
  /** At least 32 characters; every replica of one installation shares it. */
  sessionSecret: string;
  sessionTtlSeconds?: number;
  /** Create the first owner from these instead of printing a setup token. */
  admin?: { email: string; password: string };
  /** Largest request body accepted, in bytes. Default 1 MiB. */
  maxBodyBytes?: number;
  /** Mark session cookies Secure. Default: on when tls is set. */
  secureCookies?: boolean;
  /**
   * Serve HTTPS. With TLS, ALPN lets one port speak HTTP/1.1 and HTTP/2, so Connect and gRPC
   * share --port and no separate gRPC listener is opened.
   */
  tls?: { cert: string | Buffer; key: string | Buffer };
  loginLimits?: LoginLimits;
  /** Trust a resolved credential this long without a database lookup. Default 0 (off). */
  authCacheMs?: number;
  /**
   * Seals config secrets (AES-256-GCM). Required on PostgreSQL (FLOTILLA_MASTER_KEY); `flotilla up`
   * keeps a generated one in a 0600 file beside its data directory. Previous keys still open what
   * they sealed until `flotilla config rotate-key` re-seals it.
   */
  masterKey?: MasterKey;
  previousMasterKeys?: MasterKey[];
  logger?: Logger;
  /** The URL servers use to reach this hub (printed in join commands). Default: the bound URL. */
  publicUrl?: string;
  /** How often the dispatch and affinity sweeps run. Default 15 s. */
  sweepIntervalMs?: number;
  /** How often agents heartbeat. Default 15 s. */
  agentHeartbeatIntervalMs?: number;
  /** How often due backup schedules run and pending backups settle. Default 15 s. */
  databaseSweepIntervalMs?: number;
  /** How long shutdown waits for in-flight requests before closing the store. Default 10 s. */
  shutdownGraceMs?: number;
}

export interface Hub {
  instanceId: string;
  url: string;
  grpcUrl: string | null;
  db: Db;
  identity: IdentityService;
  projects: ProjectsService;
  services: ServicesService;
  config: ConfigService;
  databases: DatabasesService;
  servers: ServersService;
  dispatches: DispatchStore;
  control: ControlChannel;
  events: EventBus;
  relay: OutboxRelay;
  metrics: Metrics;
  /** Set when no owner exists yet: the one-time token for Bootstrap. */
  setupToken: string | undefined;
  /** Set when the first owner was created from the admin options at this start. */
  createdOwner: string | undefined;
  close(): Promise<void>;
}

export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;

const REPORTABLE_STATUSES = new Set<string>([
  "pending",
  "deploying",
  "running",
  "stopped",
  "failed",
]);

declare module "fastify" {
  interface FastifyRequest {
    flotillaContext: IncomingContext;
  }
}

export async function openStore(store: StoreOptions): Promise<Db> {
  return store.kind === "postgres"
    ? openPostgres(store.url, store.pool)
    : openPglite(store.dataDir);
}

/**
 * Without a configured master key, only a throwaway in-memory store may run (tests): its secrets
 * die with the process anyway. Anything persistent must be given a key.
 */
function ephemeralKeyFor(store: StoreOptions): MasterKey {
  if (store.kind === "embedded" && store.dataDir.startsWith("memory://")) {
    return { id: "ephemeral", key: randomBytes(32) };
  }
  throw new FlotillaError(
    "config.invalid",
    "set FLOTILLA_MASTER_KEY to 32 random bytes in base64 (`openssl rand -base64 32`), the same on every replica; it seals config secrets",
  );
}

/**
 * Re-seals every secret not sealed with `masterKey` (opening it with one of `previous`), in
 * batches; safe to rerun after an interruption. The hub need not run; on the embedded store it
 * must not (the data directory is locked).
 */
export async function rotateMasterKey(
  store: StoreOptions,
  masterKey: MasterKey,
  previous: MasterKey[],
): Promise<number> {
  const db = await openStore(store);
  try {
    await migrate(db);
    const unused = () => {
      throw new Error("key rotation resolves no scopes");
    };
    const config = new ConfigService(db, new Keyring(masterKey, previous), {
      environment: unused,
      service: unused,
    });
    return await config.rotateKey();
  } finally {
    await db.close();
  }
}

export async function startHub(options: HubOptions): Promise<Hub> {
  const instanceId = randomUUID();
  const logger = (options.logger ?? createLogger({ name: "hub" })).child({ instance: instanceId });
  const metrics = createMetrics();
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const host = options.host ?? "127.0.0.1";

  const keyring = new Keyring(
    options.masterKey ?? ephemeralKeyFor(options.store),
    options.previousMasterKeys,
  );
  const db = await openStore(options.store);
  let events: EventBus | undefined;
  let relay: OutboxRelay | undefined;
  const shutdown = new AbortController();
  let app: FastifyInstance | undefined;
  let h2: Http2Server | undefined;
  // HTTP/2 sessions outlive requests; shutdown must GOAWAY them, then destroy stragglers.
  const h2Sessions = new Set<ServerHttp2Session>();
  const trackSessions = (server: Http2Server) =>
    server.on("session", (session: ServerHttp2Session) => {
      h2Sessions.add(session);
      session.once("close", () => h2Sessions.delete(session));
    });
  try {
    const report = await migrate(db);
    logger.info(
      { engine: db.engine, applied: report.applied, alreadyApplied: report.alreadyApplied },
      "store ready",
    );

    const identity = new IdentityService(
      db,
      new SessionCodec(options.sessionSecret, options.sessionTtlSeconds),
      recordAudit,
      options.loginLimits ?? DEFAULT_LOGIN_LIMITS,
      options.authCacheMs,
    );
    const setup = await identity.prepareSetup(options.admin);

    // Composition root: each module consumes the others only through the ports it declares.
    const projects = new ProjectsService(db);
    const config: ConfigService = new ConfigService(db, keyring, {
      environment: (c, id, q) => projects.getEnvironment(c, id, q, "target.id"),
      service: async (c, id, q) => {
        const s = await services.getService(c, id, q, "target.id");
        return { id: s.id, environmentId: s.environmentId };
      },
    });
    const servers = new ServersService(db, keyring);
    const dispatches = new DispatchStore(db);
    const services: ServicesService = new ServicesService(
      db,
      {
        environment: (c, id, q) => projects.getEnvironment(c, id, q),
        projectId: async (c, ref, q) => (await projects.getProject(c, ref, q)).id,
      },
      {
        version: (q, org, env, svc) => config.version(q, org, env, svc),
        removeServiceConfig: (tx, org, svc) => config.removeScope(tx, org, "service", svc),
        writeServiceConfig: (tx, org, svc, entries) => config.writeWithinTx(tx, org, svc, entries),
      },
      {
        check: async (c, id, q) => (await servers.get(c, id, q, "server_id")).id,
        defaultServer: (c, q) => servers.onlyServer(c, q),
        drivers: async (c, id, q) => (await servers.get(c, id, q, "server_id")).drivers,
      },
      {
        intend: async (tx, d) => {
          const id = (await dispatches.insert(tx, d)).id;
          metrics.dispatches.inc({ op: d.op, event: "written" });
          return id;
        },
      },
    );
    const databases = new DatabasesService(
      db,
      {
        get: async (c, id, q) => {
          const s = await services.getService(c, id, q, "service_id");
          return {
            id: s.id,
            slug: s.slug,
            environmentId: s.environmentId,
            kind: s.kind,
            templateId: s.templateId,
            serverId: s.serverId,
            driver: s.spec.driver,
            port: s.templateId ? templateOf(s.templateId).port : 0,
            desiredDeploymentId: s.desiredDeploymentId,
            observed: { status: s.observed.status, endpoint: s.observed.endpoint },
          };
        },
      },
      {
        names: async (c, serviceId) => {
          const { entries } = await config.list(c, { scope: "service", id: serviceId });
          const value = (key: string) => entries.find((e) => e.key === key)?.value ?? "";
          return { user: value(CREDENTIAL_KEYS.user), database: value(CREDENTIAL_KEYS.database) };
        },
        revealPassword: (c, serviceId) =>
          config.reveal(c, { scope: "service", id: serviceId }, CREDENTIAL_KEYS.password),
      },
      {
        intend: async (tx, d) => {
          const id = (await dispatches.insert(tx, { ...d, op: "job" })).id;
          metrics.dispatches.inc({ op: "job", event: "written" });
          return id;
        },
        state: async (_q, id) => {
          const d = await dispatches.get(id).catch(() => undefined);
          return d ? { state: d.state, result: d.result, error: d.error } : null;
        },
      },
    );
    projects.setDependents({
      running: (q, org, scope) => services.runningIn(q, org, scope),
      removeEnvironment: async (tx, org, environmentId) => {
        await services.removeIn(tx, org, { environmentId });
        await config.removeScope(tx, org, "environment", environmentId);
      },
    });
    const control = new ControlChannel({
      db,
      servers,
      dispatches,
      hubId: instanceId,
      logger,
      ...(options.sweepIntervalMs ? { sweepIntervalMs: options.sweepIntervalMs } : {}),
      onSweep: (r) => {
        if (r.requeued) metrics.dispatchesReaped.inc({ outcome: "requeued" }, r.requeued);
        if (r.failed) metrics.dispatchesReaped.inc({ outcome: "failed" }, r.failed);
        metrics.dispatchesPendingTooLong.set(r.pendingTooLong);
      },
      observe: {
        claimed: (op) => metrics.dispatches.inc({ op, event: "claimed" }),
        finished: (op, ok, seconds) => {
          metrics.dispatches.inc({ op, event: ok ? "done" : "failed" });
          metrics.dispatchLatency.observe({ op, outcome: ok ? "done" : "failed" }, seconds);
        },
        drained: (seconds) => metrics.drainDuration.observe(seconds),
      },
      resolveArgs: async (d) => {
        // Deployments and jobs run with the service's config, decrypted now, sent only here.
        if (!["deploy", "start", "restart", "job"].includes(d.op) || !d.args.service) return d.args;
        const service = d.args.service as { id: string; environment_id: string; slug: string };
        const env = await config.resolveForRuntime(
          d.organizationId,
          service.environment_id,
          service.id,
        );
        return { ...d.args, env };
      },
      ...(options.agentHeartbeatIntervalMs
        ? { heartbeatIntervalMs: options.agentHeartbeatIntervalMs }
        : {}),
      status: {
        // The one path that writes observed state: what agents report.
        observe: async (organizationId, o) => {
          if (!REPORTABLE_STATUSES.has(o.status))
            throw new FrameError(
              "frame.malformed",
              `status ${o.status.slice(0, 40)} is not one of ${[...REPORTABLE_STATUSES].join(", ")}`,
            );
          await services.recordObservation(organizationId, {
            ...o,
            status: o.status as Exclude<ObservedStatus, "unknown">,
          });
        },
      },
    });
    // Backup schedules and pending backups: one replica at a time (the others skip the tick).
    const databaseSweep = setInterval(
      () => {
        db.tryExclusiveLock(LOCK_KEYS.databaseBackups, () => databases.sweep())
          .then((r) => {
            if (r.value && (r.value.started || r.value.settled || r.value.pruned))
              logger.info(r.value, "database backup sweep");
          })
          .catch((err) =>
            logger.warn({ err }, "database backup sweep failed; the next tick retries"),
          );
      },
      options.databaseSweepIntervalMs ?? options.sweepIntervalMs ?? 15_000,
    );
    databaseSweep.unref();
    shutdown.signal.addEventListener("abort", () => clearInterval(databaseSweep));
    const bus = db.engine === "postgres" ? await postgresBus(db) : memoryBus();
    events = bus;
    relay = new OutboxRelay(db, bus, logger);
    await relay.start();

    const interceptors = [createAuthInterceptor({ identity, logger, metrics })];
    const routes = (router: ConnectRouter) => {
      identityRoutes(router, {
        db,
        identity,
        secureCookies: options.secureCookies ?? Boolean(options.tls),
      });
      projectRoutes(router, projects);
      servicesRoutes(router, {
        services,
        events: bus,
        db,
        shutdown: shutdown.signal,
        jobs: {
          get: async (c, id) => {
            const d = await dispatches.get(checkId("job_id", id)).catch(() => undefined);
            if (!d || d.organizationId !== c.organizationId || d.op !== "job")
              throw new FlotillaError("resource.not_found", `job ${id} not found`);
            return d;
          },
        },
        logs: async function* (c, serviceId, lines, follow, signal) {
          const service = await services.getService(c, serviceId);
          if (!service.serverId)
            throw new FlotillaError(
              "resource.conflict",
              `${service.slug} is not placed on a server, so it has no logs`,
              { field: "service_id" },
            );
          yield* control.streamLogs(service.serverId, service.id, lines, follow, signal);
        },
      });
      configRoutes(router, config);
      databasesRoutes(router, { services, databases });
      serversRoutes(router, {
        servers,
        dispatches,
        hubUrl: () => publicUrl,
        agentAdmin: (serverId, action) => control.admin(serverId, action),
        audit: (c, action, serverId) =>
          db.tx((tx) =>
            recordAudit(tx, {
              organizationId: c.organizationId,
              actor: c.actor,
              action,
              target: { type: "server", id: serverId },
            }),
          ),
      });
    };

    let draining = false;
    let countedReconnects = 0;
    // Known once the listener is bound; the join command printed for new servers uses it.
    let publicUrl = options.publicUrl ?? "";
    const base = { logger: false, bodyLimit: maxBodyBytes, trustProxy: false } as const;
    app = options.tls
      ? (Fastify({
          ...base,
          http2: true,
          https: { allowHTTP1: true, cert: options.tls.cert, key: options.tls.key },
        }) as unknown as FastifyInstance)
      : Fastify(base);
    app.decorateRequest("flotillaContext", undefined as unknown as IncomingContext);
    app.addHook("onRequest", async (request, reply) => {
      const ctx = contextFromHttpHeaders(request.headers);
      request.flotillaContext = ctx;
      reply.headers(contextResponseHeaders(ctx));
      // Refuse oversized bodies up front with the catalogue's code; Connect's own readMaxBytes
      // still guards chunked bodies that announce no length.
      const length = Number(request.headers["content-length"] ?? 0);
      if (length > maxBodyBytes) {
        reply
          .code(400)
          .header(ERROR_CODE_HEADER, "request.too_large")
          .header("connection", "close")
          .send({
            code: "invalid_argument",
            message: `request body is ${length} bytes; the limit is ${maxBodyBytes}`,
          });
      }
    });
    await control.register(app);
    app.get("/health", async () => ({ status: "ok", instance: instanceId }));
    app.get("/ready", async (_request, reply) => {
      if (draining) return reply.code(503).send({ status: "draining" });
      try {
        await db.ping();
        return { status: "ready", engine: db.engine };
      } catch (err) {
        return reply.code(503).send({ status: "unavailable", store: (err as Error).message });
      }
    });
    app.get("/metrics", async (_request, reply) => {
      if (db.engine === "postgres" && "pool" in db) {
        const pool = (
          db as { pool: { totalCount: number; idleCount: number; waitingCount: number } }
        ).pool;
        metrics.dbPoolConnections.set({ state: "total" }, pool.totalCount);
        metrics.dbPoolConnections.set({ state: "idle" }, pool.idleCount);
        metrics.dbPoolConnections.set({ state: "waiting" }, pool.waitingCount);
        const seen = (db as unknown as { listenerReconnects: number }).listenerReconnects;
        if (seen > countedReconnects) metrics.dbListenerReconnects.inc(seen - countedReconnects);
        countedReconnects = seen;
      }
      return reply.type(metrics.registry.contentType).send(await metrics.registry.metrics());
    });
    // In its own encapsulated scope: Connect's body parsers must not replace the JSON parser of
    // the hub's other routes (the agents' join endpoint).
    const connectOptions = {
      routes,
      interceptors,
      readMaxBytes: maxBodyBytes,
      contextValues: (request) =>
        createContextValues()
          .set(kIncoming, request.flotillaContext)
          .set(kRemoteAddr, request.ip ?? "unknown"),
      onError: (err: unknown, method: string) =>
        logger.error({ err, method }, "connect handler failed"),
    } satisfies ConnectOnFastifyOptions;
    await app.register(async (scope) => connectOnFastify(scope, connectOptions));
    if (options.tls) trackSessions(app.server as unknown as Http2Server);
    await app.listen({ host, port: options.port });
    const port = (app.server.address() as AddressInfo).port;
    const hostPart = host.includes(":") ? `[${host}]` : host;
    const url = `${options.tls ? "https" : "http"}://${hostPart}:${port}`;
    if (!publicUrl) publicUrl = url;

    let grpcUrl: string | null = options.tls ? url : null;
    if (!options.tls && options.grpcPort !== null) {
      // Node cannot serve HTTP/1.1 and cleartext HTTP/2 on one port, so gRPC gets its own.
      h2 = createH2Server(
        connectNodeAdapter({
          routes,
          interceptors,
          readMaxBytes: maxBodyBytes,
          contextValues: (req) =>
            createContextValues()
              .set(kIncoming, contextFromHttpHeaders(req.headers))
              .set(kRemoteAddr, req.socket?.remoteAddress ?? "unknown"),
        }),
      );
      const server = h2;
      trackSessions(server);
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(options.grpcPort ?? 8081, host, () => resolve());
      });
      grpcUrl = `http://${hostPart}:${(server.address() as AddressInfo).port}`;
    }
    logger.info({ url, grpcUrl }, "hub listening");

    const fastify = app;
    const h2server = h2;
    const outboxRelay = relay;
    let closing: Promise<void> | undefined;
    return {
      instanceId,
      url,
      grpcUrl,
      db,
      identity,
      projects,
      services,
      config,
      databases,
      servers,
      dispatches,
      control,
      events: bus,
      relay: outboxRelay,
      metrics,
      setupToken: setup.setupToken,
      createdOwner: setup.createdOwner,
      close() {
        closing ??= (async () => {
          draining = true;
          // Open watch streams end now; everything else gets the grace period.
          shutdown.abort();
          // Agents are told to go elsewhere; their affinity is released by the close handlers.
          await control.close();
          const grace = options.shutdownGraceMs ?? 10_000;
          const timer = setTimeout(() => {
            const http1 = fastify.server as { closeAllConnections?: () => void };
            http1.closeAllConnections?.();
            for (const session of h2Sessions) session.destroy();
          }, grace);
          timer.unref();
          // Stop accepting, let in-flight requests finish, then close the store. GOAWAY tells
          // gRPC clients to finish their streams and go elsewhere.
          for (const session of h2Sessions) session.close();
          await Promise.all([
            fastify.close(),
            h2server ? new Promise<void>((resolve) => h2server.close(() => resolve())) : undefined,
          ]);
          clearTimeout(timer);
          await outboxRelay.stop();
          await bus.close();
          await db.close();
          logger.info("hub stopped");
        })();
        return closing;
      },
    };
  } catch (err) {
    await relay?.stop().catch(() => {});
    await events?.close().catch(() => {});
    await app?.close().catch(() => {});
    h2?.close();
    await db.close().catch(() => {});
    throw err;
  }
}
