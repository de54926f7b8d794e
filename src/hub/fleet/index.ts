// Public entry of the fleet module: the fleet health view and the prober port each kind of
// member (agents, gateways) implements.
export type { FleetProber, FleetTarget, ProbeResult } from "./ports.js";
export {
  type FleetMember,
  type FleetOptions,
  FleetService,
  type FleetStatus,
} from "./service.js";
