// Ports the apis module consumes: sealing (config module's keyring), gateways and services lookups.
import type { Caller } from "../../shared/index.js";
import type { Queryable } from "../../store/index.js";

/** Seals and opens secrets at rest; the composition root wires the config module's keyring. */
export interface SealerPort {
  seal(plaintext: string, aad: string): { sealed: Buffer; keyId: string };
  open(sealed: Buffer | Uint8Array, keyId: string, aad: string): string;
}

export interface GatewayLookupPort {
  /** A gateway by id or name in the caller's organization; throws not-found otherwise. */
  get(c: Caller, ref: string, q: Queryable, field: string): Promise<{ id: string; name: string }>;
}

export interface ServiceLookupPort {
  /** Throws not-found unless the service belongs to the caller's organization; kind "database" is a managed database. */
  check(c: Caller, id: string, q: Queryable, field: string): Promise<{ id: string; kind: string }>;
  /** The service's observed endpoint (host:port or URL) as its agent reports it, or null. */
  endpoint(organizationId: string, serviceId: string): Promise<string | null>;
}
