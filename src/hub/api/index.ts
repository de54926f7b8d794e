// Public entry of the hub's API layer: routes, the authorization interceptor and the rule table.

export { type ApisRouteOptions, apisRoutes } from "./apis-routes.js";
export {
  contextResponseHeaders,
  createAuthInterceptor,
  kIncoming,
  kPrincipal,
  kRemoteAddr,
  RPC_RULES,
  type Rule,
  SERVICES,
} from "./authz.js";
export { configRoutes } from "./config-routes.js";
export { toConnectError } from "./connect-errors.js";
export {
  type ConnectOnFastifyOptions,
  connectOnFastify,
  type DirectUnary,
} from "./connect-fastify.js";
export { type DatabasesRouteOptions, databasesRoutes } from "./databases-routes.js";
export { type DataPlanesRouteOptions, dataPlanesRoutes } from "./dataplanes-routes.js";
export { eventsRoutes } from "./events-routes.js";
export { fleetRoutes } from "./fleet-routes.js";
export { GatewaySync, type GatewaySyncOptions } from "./gateway-sync-routes.js";
export { type IdentityRouteOptions, identityRoutes } from "./identity-routes.js";
export { projectRoutes } from "./projects-routes.js";
export { type ServersRouteOptions, serversRoutes } from "./servers-routes.js";
export { type LogSource, type ServicesRouteOptions, servicesRoutes } from "./services-routes.js";
