// Public entry of the gateways module: gateways, their data plane, and token authentication.

export { customHostnames, type ServiceDomain, ServiceDomains } from "./domains.js";
export { GATEWAY_FRESHNESS_MS, GatewayProber, type GatewayStreamsPort } from "./fleet-probe.js";
export type { DataPlanePort } from "./ports.js";
export { GATEWAY_TOKEN_PREFIX, type Gateway, GatewaysService } from "./service.js";
export {
  type RouteFacts,
  routeHostname,
  ServiceRoutes,
  type ServiceRoutesPorts,
} from "./service-routes.js";
