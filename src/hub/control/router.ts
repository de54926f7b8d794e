// route() for a dispatch, as ARCHITECTURE.md "Multi-replica hub" lays it out: local (this replica
// holds the agent's socket) -> forward (another live replica does; the NOTIFY written with the
// intent wakes it) -> direct (no live replica holds it, but the agent advertises an admin endpoint:
// deliver there, signed) -> undeliverable (stays pending, drained when the agent reconnects).
import {
  type AdminAction,
  AGENT_DIRECT_DISPATCH_PATH,
  contextFromRow,
  contextToFrame,
  FlotillaError,
  type Logger,
  runWithContext,
  signDirect,
} from "../../shared/index.js";
import type { InternalHttpClient } from "../internal/index.js";
import {
  type Dispatch,
  type DispatchStore,
  HEARTBEAT_FRESHNESS_MS,
  type Server,
  type ServersService,
} from "../servers/index.js";
import type { ControlChannel } from "./channel.js";

export type Route = "local" | "forward" | "direct" | "undeliverable";

export interface RouterOptions {
  control: ControlChannel;
  servers: ServersService;
  dispatches: DispatchStore;
  http: InternalHttpClient;
  hubId: string;
  logger: Logger;
  /** Resolves secrets into a dispatch's arguments at the moment it is sent (as the channel does). */
  resolveArgs?: (d: Dispatch) => Promise<Record<string, unknown>>;
  /** An owner whose heartbeat is older than this is presumed dead. Default 90 s. */
  freshnessMs?: number;
  onRoute?: (route: Route) => void;
  observe?: {
    claimed(op: string): void;
    finished(op: string, ok: boolean, seconds: number): void;
  };
}

/** How long the agent has to answer a direct dispatch: as on the channel (see deadlineSeconds). */
function directDeadlineMs(d: Dispatch): number {
  const timeoutMs = Number(d.args.timeout_ms);
  return d.op === "job" && Number.isFinite(timeoutMs) && timeoutMs > 0
    ? timeoutMs + 60_000
    : 300_000;
}

export class DispatchRouter {
  constructor(private readonly o: RouterOptions) {}

  /** Is this server's owner alive (a fresh heartbeat through the replica named on its row)? */
  private ownerAlive(s: Server): boolean {
    const fresh = this.o.freshnessMs ?? HEARTBEAT_FRESHNESS_MS;
    return (
      s.status === "online" &&
      s.connectedHubId !== null &&
      s.lastHeartbeat !== null &&
      Date.now() - s.lastHeartbeat.getTime() < fresh
    );
  }

  /**
   * Decides how a committed dispatch reaches its agent, and starts it on its way. Needs only its
   * id and server: the local and forward paths never read the row (the holder's drain claims it).
   */
  async route(d: { id: string; serverId: string }): Promise<Route> {
    const route = await this.decide(d);
    this.o.onRoute?.(route);
    this.o.logger.debug({ dispatch: d.id, server: d.serverId, route }, "dispatch routed");
    return route;
  }

  private async decide(d: { id: string; serverId: string }): Promise<Route> {
    if (this.o.control.holds(d.serverId)) {
      // The fast path: no NOTIFY round trip (the wake-up that still arrives is coalesced).
      this.o.control.wake(d.serverId);
      return "local";
    }
    const server = await this.o.servers.routing(d.serverId);
    if (!server) return "undeliverable";
    // Affinity is a hint: the replica named here holds the socket unless it just lost it; the
    // NOTIFY sent with the intent has already woken it.
    if (this.ownerAlive(server) && server.connectedHubId !== this.o.hubId) return "forward";
    if (server.adminUrl) {
      void this.deliverDirect(d.id, server.adminUrl);
      return "direct";
    }
    return "undeliverable";
  }

  private contextOf(d: Dispatch) {
    return {
      ...contextFromRow({ correlation_id: d.correlationId, traceparent: d.traceparent }),
      tenant: d.organizationId,
    };
  }

