// Ports the config module consumes: who owns the scope ids (environments and services).
import type { Caller } from "../../shared/index.js";
import type { Queryable } from "../../store/index.js";

export interface ScopesPort {
  /** Throws not-found unless the environment belongs to the caller's organization. */
  environment(c: Caller, id: string, q: Queryable): Promise<{ id: string }>;
  /** Throws not-found unless the service belongs to the caller's organization. */
  service(c: Caller, id: string, q: Queryable): Promise<{ id: string; environmentId: string }>;
}
