// The gateway process: local store first (serves at once), then sync with the hub in the
// background; the data port proxies, the admin port serves /health, /ready and /metrics.
import { createServer, type IncomingMessage, type Server } from "node:http";
import { type AddressInfo, createServer as createNetServer, type Socket } from "node:net";
import { createServer as createTlsServer } from "node:tls";
import { pino } from "pino";
import { Counter, Gauge, Registry } from "prom-client";
import {
  guardedLookup,
  isoTimestamp,
  notLocalOperator,
  notOperatorsUser,
  type ResolveAll,
} from "../shared/index.js";
import { AccessLog, type AccessLogSink } from "./access-log.js";
import { CertificatesByName, readCertificateDir } from "./certificates.js";
import { FastPath } from "./fast-path.js";
import {
  type AccessLogRecord,
  headWithoutUpgrade,
  isWebSocketUpgrade,
  type ProxyObserver,
  ReverseProxy,
} from "./proxy.js";
import { type ApiFigures, RequestMetrics } from "./request-metrics.js";
import { ConfigStore, type Route } from "./routes.js";
import { LocalStore } from "./store.js";
import { HubSync } from "./sync.js";

export interface GatewayOptions {
  hubUrl: string;
  token: string;
  /** The data port (API traffic). 0 picks a free port. */
  port: number;
  /** The admin port (/health, /ready, /metrics). Default 0 (a free port, logged). */
  adminPort?: number;
  /** Default 0.0.0.0 for the data port; the admin port binds 127.0.0.1. */
  host?: string;
  adminHost?: string;
  dataDir: string;
  batchSize?: number;
  hashCheckIntervalMs?: number;
  /** One JSON line per request: on stdout (true, the default), nowhere (false), or to a sink. */
  accessLog?: boolean | AccessLogSink;
  logLevel?: string;
  connectionsPerOrigin?: number;
  /**
   * Serve the data port over TLS (HTTP/1.1) with this certificate and key (PEM): the default, for
   * clients whose server name no certificate of `certificateDir` covers.
   */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /**
   * A directory of certificates by server name (SNI; readCertificateDir), each for the DNS names
   * of its subjectAltName; with it the data port speaks TLS. Without `tls`, a client naming no
   * covered host gets no certificate. Read at start (config.invalid stops the start) and again by
   * reloadCertificates.
   */
  certificateDir?: string;
  /** How long a request head may take to arrive whole (408 after). Default 60 s, as node:http's. */
  headersTimeoutMs?: number;
  /** Resolves upstream names: the system's resolver (dns.lookup) unless given (tests' fake DNS). */
  resolveUpstream?: ResolveAll;
}

export interface Gateway {
  url: string;
  adminUrl: string;
  store: LocalStore;
  config: ConfigStore;
  sync: HubSync;
  /** Milliseconds from the start of startGateway until the data port served the stored config. */
  startupMs: number;
  /**
   * Reads certificateDir again (a renewal; `flotilla gateway` does it on SIGHUP): handshakes from
   * now on use the new set, connections already open keep theirs. A directory that no longer
   * reads whole changes nothing and is logged; returns whether the set was replaced.
   */
  reloadCertificates(): boolean;
  close(): Promise<void>;
}

