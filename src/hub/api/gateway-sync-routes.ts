// The gateways' internal sync endpoints (authenticated by a gateway token) and their event stream:
// expected set, content archive, existence check, config hash, status reports, WebSocket events.
import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { WebSocket } from "ws";
import {
  type DeploymentsResponse,
  type ExpectedRow,
  GATEWAY_SYNC,
  GATEWAY_VERSION_HEADER,
  type GatewayToHubFrame,
  type HubToGatewayFrame,
  isUuid,
  type Logger,
  MAX_CONTENT_BATCH,
  type StatusReport,
  writeTar,
} from "../../shared/index.js";
import { type ApisService, configHash } from "../apis/index.js";
import type { Gateway, GatewaysService, ServiceRoutes } from "../gateways/index.js";
import type { EventBus, StoredEvent } from "../outbox/index.js";

export interface GatewaySyncOptions {
  apis: ApisService;
  gateways: GatewaysService;
  /** Public service routes: part of each gateway's expected set. */
  routes: ServiceRoutes;
  events: EventBus;
  /**
   * Where deploy/undeploy events come from. "bus" (default): this replica's bus subscription.
   * "consumer": the caller feeds them through deliver() (with NATS, a per-replica durable
   * consumer, so each event is acknowledged to the stream only once handed to the sockets).
   */
  feed?: "bus" | "consumer";
  logger: Logger;
  /** An unacknowledged event is sent again after this long. Default 5 s. */
  resendAfterMs?: number;
  /** How often the hub pings a gateway's socket. Default 15 s. */
  pingIntervalMs?: number;
}

/** Resends of one unacknowledged event; after that the gateway's periodic reconcile covers it. */
const MAX_SENDS = 5;
const REPORT_STATUSES = new Set(["deployed", "undeployed", "failed"]);

interface Pending {
  frame: HubToGatewayFrame;
  sends: number;
  timer: NodeJS.Timeout;
}

interface Connection {
  socket: WebSocket;
  gateway: Gateway;
  pending: Map<string, Pending>;
  /** What the gateway said it runs, when it said (and it looked like a version). */
  version: string | undefined;
}

/** A version as a gateway may name it: short and plain, so it is safe to show and log. */
const VERSION = /^[0-9A-Za-z.+_-]{1,64}$/;

function bearer(request: FastifyRequest): string {
  const value = request.headers.authorization ?? "";
  return /^Bearer\s+(\S+)$/i.exec(value)?.[1] ?? "";
}

function badRequest(reply: FastifyReply, field: string, message: string) {
  return reply
    .code(400)
    .send({ code: "validation.failed", field, message: `${field}: ${message}` });
}

/** The deployment ids of a POST body: 1..MAX_CONTENT_BATCH UUIDs. */
function idsFrom(body: unknown): string[] | string {
  const ids = (body as { deploymentIds?: unknown } | null)?.deploymentIds;
  if (!Array.isArray(ids)) return "must be a list of deployment ids";
  if (ids.length > MAX_CONTENT_BATCH) return `must list at most ${MAX_CONTENT_BATCH} ids`;
  if (!ids.every((i) => typeof i === "string" && isUuid(i))) return "must be UUIDs";
  return ids.map((i) => (i as string).toLowerCase());
}

/** The event types a gateway's event stream carries. */
const GATEWAY_EVENT_TYPES: ReadonlySet<string> = new Set([
  "api.deployed",
  "api.undeployed",
  "service_route.deployed",
  "service_route.undeployed",
]);

export class GatewaySync {
  private readonly connections = new Set<Connection>();
  private unsubscribe: (() => void) | undefined;

  constructor(private readonly o: GatewaySyncOptions) {}

  private async authenticate(
    request: FastifyRequest,
    reply: FastifyReply,
  ): Promise<Gateway | null> {
    const gateway = await this.o.gateways.authenticate(bearer(request));
    if (!gateway) {
      await reply.code(401).send({
        code: "auth.unauthenticated",
        message: "send the gateway's token as Authorization: Bearer fgw_...",
      });
      return null;
    }
    return gateway;
  }

  /** The gateway's whole expected set: API deployments and public service routes. */
  private async expected(gatewayId: string): Promise<ExpectedRow[]> {
    const [apis, routes] = await Promise.all([
      this.o.apis.expectedFor(gatewayId, null),
      this.o.routes.expectedFor(gatewayId),
    ]);
    return [...apis, ...routes];
  }

