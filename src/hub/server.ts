// The hub process: store, migrations, identity, the Connect API on HTTP/1.1 and gRPC on h2c, and probes.
import { randomBytes, randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
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
  notFound,
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
  apisRoutes,
  type ConnectOnFastifyOptions,
  configRoutes,
  connectOnFastify,
  contextResponseHeaders,
  createAuthInterceptor,
  type DirectUnary,
  databasesRoutes,
  dataPlanesRoutes,
  eventsRoutes,
  fleetRoutes,
  GatewaySync,
  identityRoutes,
  kIncoming,
  kRemoteAddr,
  projectRoutes,
  serversRoutes,
  servicesRoutes,
} from "./api/index.js";
import { ApisService } from "./apis/index.js";
import { projectEventIntoAudit, recordAudit } from "./audit/index.js";
import { ConfigService, Keyring, type MasterKey } from "./config/index.js";
import {
  AgentProber,
  ControlChannel,
  DispatchRouter,
  DispatchWaiter,
  dispatchWaitedFor,
  noteDispatch,
  routingInterceptor,
} from "./control/index.js";
import { DatabasesService } from "./databases/index.js";
import {
  DataPlaneController,
  type DataPlaneControllerOptions,
  DataPlanesService,
  dataPlaneMetrics,
  PrivateLinksService,
  type ProvisionerConfig,
  provisionersFrom,
} from "./dataplanes/index.js";
import {
  EventsService,
  eventMetrics,
  NATS_RELAY_OPTIONS,
  NatsBackbone,
  type NatsOptions,
  natsBus,
} from "./events/index.js";
import { FleetService } from "./fleet/index.js";
import { GatewayProber, GatewaysService, ServiceDomains, ServiceRoutes } from "./gateways/index.js";
import {
  DEFAULT_LOGIN_LIMITS,
  IdentityService,
  type LoginLimits,
  PRINCIPALS_CHANNEL,
  SessionCodec,
} from "./identity/index.js";
import { InternalHttpClient } from "./internal/index.js";
import {
  type EventBus,
  eventsByIds,
  memoryBus,
  OutboxRelay,
  postgresBus,
  type RelayOptions,
} from "./outbox/index.js";
import { ProjectsService } from "./projects/index.js";
import {
  type Dispatch,
  DispatchStore,
  dataPlaneOfServer,
  ServersService,
} from "./servers/index.js";
import {
  CREDENTIAL_KEYS,
  lockServiceRow,
  type ObservedStatus,
  publicFacts,
  publicServiceIds,
  ServicesService,
  templateOf,
} from "./services/index.js";
import { type DeliveryOptions, WebhooksService } from "./webhooks/index.js";

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
  /**
   * Trust a resolved credential this long without a database lookup. Changes to who may do what
   * reach every replica at once by NOTIFY; this bounds a lost notification. Default 5000; 0 is off.
   */
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
  /** PUBLIC services are routed at <service>-<env>-<project>.<this> on their data plane's gateways. Default "localhost". */
  gatewayBaseDomain?: string;
  /** How often every public service route is re-converged. Default 60 s. */
  routeSweepIntervalMs?: number;
  /**
   * The gateway (by name) that runs on this hub's host, the only one handed loopback endpoints;
   * `flotilla up` sets "local". Unset, loopback endpoints are routed to no gateway.
   */
  sameHostGateway?: string;
  /**
   * The NATS JetStream event backbone (PostgreSQL only): the outbox relay publishes to it and this
   * replica runs the durable consumers (audit projection, webhooks) unless `consumers` is false.
   */
  nats?: NatsOptions & {
    consumers?: boolean;
    /** Tunables of the audit and webhooks consumers (defaults: CONSUMER_DEFAULTS). */
    consumer?: { ackWaitMs?: number; maxDeliver?: number; concurrency?: number };
  };
  relay?: RelayOptions;
  webhooks?: DeliveryOptions;
  /**
   * Private-link provisioners by name (FLOTILLA_PROVISIONERS), besides the built-in `local`; the
   * same on every replica. A data plane names the one that converges it.
   */
  provisioners?: Record<string, ProvisionerConfig>;
  /** Tuning of the data-plane controller (lease, sweep, settle, backoff); defaults in controller.ts. */
  dataPlaneController?: Partial<
    Pick<
      DataPlaneControllerOptions,
      "leaseMs" | "sweepIntervalMs" | "settleMs" | "maxDelayMs" | "backoff" | "onConverge"
    >
  >;
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
  dataPlanes: DataPlanesService;
  apis: ApisService;
  gateways: GatewaysService;
  gatewaySync: GatewaySync;
  serviceRoutes: ServiceRoutes;
  privateLinks: PrivateLinksService;
  dataPlaneController: DataPlaneController;
  control: ControlChannel;
  /** route() for dispatches, and admin calls to agents this replica does not hold. */
  router: DispatchRouter;
  events: EventBus;
  relay: OutboxRelay;
  /** Quarantine and this replica's durable consumers (none without NATS). */
  eventsService: EventsService;
  nats: NatsBackbone | undefined;
  webhooks: WebhooksService;
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
    const resealed = await config.rotateKey();
    // Webhook signing secrets are sealed with the same key.
    const noAudit = async () => {};
    const webhooks = new WebhooksService(
      db,
      new Keyring(masterKey, previous),
      noAudit,
      createLogger({ level: "warn" }),
    );
    return resealed + (await webhooks.resealSecrets());
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
  let closeWaiter: (() => Promise<void>) | undefined;
  let backbone: NatsBackbone | undefined;
  let eventsService: EventsService | undefined;
  let webhooksService: WebhooksService | undefined;
  let dataPlaneController: DataPlaneController | undefined;
  const shutdown = new AbortController();
  let unlistenPrincipals: (() => Promise<void>) | undefined;
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
    // Another replica changed who may do what: forget what this one remembers. A re-opened
    // listener may have missed notifications, so it forgets too.
    const forget = () => identity.forgetPrincipals();
    unlistenPrincipals = await db.listen(PRINCIPALS_CHANNEL, forget, forget);

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
    const provisioners = provisionersFrom(options.provisioners);
    const dataPlanes = new DataPlanesService(db, () => [...provisioners.keys()]);
    const privateLinks = new PrivateLinksService(db, dataPlanes);
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
          const id = (await dispatches.insert(tx, { ...d, notifyDone: dispatchWaitedFor() })).id;
          metrics.dispatches.inc({ op: d.op, event: "written" });
          // Routed once the request's transaction has committed (see routingInterceptor).
          noteDispatch(id, d.serverId);
          return id;
        },
      },
    );
    const gateways = new GatewaysService(db, {
      get: (c, ref, q) => dataPlanes.get(c, ref, q, "data_plane"),
    });
    const apis = new ApisService(
      db,
      {
        seal: (text, aad) => keyring.seal(text, aad),
        open: (b, k, aad) => keyring.open(b, k, aad),
      },
      { get: (c, ref, q, field) => gateways.get(c, ref, q, field) },
      {
        check: async (c, id, q, field) => {
          const s = await services.getService(c, id, q, field);
          return { id: s.id, kind: s.kind };
        },
        endpoint: async (organizationId, serviceId) => {
          const reader = { organizationId, actor: { type: "token" as const, id: "gateway-sync" } };
          const s = await services.getService(reader, serviceId).catch(() => undefined);
          // A managed database is never a gateway's upstream, even if a row naming one was
          // written past the API: its endpoint is not handed to a gateway.
          if (s?.kind === "database") return null;
          return s?.observed.endpoint ?? null;
        },
      },
    );
    const serviceRoutes = new ServiceRoutes(
      db,
      {
        facts: async (q, organizationId, serviceId) => {
          const f = await publicFacts(q, organizationId, serviceId);
          if (!f) return null;
          const reader = {
            organizationId,
            actor: { type: "token" as const, id: "route-controller" },
          };
          const env = await projects.getEnvironment(reader, f.environmentId, q);
          const project = await projects.getProject(reader, env.projectId, q);
          return { ...f, environmentSlug: env.slug, projectSlug: project.slug };
        },
        publicServices: (q, organizationId) => publicServiceIds(q, organizationId),
        dataPlane: async (q, organizationId, serverId) => {
          const plane = await dataPlaneOfServer(q, organizationId, serverId);
          if (plane === undefined) return null;
          return plane ?? (await dataPlanes.defaultFor(q, organizationId)).id;
        },
      },
      options.gatewayBaseDomain ?? "localhost",
      {
        ...(options.sameHostGateway ? { sameHostGateway: options.sameHostGateway } : {}),
        logger,
      },
    );
    const serviceDomains = new ServiceDomains(
      db,
      {
        check: async (c, id, q, field) => {
          const s = await services.getService(c, id, q, field);
          return { id: s.id, kind: s.kind };
        },
        lock: async (c, id, q, field) => {
          const s = await services.getService(c, id, q, field);
          if (!(await lockServiceRow(q, c.organizationId, s.id))) throw notFound(`service ${s.id}`);
          return { id: s.id, kind: s.kind };
        },
      },
      options.gatewayBaseDomain ?? "localhost",
      (organizationId, serviceId) => serviceRoutes.reconcileService(organizationId, serviceId),
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
    const resolveArgs = async (d: Dispatch) => {
      // Deployments and jobs run with the service's config, decrypted now, sent only here.
      if (!["deploy", "start", "restart", "job"].includes(d.op) || !d.args.service) return d.args;
      const service = d.args.service as { id: string; environment_id: string; slug: string };
      const { env, secretKeys } = await config.resolveForRuntime(
        d.organizationId,
        service.environment_id,
        service.id,
      );
      return { ...d.args, env, secret_keys: secretKeys };
    };
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
      resolveArgs,
      ...(options.agentHeartbeatIntervalMs
        ? { heartbeatIntervalMs: options.agentHeartbeatIntervalMs }
        : {}),
      sweepMore: async () => {
        await dispatchRouter.sweepDirect();
      },
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
    const internalHttp = new InternalHttpClient();
    const dispatchRouter: DispatchRouter = new DispatchRouter({
      control,
      servers,
      dispatches,
      http: internalHttp,
      hubId: instanceId,
      logger,
      resolveArgs,
      onRoute: (route) => metrics.dispatchRoutes.inc({ route }),
      observe: {
        claimed: (op) => metrics.dispatches.inc({ op, event: "claimed" }),
        finished: (op, ok, seconds) => {
          metrics.dispatches.inc({ op, event: ok ? "done" : "failed" });
          metrics.dispatchLatency.observe({ op, outcome: ok ? "done" : "failed" }, seconds);
        },
      },
    });
    const routeLater = (d: { id: string; serverId: string }) =>
      void dispatchRouter
        .route(d)
        .catch((err) =>
          logger.warn({ err, dispatch: d.id }, "routing failed; the sweep delivers it"),
        );
    // Gateways' event streams are created below with the HTTP server; the prober asks them late.
    let gatewayStreams: GatewaySync | undefined;
    const fleet = new FleetService([
      new AgentProber(servers, control, dispatchRouter),
      new GatewayProber(gateways, {
        ping: async (id, deadlineMs) =>
          gatewayStreams ? gatewayStreams.ping(id, deadlineMs) : null,
      }),
    ]);
    if (options.nats) {
      if (db.engine !== "postgres")
        throw new FlotillaError(
          "config.invalid",
          "--nats-url needs the PostgreSQL store (flotilla hub)",
          {
            field: "nats_url",
          },
        );
      backbone = await NatsBackbone.open(options.nats, logger, `flotilla-hub-${instanceId}`);
    }
    const bus = backbone
      ? natsBus(backbone, logger)
      : db.engine === "postgres"
        ? await postgresBus(db)
        : memoryBus();
    events = bus;
    const waiter = new DispatchWaiter(db, dispatches, bus, routeLater);
    await waiter.start();
    closeWaiter = () => waiter.close();
    const backboneMetrics = eventMetrics(metrics.registry);
    relay = new OutboxRelay(db, bus, logger, {
      ...(backbone ? NATS_RELAY_OPTIONS : {}),
      observe: {
        published: (n) => backboneMetrics.published.inc(n),
        failed: () => backboneMetrics.relayFailures.inc(),
      },
      ...options.relay,
    });
    await relay.start();
    const eventsSvc = new EventsService(
      db,
      { eventById: async (id) => (await eventsByIds(db, [id]))[0] },
      backbone,
      {
        logger,
        instanceId,
        observe: (consumer, outcome) => backboneMetrics.consumed.inc({ consumer, outcome }),
      },
    );
    eventsService = eventsSvc;
    const webhooks = new WebhooksService(
      db,
      keyring,
      (tx, c, action, endpointId) =>
        recordAudit(tx, {
          organizationId: c.organizationId,
          actor: c.actor,
          action,
          target: { type: "webhook", id: endpointId },
        }),
      logger,
      {
        observe: (outcome) => backboneMetrics.webhookAttempts.inc({ outcome }),
        ...options.webhooks,
      },
    );
    webhooksService = webhooks;
    if (backbone && options.nats?.consumers !== false) {
      // Every replica runs the same durables: each event's effect happens on one of them.
      const tunables = options.nats?.consumer ?? {};
      await eventsSvc.addConsumer({
        ...tunables,
        name: "audit",
        handler: async (e, { tx }) => {
          await projectEventIntoAudit(tx, e);
        },
      });
      await eventsSvc.addConsumer({
        ...tunables,
        name: "webhooks",
        accepts: (type) => type.startsWith("deployment.") || type.startsWith("database."),
        handler: async (e, { tx }) => {
          await webhooks.recordDeliveries(tx, e);
        },
      });
      await webhooks.start();
    }
    const observeConverge = dataPlaneMetrics(metrics.registry);
    const alsoObserve = options.dataPlaneController?.onConverge;
    dataPlaneController = new DataPlaneController({
      db,
      instanceId,
      provisioners,
      logger,
      // The operator's sweep interval applies here too, capped at the controller's 5 s default.
      ...(options.sweepIntervalMs
        ? { sweepIntervalMs: Math.min(options.sweepIntervalMs, 5_000) }
        : {}),
      ...options.dataPlaneController,
      onConverge: (r) => {
        observeConverge(r);
        alsoObserve?.(r);
      },
    });
    await dataPlaneController.start();

    const interceptors = [
      createAuthInterceptor({ identity, logger, metrics }),
      routingInterceptor(routeLater),
    ];
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
        operations: {
          around: (o, write) => waiter.around(o, write),
          check: (waitSeconds) => DispatchWaiter.check(waitSeconds),
        },
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
      apisRoutes(router, {
        apis,
        gateways,
        hubUrl: () => publicUrl,
        onGatewayCreated: (organizationId) => void routeSweep(organizationId),
        domains: serviceDomains,
      });
      fleetRoutes(router, fleet);
      eventsRoutes(router, { events: eventsSvc, webhooks });
      dataPlanesRoutes(router, {
        dataPlanes,
        links: privateLinks,
        db,
        servers: (c, defaultPlaneId) => servers.byDataPlane(c, defaultPlaneId),
      });
      databasesRoutes(router, { services, databases });
      serversRoutes(router, {
        servers,
        dispatches,
        hubUrl: () => publicUrl,
        agentAdmin: (serverId, action) => dispatchRouter.admin(serverId, action),
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
    // A call's context values, from the context its headers gave and the peer's address.
    const callValues = (ctx: IncomingContext, remoteAddress: string | undefined) =>
      createContextValues()
        .set(kIncoming, ctx)
        .set(kRemoteAddr, remoteAddress ?? "unknown");
    // Unary Connect calls over HTTP/1.1 are served before Fastify (DirectUnary) with what its
    // onRequest hook below would give them; the rest, and everything while draining or over the
    // body limit (answered by the hook), goes to Fastify.
    let directUnary: DirectUnary | undefined;
    // The announced body length, when it is over the limit (the hook refuses those up front).
    const overLimit = (headers: IncomingMessage["headers"]): number | undefined => {
      const length = Number(headers["content-length"] ?? 0);
      return length > maxBodyBytes ? length : undefined;
    };
    const beforeFastify = (req: IncomingMessage, res: ServerResponse): boolean => {
      if (!directUnary || draining || overLimit(req.headers) !== undefined) return false;
      return directUnary(req, res, (r, out) => {
        const ctx = contextFromHttpHeaders(r.headers);
        for (const [key, value] of Object.entries(contextResponseHeaders(ctx)))
          out.setHeader(key, value);
        return callValues(ctx, r.socket.remoteAddress);
      });
    };
    app = options.tls
      ? (Fastify({
          ...base,
          http2: true,
          https: { allowHTTP1: true, cert: options.tls.cert, key: options.tls.key },
        }) as unknown as FastifyInstance)
      : Fastify(base);
    // The direct path goes in front of the handler Fastify gave its server (not a serverFactory:
    // with one, Fastify stops binding every address `localhost` resolves to). Left out if Fastify
    // ever listens differently. A throw in front falls back to Fastify, which answers it.
    const [fastifyHandler, ...others] = app.server.listeners("request") as Array<
      (req: IncomingMessage, res: ServerResponse) => void
    >;
    if (fastifyHandler && others.length === 0) {
      app.server.removeListener("request", fastifyHandler);
      app.server.on("request", (req: IncomingMessage, res: ServerResponse) => {
        let served = false;
        try {
          served = beforeFastify(req, res);
        } catch (err) {
          logger.error({ err }, "direct unary path failed; Fastify answers");
          served = res.headersSent;
        }
        if (!served) fastifyHandler(req, res);
      });
    }
    app.decorateRequest("flotillaContext", undefined as unknown as IncomingContext);
    app.addHook("onRequest", async (request, reply) => {
      const ctx = contextFromHttpHeaders(request.headers);
      request.flotillaContext = ctx;
      reply.headers(contextResponseHeaders(ctx));
      // Refuse oversized bodies up front with the catalogue's code; Connect's own readMaxBytes
      // still guards chunked bodies that announce no length.
      const length = overLimit(request.headers);
      if (length !== undefined) {
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
    const gatewaySync = new GatewaySync({
      apis,
      gateways,
      routes: serviceRoutes,
      events: bus,
      ...(backbone ? { feed: "consumer" as const } : {}),
      logger,
    });
    await gatewaySync.register(app);
    gatewayStreams = gatewaySync;
    if (backbone) {
      // The gateway fan-out: a durable per replica (scope "replica"), so every replica hears
      // every deploy/undeploy event and hands it to the gateways whose event stream it holds.
      // It runs even with --nats-consumers off: only this replica can reach its sockets.
      await eventsSvc.addConsumer({
        ...(options.nats?.consumer ?? {}),
        name: "gateway-fanout",
        scope: "replica",
        accepts: (type) => gatewaySync.carries(type),
        handler: async (e) => {
          gatewaySync.deliver(e);
        },
      });
    }
    // Public service routes follow their services: every service event re-converges that
    // service's routes (the rows are the truth; a lost event waits for the periodic sweep).
    const routeSweep = (organizationId?: string) =>
      (organizationId ? serviceRoutes.sweep(organizationId) : serviceRoutes.sweepExclusive()).catch(
        (err) => logger.warn({ err }, "route sweep failed"),
      );
    const ROUTE_EVENTS = new Set([
      "service.created",
      "service.updated",
      "service.status_changed",
      "service.deleted",
    ]);
    const unsubscribeRoutes = bus.subscribe((e) => {
      if (!ROUTE_EVENTS.has(e.type)) return;
      serviceRoutes
        .reconcileService(e.organizationId, e.subjectId, { changedSince: new Date(e.occurredAt) })
        .catch((err) => logger.warn({ err, serviceId: e.subjectId }, "route reconcile failed"));
    });
    void routeSweep();
    const routeSweepTimer = setInterval(
      () => void routeSweep(),
      options.routeSweepIntervalMs ?? 60_000,
    );
    routeSweepTimer.unref();
    app.get("/health", async () => ({ status: "ok", instance: instanceId }));
    app.get("/ready", async (_request, reply) => {
      if (draining) return reply.code(503).send({ status: "draining" });
      try {
        await db.ping();
        if (backbone) {
          const nats = await backbone.readiness();
          if (!nats.ok)
            return reply.code(503).send({ status: "unavailable", engine: db.engine, nats });
          return { status: "ready", engine: db.engine, nats };
        }
        return { status: "ready", engine: db.engine };
      } catch (err) {
        return reply.code(503).send({ status: "unavailable", store: (err as Error).message });
      }
    });
    app.get("/metrics", async (_request, reply) => {
      if (backbone) backboneMetrics.natsConnected.set(backbone.isConnected() ? 1 : 0);
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
      contextValues: (request) => callValues(request.flotillaContext, request.ip),
      onError: (err: unknown, method: string) =>
        logger.error({ err, method }, "connect handler failed"),
    } satisfies ConnectOnFastifyOptions;
    await app.register(async (scope) => {
      directUnary = connectOnFastify(scope, connectOptions);
    });
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
    const controller = dataPlaneController;
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
      dataPlanes,
      apis,
      gateways,
      gatewaySync,
      serviceRoutes,
      privateLinks,
      dataPlaneController: controller,
      control,
      router: dispatchRouter,
      events: bus,
      relay: outboxRelay,
      eventsService: eventsSvc,
      nats: backbone,
      webhooks,
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
          await gatewaySync.close();
          clearInterval(routeSweepTimer);
          unsubscribeRoutes();
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
          await controller.close();
          await outboxRelay.stop();
          await waiter.close();
          await internalHttp.close();
          await eventsSvc.stop();
          await webhooks.stop();
          await bus.close();
          await backbone?.close();
          await unlistenPrincipals?.();
          await db.close();
          logger.info("hub stopped");
        })();
        return closing;
      },
    };
  } catch (err) {
    await closeWaiter?.().catch(() => {});
    await dataPlaneController?.close().catch(() => {});
    await relay?.stop().catch(() => {});
    await eventsService?.stop().catch(() => {});
    await webhooksService?.stop().catch(() => {});
    await events?.close().catch(() => {});
    await unlistenPrincipals?.().catch(() => {});
    await backbone?.close().catch(() => {});
    await app?.close().catch(() => {});
    h2?.close();
    await db.close().catch(() => {});
    throw err;
  }
}
