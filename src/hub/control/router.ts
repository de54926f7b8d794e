// route() for a dispatch, as ARCHITECTURE.md "Multi-replica hub" lays it out: local (this replica
// holds the agent's socket) -> forward (another live replica does; the NOTIFY written with the
// intent wakes it) -> direct (no live replica holds it, but the agent advertises an admin endpoint:
// deliver there, sealed and signed) -> undeliverable (stays pending, drained when the agent reconnects).
import {
  type AdminAction,
  AGENT_DIRECT_DISPATCH_PATH,
  contextFromRow,
  contextToFrame,
  DIRECT_ANSWER_SIGNATURE_HEADER,
  DIRECT_SIGNATURE_HEADER,
  FlotillaError,
  type Logger,
  openDirectAnswer,
  runWithContext,
  sealDirectRequest,
  signDirect,
  verifyDirectAnswer,
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
function directDeadlineMs(d: Pick<Dispatch, "op" | "args">): number {
  const timeoutMs = Number(d.args.timeout_ms);
  return d.op === "job" && Number.isFinite(timeoutMs) && timeoutMs > 0
    ? timeoutMs + 60_000
    : 300_000;
}

/**
 * The claim's lease outlives the HTTP call by this much (seconds), so the reaper never hands the
 * dispatch to another replica while this one still waits for the agent's answer: a minute covers
 * the release/complete round trip after the deadline and clock drift between hub and database.
 */
const DIRECT_LEASE_MARGIN_SECONDS = 60;

/** The claim's lease of a direct dispatch: its HTTP deadline plus the margin. */
export function directLeaseSeconds(d: Pick<Dispatch, "op" | "args">): number {
  return Math.ceil(directDeadlineMs(d) / 1000) + DIRECT_LEASE_MARGIN_SECONDS;
}

/** What an admin action answers, checked field by field: nothing else reaches the caller. */
const ADMIN_SHAPES: Record<AdminAction, (v: Record<string, unknown>) => unknown> = {
  status: (v) => {
    const instances = v.instances;
    if (
      typeof v.version !== "string" ||
      typeof v.server_id !== "string" ||
      typeof v.connected !== "boolean" ||
      typeof v.draining !== "boolean" ||
      typeof v.dispatches_in_flight !== "number" ||
      !Array.isArray(instances)
    )
      return undefined;
    const picked = [];
    for (const i of instances as Array<Record<string, unknown> | null>) {
      if (
        !i ||
        typeof i.serviceId !== "string" ||
        typeof i.deploymentId !== "string" ||
        typeof i.pid !== "number" ||
        typeof i.port !== "number"
      )
        return undefined;
      picked.push({
        serviceId: i.serviceId,
        deploymentId: i.deploymentId,
        pid: i.pid,
        port: i.port,
      });
    }
    return {
      version: v.version.slice(0, 64),
      server_id: v.server_id.slice(0, 64),
      connected: v.connected,
      draining: v.draining,
      dispatches_in_flight: v.dispatches_in_flight,
      instances: picked,
    };
  },
  drain: (v) =>
    typeof v.drained === "boolean" && typeof v.finished_in_flight === "number"
      ? { drained: v.drained, finished_in_flight: v.finished_in_flight }
      : undefined,
  resume: (v) => (typeof v.draining === "boolean" ? { draining: v.draining } : undefined),
  reload: (v) =>
    typeof v.reloaded === "boolean" &&
    typeof v.reconnecting === "boolean" &&
    typeof v.instances === "number"
      ? { reloaded: v.reloaded, reconnecting: v.reconnecting, instances: v.instances }
      : undefined,
};

/** The agent's own error code, when it is one of the short tokens it sends (never free text). */
function agentCode(body: string): string | undefined {
  try {
    const code = (JSON.parse(body) as { code?: unknown }).code;
    return typeof code === "string" && /^[a-z_.]{1,64}$/.test(code) ? code : undefined;
  } catch {
    return undefined;
  }
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
   * Claims the dispatch (compare-and-set, so one replica delivers it, with a lease longer than
   * the HTTP deadline), posts it sealed to the agent's admin endpoint, signed with the server's
   * derived key, and records the outcome only if the answer opens under that key and is bound
   * to this dispatch. A dispatch the agent never received, or whose answer does not verify,
   * goes back to pending (the agent's ledger answers a resend without running it again); one
   * whose answer was lost stays in progress for the sweep.
   */
  async deliverDirect(
    id: string,
    adminUrl: string,
  ): Promise<"done" | "failed" | "pending" | "lost"> {
    const pending = await this.o.dispatches.get(id).catch(() => null);
    if (pending?.state !== "pending") return "lost";
    const claimed = await this.o.dispatches.claim(id, this.o.hubId, directLeaseSeconds(pending));
    if (!claimed) return "lost";
    const holder = this.o.hubId;
    const deadlineMs = directDeadlineMs(claimed);
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
          holder,
          `could not prepare the dispatch: ${(err as Error).message}`,
        );
        return "failed";
      }
      const keys = await this.o.servers.directKeys(claimed.serverId);
      if (!keys) {
        await this.o.dispatches.fail(claimed.id, holder, "the server was deleted");
        return "failed";
      }
      const frame = JSON.stringify({
        v: 1,
        type: "dispatch",
        id: claimed.id,
        ctx: contextToFrame(ctx),
        op: claimed.op,
        service_id: claimed.serviceId,
        deployment_id: claimed.deploymentId,
        args,
      });
      // Sealed: the arguments hold decrypted secrets and the admin endpoint is plain HTTP.
      const body = sealDirectRequest(keys.sealing, AGENT_DIRECT_DISPATCH_PATH, frame);
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
          sign: (method, path, text) => signDirect(keys.signing, method, path, text),
        });
      } catch (err) {
        log.warn(
          { err, dispatch: claimed.id },
          "direct delivery failed; the dispatch waits for the agent",
        );
        // Not known to have reached the agent: back to pending (not an attempt); if it did
        // reach it, the ledger answers the next delivery.
        await this.o.dispatches.release(claimed.id, holder);
        return "pending";
      }
      if (res.status === 409) {
        await this.o.dispatches.release(claimed.id, holder);
        log.info({ dispatch: claimed.id }, "dispatch deferred by the agent");
        return "pending";
      }
      if (res.status !== 200) {
        await this.o.dispatches.release(claimed.id, holder);
        log.warn(
          { dispatch: claimed.id, status: res.status, code: agentCode(res.body) },
          "the agent refused a direct dispatch; it waits for the agent",
        );
        return "pending";
      }
      const opened = openDirectAnswer(keys.sealing, claimed.id, res.body);
      if ("refused" in opened) {
        // Forged or tampered on the path (or an agent without the sealing key): never recorded.
        // Back to pending: the next delivery is answered from the agent's ledger.
        await this.o.dispatches.release(claimed.id, holder);
        log.warn(
          { dispatch: claimed.id, refused: opened.refused },
          "a direct answer did not verify; the dispatch waits for the agent",
        );
        return "pending";
      }
      const answer = opened.outcome;
      const recorded = answer.ok
        ? await this.o.dispatches.complete(claimed.id, holder, answer.result ?? null)
        : await this.o.dispatches.fail(
            claimed.id,
            holder,
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
    const keys = await this.o.servers.directKeys(serverId);
    if (!keys) throw new FlotillaError("resource.not_found", `server ${serverId} not found`);
    const method = action === "status" ? "GET" : "POST";
    const res = await this.o.http.call({
      method,
      url: new URL(`/${action}`, server.adminUrl).toString(),
      ...(method === "POST" ? { body: "{}" } : {}),
      deadlineMs,
      // Status is a read; drain, resume and reload are safe to repeat (they set a state).
      idempotent: true,
      sign: (m, path, text) => signDirect(keys.signing, m, path, text),
    });
    // Signed by the agent for this very request: an answer forged or replayed on the path (plain
    // HTTP) is not taken, whatever it says.
    // (A 401 is the agent not taking our signature: it signs nothing back then, and a forged
    // one can only refuse, which dropping the request could do as well.)
    const requestSignature = res.signed[DIRECT_SIGNATURE_HEADER];
    if (
      res.status !== 401 &&
      (!requestSignature ||
        !verifyDirectAnswer(
          keys.signing,
          requestSignature,
          res.status,
          res.body,
          res.headers[DIRECT_ANSWER_SIGNATURE_HEADER],
        ))
    )
      throw new FlotillaError(
        "agent.unavailable",
        `the answer to ${action} from server ${serverId}'s admin endpoint is not signed by its agent`,
      );
    // The endpoint is whatever the agent advertised: none of its text reaches the caller, only
    // the fields an answer to this action has.
    if (res.status !== 200)
      throw new FlotillaError(
        res.status === 401 ? "agent.unavailable" : "resource.conflict",
        `the agent refused ${action} (HTTP ${res.status}${agentCode(res.body) ? `, ${agentCode(res.body)}` : ""})`,
      );
    let parsed: unknown;
    try {
      parsed = JSON.parse(res.body);
    } catch {}
    const answer =
      parsed && typeof parsed === "object" && !Array.isArray(parsed)
        ? ADMIN_SHAPES[action](parsed as Record<string, unknown>)
        : undefined;
    if (answer === undefined)
      throw new FlotillaError(
        "agent.unavailable",
        `the agent at server ${serverId}'s admin endpoint answered ${action} with something that is not its answer`,
      );
    return answer;
  }
}