  /**
   * Claims the dispatch (compare-and-set, so one replica delivers it), posts it to the agent's
   * admin endpoint signed with the server's derived key, and records the outcome. A dispatch the
   * agent never received goes back to pending; one whose answer was lost stays in progress for
   * the sweep (the agent's ledger answers a resend without running it again).
   */
  async deliverDirect(
    id: string,
    adminUrl: string,
  ): Promise<"done" | "failed" | "pending" | "lost"> {
    let claimed = await this.o.dispatches.claim(id, this.o.hubId);
    if (!claimed) return "lost";
    const deadlineMs = directDeadlineMs(claimed);
    // A job's lease is its own timeout plus a minute, not the default five minutes.
    if (claimed.op === "job")
      claimed =
        (await this.o.dispatches.retake(claimed.id, this.o.hubId, deadlineMs / 1000)) ?? claimed;
    this.o.observe?.claimed(claimed.op);
    const ctx = this.contextOf(claimed);
    return runWithContext(ctx, async () => {
      const log = this.o.logger;
      let args: Record<string, unknown>;
      try {
        args = this.o.resolveArgs ? await this.o.resolveArgs(claimed) : claimed.args;
      } catch (err) {
        await this.o.dispatches.fail(
          claimed.id,
          `could not prepare the dispatch: ${(err as Error).message}`,
        );
        return "failed";
      }
      const key = await this.o.servers.directKey(claimed.serverId);
      if (!key) {
        await this.o.dispatches.fail(claimed.id, "the server was deleted");
        return "failed";
      }
      const body = JSON.stringify({
        v: 1,
        type: "dispatch",
        id: claimed.id,
        ctx: contextToFrame(ctx),
        op: claimed.op,
        service_id: claimed.serviceId,
        deployment_id: claimed.deploymentId,
        args,
      });
      log.info(
        {
          dispatch: claimed.id,
          op: claimed.op,
          server: claimed.serverId,
          attempt: claimed.attempts,
          route: "direct",
        },
        "dispatch sent",
      );
      let res: { status: number; body: string };
      try {
        res = await this.o.http.call({
          method: "POST",
          url: new URL(AGENT_DIRECT_DISPATCH_PATH, adminUrl).toString(),
          body,
          deadlineMs,
          // The agent's ledger answers a repeat of one dispatch id without running it again.
          idempotent: true,
          context: ctx,
          sign: (method, path, text) => signDirect(key, method, path, text),
        });
      } catch (err) {
        log.warn(
          { err, dispatch: claimed.id },
          "direct delivery failed; the dispatch waits for the agent",
        );
        // Not known to have reached the agent: back to pending (not an attempt); if it did
        // reach it, the ledger answers the next delivery.
        await this.o.dispatches.release(claimed.id);
        return "pending";
      }
      let answer: {
        ok?: boolean;
        result?: unknown;
        error?: string;
        code?: string;
        message?: string;
      } = {};
      try {
        answer = JSON.parse(res.body);
      } catch {}
      if (res.status === 409) {
        await this.o.dispatches.release(claimed.id);
        log.info(
          { dispatch: claimed.id, reason: answer.message },
          "dispatch deferred by the agent",
        );
        return "pending";
      }
      if (res.status !== 200 || typeof answer.ok !== "boolean") {
        await this.o.dispatches.release(claimed.id);
        log.warn(
          { dispatch: claimed.id, status: res.status, reason: answer.message },
          "the agent refused a direct dispatch; it waits for the agent",
        );
        return "pending";
      }
      const recorded = answer.ok
        ? await this.o.dispatches.complete(claimed.id, answer.result ?? null)
        : await this.o.dispatches.fail(
            claimed.id,
            answer.error ?? "the agent reported a failure",
            answer.result,
          );
      log.info(
        { dispatch: claimed.id, ok: answer.ok, recorded, route: "direct" },
        "dispatch result",
      );
      if (recorded)
        this.o.observe?.finished(
          claimed.op,
          answer.ok,
          (Date.now() - claimed.createdAt.getTime()) / 1000,
        );
      return answer.ok ? "done" : "failed";
    });
  }

  /** The sweep's share: pending dispatches of unheld servers that advertise an endpoint. */
  async sweepDirect(): Promise<number> {
    const list = await this.o.dispatches.pendingForUnheldDirect(
      this.o.freshnessMs ?? HEARTBEAT_FRESHNESS_MS,
    );
    for (const d of list) {
      const server = await this.o.servers.routing(d.serverId);
      if (server?.adminUrl && !this.o.control.holds(d.serverId))
        void this.deliverDirect(d.id, server.adminUrl);
    }
    return list.length;
  }

  /**
   * An admin action on a server's agent: over the channel when this replica holds it, else
   * straight to its advertised admin endpoint (signed). Another replica's channel is not
   * reachable from here, so without an endpoint the agent is unavailable from this replica.
   */
  async admin(serverId: string, action: AdminAction, deadlineMs = 5 * 60_000): Promise<unknown> {
    if (this.o.control.holds(serverId)) return this.o.control.admin(serverId, action, deadlineMs);
    const server = await this.o.servers.routing(serverId);
    if (!server?.adminUrl)
      throw new FlotillaError(
        "agent.unavailable",
        server && this.ownerAlive(server)
          ? `the agent of server ${serverId} is connected to another hub replica and advertises no admin endpoint; ask that replica, or start the agent with --admin-advertise-url`
          : `the agent of server ${serverId} is not connected; try again when it is online`,
      );
    const key = await this.o.servers.directKey(serverId);
    if (!key) throw new FlotillaError("resource.not_found", `server ${serverId} not found`);
    const method = action === "status" ? "GET" : "POST";
    const res = await this.o.http.call({
      method,
      url: new URL(`/${action}`, server.adminUrl).toString(),
      ...(method === "POST" ? { body: "{}" } : {}),
      deadlineMs,
      // Status is a read; drain, resume and reload are safe to repeat (they set a state).
      idempotent: true,
      sign: (m, path, text) => signDirect(key, m, path, text),
    });
    let answer: unknown;
    try {
      answer = JSON.parse(res.body);
    } catch {
      answer = res.body;
    }
    if (res.status !== 200)
      throw new FlotillaError(
        res.status === 401 ? "agent.unavailable" : "resource.conflict",
        `the agent refused ${action} (HTTP ${res.status}): ${(answer as { message?: string })?.message ?? ""}`.trim(),
      );
    return answer;
  }
}
