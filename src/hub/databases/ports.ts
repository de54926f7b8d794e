// Ports the databases module consumes; the composition root wires them to services, config and dispatches.
import type { Caller } from "../../shared/index.js";
import type { Queryable } from "../../store/index.js";

/** What this module needs to know of a service (owned by the services module). */
export interface DatabaseService {
  id: string;
  slug: string;
  environmentId: string;
  kind: "app" | "database";
  templateId: string | null;
  serverId: string | null;
  driver: "exec" | "docker";
  /** The port the template listens on (docker: inside the environment network). */
  port: number;
  desiredDeploymentId: string | null;
  observed: { status: string; endpoint: string | null };
}

export interface ServicesPort {
  /** The service if it belongs to the caller's organization; otherwise throws not-found. */
  get(c: Caller, serviceId: string, q: Queryable): Promise<DatabaseService>;
}

export interface CredentialsPort {
  /** The POSTGRES_USER and POSTGRES_DB variables of the service. */
  names(c: Caller, serviceId: string): Promise<{ user: string; database: string }>;
  /** Decrypts POSTGRES_PASSWORD for a caller allowed to reveal it; audited as config.reveal. */
  revealPassword(c: Caller, serviceId: string): Promise<string>;
}

export interface JobState {
  state: "pending" | "in_progress" | "done" | "failed";
  result: unknown;
  error: string | null;
}

/** Jobs are dispatches (owned by the servers module), written in the caller's transaction. */
export interface JobsPort {
  intend(
    tx: Queryable,
    d: {
      organizationId: string;
      serverId: string;
      serviceId: string;
      deploymentId: string | null;
      args: Record<string, unknown>;
    },
  ): Promise<string>;
  state(q: Queryable, dispatchId: string): Promise<JobState | null>;
}
