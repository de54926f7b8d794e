// Public entry of the servers module: enrolment, affinity and liveness, and dispatches.
export {
  DISPATCH_CHANNEL,
  DISPATCH_DONE_CHANNEL,
  type Dispatch,
  type DispatchState,
  DispatchStore,
  type NewDispatch,
} from "./dispatch.js";
export { dataPlaneOfServer } from "./placement.js";
export type { SecretSealer } from "./ports.js";
export {
  HEARTBEAT_FRESHNESS_MS,
  JOIN_TOKEN_PREFIX,
  type Server,
  ServersService,
} from "./service.js";
