// Public entry of the internal-calls module: the one HTTP client for hub -> agent (and later
// hub -> gateway) calls.
export {
  type InternalCall,
  type InternalClientOptions,
  InternalHttpClient,
  type InternalResponse,
} from "./client.js";
