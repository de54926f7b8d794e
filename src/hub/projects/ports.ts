// Ports the projects module consumes; the composition root wires them to other modules.
import type { Queryable } from "../../store/index.js";

export type Scope = { projectId: string } | { environmentId: string };

/** What lives inside projects and environments (services and their config), owned by other modules. */
export interface DependentsPort {
  /** Names of services in the scope that are running or being deployed. */
  running(tx: Queryable, organizationId: string, scope: Scope): Promise<string[]>;
  /** Removes everything that lives in an environment (services, config), in the caller's transaction. */
  removeEnvironment(tx: Queryable, organizationId: string, environmentId: string): Promise<void>;
}
