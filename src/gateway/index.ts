// Public entry of the gateway process: an edge proxy that serves from its local store and syncs with its hub.
export { type Gateway, type GatewayOptions, startGateway } from "./gateway.js";
export { ConfigStore, compileRoute, type Route, RouteTable } from "./routes.js";
export { LocalStore, type StoredRow } from "./store.js";
export { HubSync, type HubSyncOptions, type ReconcileResult } from "./sync.js";
