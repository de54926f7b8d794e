// Connect handlers for FleetService: the fleet health view (probed agents and gateways).
import type { ConnectRouter } from "@connectrpc/connect";
import { FleetService as FleetRpc } from "../../gen/flotilla/v1/fleet_pb.js";
import type { FleetService } from "../fleet/index.js";
import { caller, ts } from "./handler-context.js";

export function fleetRoutes(router: ConnectRouter, fleet: FleetService): void {
  router.service(FleetRpc, {
    async getFleetStatus(req, ctx) {
      const c = caller(ctx);
      const r = await fleet.status(c.organizationId, req.kinds, req.refresh);
      return {
        members: r.members.map((m) => ({
          kind: m.kind,
          id: m.id,
          name: m.name,
          health: m.health,
          probe: m.probe,
          detail: m.detail ?? "",
          latencyMs: m.latencyMs ?? 0,
          version: m.version ?? "",
          instances: m.instances ?? 0,
          dispatchesInFlight: m.dispatchesInFlight ?? 0,
          lastHeartbeat: ts(m.lastHeartbeat),
        })),
        probedAt: ts(r.probedAt),
        cached: r.cached,
      };
    },
  });
}
