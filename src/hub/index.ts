// Public entry of the hub: start one hub replica on PostgreSQL or the embedded store.
export { RPC_RULES, type Rule, SERVICES, toConnectError } from "./api/index.js";
export { Keyring, loadOrCreateKeyFile, type MasterKey, masterKeyFrom } from "./config/index.js";
export { type ProvisionerConfig, parseProvisionersOption } from "./dataplanes/index.js";
export {
  CAPABILITIES,
  type Capability,
  ROLES,
  type RoleName,
  SessionCodec,
} from "./identity/index.js";
export {
  DEFAULT_MAX_BODY_BYTES,
  type Hub,
  type HubOptions,
  openStore,
  rotateMasterKey,
  type StoreOptions,
  startHub,
} from "./server.js";
