// Ports the services module consumes; the composition root wires them to the projects and config modules.
import type { Caller } from "../../shared/index.js";
import type { Queryable } from "../../store/index.js";

export interface EnvironmentsPort {
  /** The environment, if it belongs to the caller's organization; otherwise throws not-found. */
  environment(
    c: Caller,
    environmentId: string,
    q: Queryable,
  ): Promise<{ id: string; projectId: string }>;
  /** A project id from an id or slug of the caller's organization; otherwise throws not-found. */
  projectId(c: Caller, ref: string, q: Queryable): Promise<string>;
}

export interface ConfigPort {
  /** The effective config version of a service: changes whenever its or its environment's config changes. */
  version(
    q: Queryable,
    organizationId: string,
    environmentId: string,
    serviceId: string,
  ): Promise<string>;
  /** Removes a service's own config, in the caller's transaction. */
  removeServiceConfig(tx: Queryable, organizationId: string, serviceId: string): Promise<void>;
  /**
   * Writes a service's config in the caller's transaction (a managed database's credentials):
   * variables as they are, secrets sealed. No audit of its own: the caller audits the create.
   */
  writeServiceConfig(
    tx: Queryable,
    organizationId: string,
    serviceId: string,
    entries: { variables: Record<string, string>; secrets: Record<string, string> },
  ): Promise<void>;
}

/** Where services run: servers are owned by the servers module. */
export interface PlacementPort {
  /** The server's id if it belongs to the caller's organization; otherwise throws not-found. */
  check(c: Caller, serverId: string, q: Queryable): Promise<string>;
  /** Where a service that names no server goes: the organization's only server, else none. */
  defaultServer(c: Caller, q: Queryable): Promise<string | null>;
  /** The drivers the server's agent reported ("exec", "docker"); empty when unknown. */
  drivers?(c: Caller, serverId: string, q: Queryable): Promise<string[]>;
}

export type LifecycleOp = "deploy" | "start" | "stop" | "restart" | "delete" | "job";

/** Durable intents for a server's agent, written in the caller's transaction. */
export interface DispatchPort {
  intend(
    tx: Queryable,
    d: {
      organizationId: string;
      serverId: string;
      serviceId: string;
      deploymentId: string | null;
      op: LifecycleOp;
      args: Record<string, unknown>;
    },
  ): Promise<string>;
}
