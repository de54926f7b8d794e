// The fleet view's prober for gateways: a WebSocket ping when this replica holds the gateway's
// event stream, else its last authenticated request (gateways expose no endpoint the hub can reach).
import type { FleetProber, FleetTarget, ProbeResult } from "../fleet/index.js";
import type { GatewaysService } from "./service.js";

/** What the gateway prober needs from the replica's gateway event streams (GatewaySync). */
export interface GatewayStreamsPort {
  /**
   * A ping on this replica's event stream of the gateway: the round trip in ms and the version the
   * gateway named; null if no stream of it is held here.
   */
  ping(
    gatewayId: string,
    deadlineMs: number,
  ): Promise<{ latencyMs: number; version: string | undefined } | null>;
}

/**
 * A gateway stamps last_seen_at on every authenticated request; its config-hash check alone
 * comes every 30 s by default, so three missed checks (90 s) mean it is gone.
 */
export const GATEWAY_FRESHNESS_MS = 90_000;

export class GatewayProber implements FleetProber {
  readonly kind = "gateway";

  constructor(
    private readonly gateways: GatewaysService,
    private readonly streams: GatewayStreamsPort,
  ) {}

  async list(organizationId: string): Promise<FleetTarget[]> {
    const reader = { organizationId, actor: { type: "token" as const, id: "fleet" } };
    return (await this.gateways.list(reader)).map((g) => ({
      kind: "gateway",
      id: g.id,
      name: g.name,
      lastHeartbeat: g.lastSeenAt,
    }));
  }

  async probe(t: FleetTarget, deadlineMs: number): Promise<ProbeResult> {
    let pong: Awaited<ReturnType<GatewayStreamsPort["ping"]>>;
    try {
      pong = await this.streams.ping(t.id, deadlineMs);
    } catch (err) {
      return { health: "unreachable", probe: "channel", detail: (err as Error).message };
    }
    if (pong !== null)
      return {
        health: "ok",
        probe: "channel",
        latencyMs: Math.round(pong.latencyMs * 100) / 100,
        ...(pong.version ? { version: pong.version } : {}),
      };
    const seen = t.lastHeartbeat;
    if (seen && Date.now() - seen.getTime() < GATEWAY_FRESHNESS_MS)
      return {
        health: "online",
        probe: "heartbeat",
        detail:
          "its event stream is held by another hub replica; a gateway has no endpoint the hub can probe",
      };
    return {
      health: "offline",
      probe: "none",
      detail: seen ? `last seen ${seen.toISOString()}` : "has never connected",
    };
  }
}