/** Idle time between requests on a client connection (above common load balancers' 60 s). */
const DATA_KEEP_ALIVE_MS = 65_000;
const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export async function startGateway(o: GatewayOptions): Promise<Gateway> {
  const started = performance.now();
  // First: a certificate directory that does not read whole stops the start before anything opens.
  const byName = new CertificatesByName(
    o.certificateDir === undefined ? [] : readCertificateDir(o.certificateDir),
  );
  const secure = Boolean(o.tls || o.certificateDir !== undefined);
  const logger = pino({
    level: o.logLevel ?? process.env.FLOTILLA_LOG_LEVEL ?? "info",
    base: { name: "gateway", pid: process.pid },
    timestamp: isoTimestamp,
    redact: {
      paths: ["token", "*.token", "credential", "*.credential", "authorization"],
      censor: "[redacted]",
    },
  });
  const access =
    o.accessLog === false ? null : new AccessLog(o.accessLog === true ? undefined : o.accessLog);

  const registry = new Registry();
  const requestMetrics = new RequestMetrics(DURATION_BUCKETS);
  requestMetrics.register(registry);
  const routesGauge = new Gauge({
    name: "flotilla_gateway_routes",
    help: "Routes in the active table.",
    registers: [registry],
  });
  const failedGauge = new Gauge({
    name: "flotilla_gateway_failed_deployments",
    help: "API deployments whose definition failed to apply.",
    registers: [registry],
  });
  const swapsCounter = new Counter({
    name: "flotilla_gateway_route_table_swaps_total",
    help: "Route table rebuilds swapped in.",
    registers: [registry],
  });
  const syncGauge = new Gauge({
    name: "flotilla_gateway_sync",
    help: "Sync facts: connected (0/1), converged (0/1), reconciles, reconcile_failures, events_applied, events_ignored, archives_rejected.",
    labelNames: ["fact"] as const,
    registers: [registry],
  });
  // Figures cached per route: a request finds its API's without a lookup by name.
  const figuresByRoute = new WeakMap<Route, ApiFigures>();
  const noRoute = requestMetrics.forApi("(none)");

  const store = new LocalStore(o.dataDir, o.token);
  let sync: HubSync | undefined;
  const config = new ConfigStore({
    report: (r) => sync?.reporter(r),
    onSwap: (size) => {
      routesGauge.set(size);
      swapsCounter.inc();
    },
  });
  // Serve from the local store at once: compile what is stored before the hub is asked anything.
  config.apply(store.all());
  config.rebuildNow();
  routesGauge.set(config.table.size);

  const observer: ProxyObserver = {
    done(route: Route | undefined, rec: AccessLogRecord) {
      let figures = route ? figuresByRoute.get(route) : noRoute;
      if (!figures) {
        figures = requestMetrics.forApi(route!.name);
        figuresByRoute.set(route!, figures);
      }
      figures.observe(rec.status, rec.ms / 1000);
      access?.record(rec);
    },
  };
  // Every upstream connection resolves names through this: none reaches a metadata address.
  const lookup = guardedLookup(o.resolveUpstream);
  const proxy = new ReverseProxy({
    table: () => config.table,
    lookup,
    ...(o.connectionsPerOrigin ? { connectionsPerOrigin: o.connectionsPerOrigin } : {}),
    observer,
  });
  // node:http serves what the fast path hands it (bodies, LLM routes, errors, anything unusual);
  // it never listens itself: the data port is the fast path's.
  const slow: Server = createServer(
    {
      keepAliveTimeout: DATA_KEEP_ALIVE_MS,
      ...(o.headersTimeoutMs ? { headersTimeout: o.headersTimeoutMs } : {}),
    },
    proxy.handle,
  );
  slow.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => {
    if (isWebSocketUpgrade(req)) return proxy.upgrade(req, socket, head);
    // node:http sends every request asking for an upgrade here once anyone listens; an upgrade
    // other than WebSocket is optional to the client (h2c): served as the plain request it is.
    socket.pause();
    socket.unshift(Buffer.concat([headWithoutUpgrade(req), head]));
    slow.emit("connection", socket);
    socket.resume();
  });
  const fast = new FastPath({
    table: () => config.table,
    observer,
    fallback: slow,
    keepAliveTimeoutMs: DATA_KEEP_ALIVE_MS,
    ...(o.headersTimeoutMs ? { headersTimeoutMs: o.headersTimeoutMs } : {}),
    lookup,
    ...(o.connectionsPerOrigin ? { connectionsPerOrigin: o.connectionsPerOrigin } : {}),
    tls: secure,
  });
  // With TLS, the fast path reads and writes the decrypted stream: a TLSSocket is a Socket.
  const data = secure
    ? createTlsServer(
        {
          ...(o.tls ? { cert: o.tls.cert, key: o.tls.key } : {}),
          // Unknown or absent names get the default context (o.tls's certificate, or none).
          SNICallback: (name, done) => done(null, byName.find(name)),
          ALPNProtocols: ["http/1.1"],
          // Node's default (120 s) for a handshake that never completes.
          handshakeTimeout: 10_000,
        },
        fast.onConnection,
      )
    : createNetServer(fast.onConnection);
  // A port that will not listen (taken, not permitted) ends the start with nothing left open.
  const abandon = async (err: unknown, listening: Array<{ close(): unknown }>) => {
    for (const server of listening) server.close();
    await proxy.close();
    store.close();
    access?.close();
    throw err;
  };
  await new Promise<void>((resolve, reject) => {
    data.once("error", reject);
    data.listen(o.port, o.host ?? "0.0.0.0", () => resolve());
  }).catch((err) => abandon(err, []));
  // The node:http server never listens, but its connection tracking (headersTimeout,
  // requestTimeout, closeIdleConnections) starts on "listening": start it for the connections the
  // fast path hands over.
  slow.emit("listening");
  const startupMs = performance.now() - started;

  sync = new HubSync({
    hubUrl: o.hubUrl,
    token: o.token,
    store,
    config,
    logger,
    ...(o.batchSize ? { batchSize: o.batchSize } : {}),
    ...(o.hashCheckIntervalMs ? { hashCheckIntervalMs: o.hashCheckIntervalMs } : {}),
  });
  const hubSync = sync;

  const admin = createServer(async (req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    // Not through a proxy or from a browser: a route of this very gateway with a 127.0.0.1
    // upstream would otherwise show any tenant every API it holds (/status). Probes and scrapes
    // (/ready, /metrics) may name the address they reach (--admin-host); /status and
    // /drop-stream answer only a Host of this host (a rebound DNS name is not).
    const sensitive = path === "/status" || path === "/drop-stream";
    const stranger =
      path === "/health"
        ? undefined
        : (notLocalOperator(req.headers, { hostMustBeLoopback: sensitive }) ??
          // Only the operator's user (or root) sees /status: a workload on this host runs as
          // another; any local probe or scraper reads /ready and /metrics.
          (sensitive ? await notOperatorsUser(req.socket) : undefined));
    if (stranger) {
      res.writeHead(403, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          code: "auth.permission_denied",
          message: `the admin port answers this host's operator only, and ${stranger}`,
        }),
      );
      return;
    }
    if (path === "/health") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ status: "ok" }));
      return;
    }
    if (path === "/ready") {
      // Ready as soon as the stored config serves; the hub's reachability is reported, not
      // required. Every fact here is a field read: probes may come every few milliseconds (the
      // benchmark's do) and must not cost a pass over 10,000 rows; the hashes are on /status.
      const body = {
        status: "ready",
        routes: config.table.size,
        failed: config.failures.size,
        hubConnected: hubSync.stats.connected,
        converged: hubSync.stats.converged,
        lastEventToSwapMs: Math.round(hubSync.stats.lastEventToSwapMs * 10) / 10,
        startupMs: Math.round(startupMs * 10) / 10,
        lastReconcileAt: hubSync.stats.lastReconcileAt
          ? new Date(hubSync.stats.lastReconcileAt).toISOString()
          : null,
      };
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
      return;
    }
    if (path === "/metrics") {
      const s = hubSync.stats;
      syncGauge.set({ fact: "connected" }, s.connected ? 1 : 0);
      syncGauge.set({ fact: "converged" }, s.converged ? 1 : 0);
      syncGauge.set({ fact: "reconciles" }, s.reconciles);
      syncGauge.set({ fact: "reconcile_failures" }, s.reconcileFailures);
      syncGauge.set({ fact: "events_applied" }, s.eventsApplied);
      syncGauge.set({ fact: "events_ignored" }, s.eventsIgnored);
      syncGauge.set({ fact: "archives_rejected" }, s.archivesRejected);
      failedGauge.set(config.failures.size);
      res.writeHead(200, { "content-type": registry.contentType });
      res.end(await registry.metrics());
      return;
    }
    if (path === "/status") {
      // What this gateway holds, per API: tests compare it with the hub's expected set.
      const rows = store
        .index()
        .map((r) => ({ ...r, failure: config.failures.get(r.apiId)?.reason ?? null }));
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          deployments: rows,
          routes: config.table.size,
          localHash: store.configHash(),
          hubHash: hubSync.hubHash,
        }),
      );
      return;
    }
    if (path === "/drop-stream" && req.method === "POST") {
      hubSync.dropStream();
      res.writeHead(204);
      res.end();
      return;
    }
    res.writeHead(404);
    res.end();
  });
  await new Promise<void>((resolve, reject) => {
    admin.once("error", reject);
    admin.listen(o.adminPort ?? 0, o.adminHost ?? "127.0.0.1", () => resolve());
  }).catch((err) => abandon(err, [data, slow])); // slow: its connection tracking started.
  const dataPort = (data.address() as AddressInfo).port;
  const adminPort = (admin.address() as AddressInfo).port;
  const url = `${secure ? "https" : "http"}://127.0.0.1:${dataPort}`;
  const adminUrl = `http://127.0.0.1:${adminPort}`;
  logger.info(
    { url, adminUrl, routes: config.table.size, startupMs: Math.round(startupMs * 10) / 10 },
    "gateway serving from its local store",
  );
  hubSync.start();

  let closing: Promise<void> | undefined;
  return {
    url,
    adminUrl,
    store,
    config,
    sync: hubSync,
    startupMs,
    reloadCertificates() {
      if (o.certificateDir === undefined) {
        logger.warn("no certificate directory to reload (--tls-cert-dir)");
        return false;
      }
      try {
        const pairs = readCertificateDir(o.certificateDir);
        byName.set(pairs);
        logger.info({ certificates: pairs.length }, "certificates reloaded");
        return true;
      } catch (err) {
        logger.warn(
          { err: (err as Error).message },
          "certificates not reloaded; the old ones serve",
        );
        return false;
      }
    },
    close() {
      closing ??= (async () => {
        await hubSync.stop();
        fast.close();
        proxy.endTunnels();
        slow.close(() => {}); // Not listening: this only stops its tracking and closes idle connections.
        // Connections busy with a response get 5 s to finish it, then are cut.
        const cut = setTimeout(() => {
          slow.closeAllConnections();
          fast.destroyAll();
        }, 5000);
        cut.unref();
        await Promise.all([
          new Promise<void>((r) => data.close(() => r())),
          new Promise<void>((r) => admin.close(() => r())),
        ]);
        clearTimeout(cut);
        await proxy.close();
        store.close();
        access?.close();
        logger.info("gateway stopped");
      })();
      return closing;
    },
  };
}