  async register(app: FastifyInstance): Promise<void> {
    app.get(GATEWAY_SYNC.deployments, async (request, reply) => {
      const gateway = await this.authenticate(request, reply);
      if (!gateway) return reply;
      const sinceText = (request.query as { since?: string }).since;
      let since: number | null = null;
      if (sinceText !== undefined) {
        since = Number(sinceText);
        if (!Number.isSafeInteger(since) || since < 0)
          return badRequest(reply, "since", "must be milliseconds since the epoch");
      }
      const full = await this.expected(gateway.id);
      const rows = since === null ? full : full.filter((d) => d.deployedAt > since);
      const body: DeploymentsResponse = {
        gatewayId: gateway.id,
        deployments: rows,
        configHash: configHash(full),
      };
      return body;
    });
    app.get(GATEWAY_SYNC.configHash, async (request, reply) => {
      const gateway = await this.authenticate(request, reply);
      if (!gateway) return reply;
      const full = await this.expected(gateway.id);
      return { configHash: configHash(full), count: full.length };
    });
    app.post(GATEWAY_SYNC.exists, async (request, reply) => {
      const gateway = await this.authenticate(request, reply);
      if (!gateway) return reply;
      const ids = idsFrom(request.body);
      if (typeof ids === "string") return badRequest(reply, "deploymentIds", ids);
      const [apis, routes] = await Promise.all([
        this.o.apis.existing(gateway.id, ids),
        this.o.routes.existing(gateway.id, ids),
      ]);
      return { existing: [...apis, ...routes] };
    });
    app.post(GATEWAY_SYNC.content, async (request, reply) => {
      const gateway = await this.authenticate(request, reply);
      if (!gateway) return reply;
      const ids = idsFrom(request.body);
      if (typeof ids === "string") return badRequest(reply, "deploymentIds", ids);
      const contents = [
        ...(await this.o.apis.contentFor(gateway.id, ids)),
        ...(await this.o.routes.contentFor(gateway.id, ids)),
      ];
      const archive = writeTar(
        contents.map((c) => ({
          path: `${c.deploymentId}/api.json`,
          body: Buffer.from(JSON.stringify(c)),
        })),
      );
      return reply.type("application/x-tar").header("cache-control", "no-store").send(archive);
    });
    app.post(GATEWAY_SYNC.status, async (request, reply) => {
      const gateway = await this.authenticate(request, reply);
      if (!gateway) return reply;
      const reports = (request.body as { reports?: unknown } | null)?.reports;
      if (!Array.isArray(reports) || reports.length > MAX_CONTENT_BATCH)
        return badRequest(
          reply,
          "reports",
          `must be a list of at most ${MAX_CONTENT_BATCH} reports`,
        );
      const valid: StatusReport[] = [];
      for (const [i, r] of reports.entries()) {
        const x = r as Partial<StatusReport>;
        if (
          typeof x !== "object" ||
          !x ||
          typeof x.apiId !== "string" ||
          !isUuid(x.apiId) ||
          typeof x.deploymentId !== "string" ||
          !isUuid(x.deploymentId) ||
          !Number.isSafeInteger(x.deployedAt) ||
          // A Date holds at most 8.64e15 ms; a larger one would fail in the database, not here.
          (x.deployedAt as number) < 0 ||
          (x.deployedAt as number) > 8.64e15 ||
          !REPORT_STATUSES.has(String(x.status)) ||
          (x.reason !== undefined && typeof x.reason !== "string")
        )
          return badRequest(
            reply,
            `reports[${i}]`,
            "needs apiId, deploymentId (UUIDs), deployedAt (ms) and status deployed|undeployed|failed",
          );
        valid.push(x as StatusReport);
      }
      return { recorded: await this.o.apis.recordReports(gateway.id, valid) };
    });
    // The token is checked before the upgrade: a refused gateway gets a plain 401 and never an
    // open stream (opened then closed, it took the stream for healthy and retried ~10 times a
    // second without backing off).
    const streamOf = new WeakMap<FastifyRequest, Gateway>();
    app.get(
      GATEWAY_SYNC.events,
      {
        websocket: true,
        preValidation: async (request, reply) => {
          let gateway: Gateway | null;
          try {
            gateway = await this.authenticate(request, reply);
          } catch {
            // Not the token's fault: the gateway retries with backoff, it is not told to fix it.
            await reply.code(503).send({
              code: "store.unavailable",
              message: "the gateway's token could not be checked; retry",
            });
            return reply;
          }
          if (!gateway) return reply; // 401 sent
          streamOf.set(request, gateway);
        },
      },
      (socket, request) => {
        const gateway = streamOf.get(request);
        streamOf.delete(request);
        if (gateway) this.accept(socket, request, gateway);
        else socket.close(4401, "invalid gateway token");
      },
    );
    // Durable first: these are outbox rows already committed; the frame only wakes the gateway.
    if ((this.o.feed ?? "bus") === "bus")
      this.unsubscribe = this.o.events.subscribe((e) => this.deliver(e));
  }

