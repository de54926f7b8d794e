// Ports the fleet module consumes: one prober per kind of member (agents, gateways). The
// composition root wires the agent prober to the servers module and the dispatch router, the
// gateway prober to the gateways module and this replica's gateway event streams.

/** One member of the fleet as the owning module lists it. */
export interface FleetTarget {
  kind: string;
  id: string;
  name: string;
  /** What is known without probing (affinity and heartbeat). */
  lastHeartbeat: Date | null;
}

export interface ProbeResult {
  health: "ok" | "draining" | "unreachable" | "online" | "offline";
  probe: "channel" | "direct" | "heartbeat" | "none";
  detail?: string;
  latencyMs?: number;
  version?: string;
  instances?: number;
  dispatchesInFlight?: number;
}

/** Lists and probes the members of one kind, for one organization. */
export interface FleetProber {
  kind: string;
  list(organizationId: string): Promise<FleetTarget[]>;
  /** Must settle within deadlineMs (the internal client enforces it for HTTP probes). */
  probe(target: FleetTarget, deadlineMs: number): Promise<ProbeResult>;
}
