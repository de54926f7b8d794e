// Connect handlers for ServerService: join tokens, servers, and their dispatches.
import type { ConnectRouter } from "@connectrpc/connect";
import { AgentAction, ServerService as ServerRpc } from "../../gen/flotilla/v1/servers_pb.js";
import { type Caller, invalid } from "../../shared/index.js";
import { hasCapability } from "../identity/index.js";
import type { Dispatch, DispatchStore, Server, ServersService } from "../servers/index.js";
import { caller, principal, ts } from "./handler-context.js";

const server = (s: Server) => ({
  id: s.id,
  name: s.name,
  status: s.status,
  connectedHubId: s.connectedHubId ?? "",
  connectedAt: ts(s.connectedAt),
  lastHeartbeat: ts(s.lastHeartbeat),
  agentVersion: s.agentVersion ?? "",
  drivers: s.drivers,
  cores: s.cores ?? 0,
  memoryBytes: BigInt(s.memoryBytes ?? 0),
  diskFreeBytes: BigInt(s.diskFreeBytes ?? 0),
  createdAt: ts(s.createdAt),
});

const dispatch = (d: Dispatch) => ({
  id: d.id,
  serverId: d.serverId,
  serviceId: d.serviceId ?? "",
  deploymentId: d.deploymentId ?? "",
  op: d.op,
  state: d.state,
  attempts: d.attempts,
  error: d.error ?? "",
  resultJson: d.result === null || d.result === undefined ? "" : JSON.stringify(d.result),
  correlationId: d.correlationId,
  createdAt: ts(d.createdAt),
  updatedAt: ts(d.updatedAt),
});

const ACTIONS = new Map<AgentAction, "drain" | "resume" | "reload">([
  [AgentAction.DRAIN, "drain"],
  [AgentAction.RESUME, "resume"],
  [AgentAction.RELOAD, "reload"],
]);

export interface ServersRouteOptions {
  /** Asks a server's agent, over the control channel this replica holds. */
  agentAdmin(serverId: string, action: "status" | "drain" | "resume" | "reload"): Promise<unknown>;
  servers: ServersService;
  dispatches: DispatchStore;
  /** Records an operator's action on a server in the audit log. */
  audit(c: Caller, action: string, serverId: string): Promise<void>;
  /** How a new server reaches this hub, for the printed join command. */
  hubUrl: () => string;
}

export function serversRoutes(router: ConnectRouter, o: ServersRouteOptions): void {
  router.service(ServerRpc, {
    async createJoinToken(req, ctx) {
      const r = await o.servers.createJoinToken(caller(ctx), req.name, Number(req.ttlSeconds));
      return {
        token: r.token,
        expiresAt: ts(r.expiresAt),
        command: `npx flotilla agent --hub ${o.hubUrl()} --join-token ${r.token} --data-dir /var/lib/flotilla-agent`,
      };
    },
    async listServers(_req, ctx) {
      return { servers: (await o.servers.list(caller(ctx))).map(server) };
    },
    async getServer(req, ctx) {
      return { server: server(await o.servers.get(caller(ctx), req.server)) };
    },
    async deleteServer(req, ctx) {
      await o.servers.remove(caller(ctx), req.server);
      return {};
    },
    async getAgentStatus(req, ctx) {
      const s = await o.servers.get(caller(ctx), req.server);
      return { statusJson: JSON.stringify(await o.agentAdmin(s.id, "status")) };
    },
    async controlAgent(req, ctx) {
      const action = ACTIONS.get(req.action);
      if (!action) throw invalid("action", "must be DRAIN, RESUME or RELOAD");
      const c = caller(ctx);
      const s = await o.servers.get(c, req.server);
      const result = await o.agentAdmin(s.id, action);
      await o.audit(c, `server.${action}`, s.id);
      return { resultJson: JSON.stringify(result) };
    },
    async listDispatches(req, ctx) {
      const c = caller(ctx);
      const s = await o.servers.get(c, req.server);
      // Results (a job's output) only for callers who may read logs.
      const withResults = hasCapability(principal(ctx).role, "logs.read");
      const list = await o.dispatches.listFor(c.organizationId, s.id, req.limit);
      return {
        dispatches: list.map((d) => ({
          ...dispatch(d),
          resultJson: withResults ? dispatch(d).resultJson : "",
        })),
      };
    },
  });
}
