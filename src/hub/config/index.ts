// Public entry of the config module: variables and sealed secrets, effective config, key rotation.
export { parseDotenv } from "./dotenv.js";
export type { ScopesPort } from "./ports.js";
export { Keyring, loadOrCreateKeyFile, type MasterKey, masterKeyFrom } from "./sealer.js";
export {
  type ConfigEntry,
  type ConfigKind,
  ConfigService,
  type ConfigTarget,
  MAX_VALUE_BYTES,
  type ScopeType,
} from "./service.js";
