// Public entry of the internal-calls module: the one HTTP client for hub -> agent (and later
// hub -> gateway) calls.
export {
  DEFAULT_MAX_RESPONSE_BYTES,
  type InternalCall,
  type InternalClientOptions,
  InternalHttpClient,
  type InternalResponse,
  InternalResponseTooLarge,
} from "./client.js";
