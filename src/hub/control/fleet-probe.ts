// The fleet view's prober for agents: over the control channel when this replica holds it, else
// at its advertised admin endpoint (signed, through the internal client), else from its heartbeat.
import type { FleetProber, FleetTarget, ProbeResult } from "../fleet/index.js";
import { HEARTBEAT_FRESHNESS_MS, type ServersService } from "../servers/index.js";
import type { ControlChannel } from "./channel.js";
import type { DispatchRouter } from "./router.js";

interface AgentStatus {
  version?: string;
  draining?: boolean;
  dispatches_in_flight?: number;
  instances?: unknown[];
}

export class AgentProber implements FleetProber {
  readonly kind = "agent";

  constructor(
    private readonly servers: ServersService,
    private readonly control: ControlChannel,
    private readonly router: DispatchRouter,
  ) {}

  async list(organizationId: string): Promise<FleetTarget[]> {
    return (await this.servers.listIn(organizationId)).map((s) => ({
      kind: "agent",
      id: s.id,
      name: s.name,
      lastHeartbeat: s.lastHeartbeat,
    }));
  }

  async probe(t: FleetTarget, deadlineMs: number): Promise<ProbeResult> {
    const held = this.control.holds(t.id);
    const server = held ? null : await this.servers.routing(t.id);
    if (!held && !server) return { health: "offline", probe: "none", detail: "server deleted" };
    if (!held && !server!.adminUrl) {
      const fresh =
        server!.status === "online" &&
        server!.lastHeartbeat !== null &&
        Date.now() - server!.lastHeartbeat.getTime() < HEARTBEAT_FRESHNESS_MS;
      return fresh
        ? {
            health: "online",
            probe: "heartbeat",
            detail: "held by another hub replica; it advertises no admin endpoint to probe",
            ...(server!.agentVersion ? { version: server!.agentVersion } : {}),
          }
        : { health: "offline", probe: "none" };
    }
    const probe = held ? "channel" : "direct";
    const started = performance.now();
    try {
      const s = (await this.router.admin(t.id, "status", deadlineMs)) as AgentStatus;
      return {
        health: s.draining ? "draining" : "ok",
        probe,
        latencyMs: Math.round((performance.now() - started) * 100) / 100,
        ...(s.version ? { version: s.version } : {}),
        instances: Array.isArray(s.instances) ? s.instances.length : 0,
        dispatchesInFlight: s.dispatches_in_flight ?? 0,
      };
    } catch (err) {
      return {
        health: "unreachable",
        probe,
        detail: (err as Error).message.slice(0, 500),
        latencyMs: Math.round((performance.now() - started) * 100) / 100,
      };
    }
  }
}