  private accept(socket: WebSocket, request: FastifyRequest, gateway: Gateway): void {
    if (socket.readyState !== socket.OPEN) return;
    const claimed = request.headers[GATEWAY_VERSION_HEADER];
    const conn: Connection = {
      socket,
      gateway,
      pending: new Map(),
      version: typeof claimed === "string" && VERSION.test(claimed) ? claimed : undefined,
    };
    this.connections.add(conn);
    let alive = true;
    const ping = setInterval(() => {
      if (!alive) return socket.terminate();
      alive = false;
      socket.ping();
    }, this.o.pingIntervalMs ?? 15_000);
    socket.on("pong", () => {
      alive = true;
    });
    socket.on("message", (data) => {
      let frame: GatewayToHubFrame;
      try {
        frame = JSON.parse(String(data));
      } catch {
        return;
      }
      if (frame?.type === "ack" && typeof frame.id === "string") {
        const p = conn.pending.get(frame.id);
        if (p) {
          clearTimeout(p.timer);
          conn.pending.delete(frame.id);
        }
      }
    });
    socket.on("close", () => {
      clearInterval(ping);
      for (const p of conn.pending.values()) clearTimeout(p.timer);
      this.connections.delete(conn);
    });
    this.send(conn, { type: "hello", gatewayId: gateway.id });
    this.o.logger.info({ gatewayId: gateway.id }, "gateway connected");
  }

  private send(conn: Connection, frame: HubToGatewayFrame): void {
    if (conn.socket.readyState === conn.socket.OPEN) conn.socket.send(JSON.stringify(frame));
  }

  /** Sends a deploy/undeploy event to this replica's sockets of its gateway; returns how many. */
  deliver(e: StoredEvent): number {
    if (!GATEWAY_EVENT_TYPES.has(e.type)) return 0;
    const p = e.payload as {
      gateway_id: string;
      api_id: string;
      deployment_id: string;
      kind: string;
      state: ExpectedRow["state"];
      deployed_at: number;
    };
    let sent = 0;
    for (const conn of this.connections) {
      if (conn.gateway.id !== p.gateway_id) continue;
      sent++;
      const frame: HubToGatewayFrame = {
        type: "event",
        id: e.id,
        event: e.type.endsWith(".deployed") ? "api.deployed" : "api.undeployed",
        row: {
          apiId: p.api_id,
          deploymentId: p.deployment_id,
          kind: p.kind,
          state: p.state,
          deployedAt: p.deployed_at,
        },
        ctx: { correlation: e.correlationId, traceparent: e.traceparent },
      };
      const attempt = (sends: number) => {
        this.send(conn, frame);
        if (sends >= MAX_SENDS) {
          conn.pending.delete(e.id);
          return;
        }
        const timer = setTimeout(() => attempt(sends + 1), this.o.resendAfterMs ?? 5000);
        timer.unref();
        conn.pending.set(e.id, { frame, sends, timer });
      };
      attempt(1);
    }
    return sent;
  }

  /**
   * Pings this replica's event stream of a gateway and resolves with the round trip in ms and the
   * version the gateway named when it connected; null when no stream of it is held here. Rejects
   * when no pong comes within deadlineMs.
   */
  async ping(
    gatewayId: string,
    deadlineMs: number,
  ): Promise<{ latencyMs: number; version: string | undefined } | null> {
    const conn = [...this.connections].find(
      (c) => c.gateway.id === gatewayId && c.socket.readyState === c.socket.OPEN,
    );
    if (!conn) return null;
    const payload = Buffer.from(randomUUID());
    const started = performance.now();
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        conn.socket.off("pong", onPong);
        conn.socket.off("close", onClose);
      };
      const onPong = (data: Buffer) => {
        if (!payload.equals(data)) return;
        done();
        resolve({ latencyMs: performance.now() - started, version: conn.version });
      };
      const onClose = () => {
        done();
        reject(new Error("the event stream closed during the ping"));
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no pong on the event stream within ${deadlineMs} ms`));
      }, deadlineMs);
      conn.socket.on("pong", onPong);
      conn.socket.on("close", onClose);
      conn.socket.ping(payload);
    });
  }

  /** Whether events of this type go to gateways (the fan-out consumer skips the others). */
  carries(eventType: string): boolean {
    return GATEWAY_EVENT_TYPES.has(eventType);
  }

  /** Connected gateways (this replica). */
  connected(): string[] {
    return [...this.connections].map((c) => c.gateway.id);
  }

  async close(): Promise<void> {
    this.unsubscribe?.();
    for (const conn of this.connections) conn.socket.close(1001, "hub shutting down");
  }
}
