// Services and deployments: desired state from the API, observed state only from agent reports.
import {
  actorLabel,
  type Caller,
  checkId,
  checkName,
  checkSlug,
  FlotillaError,
  invalid,
  isUniqueViolation,
  notFound,
  slugFrom,
  uuidv7,
} from "../../shared/index.js";
import type { Db, Queryable } from "../../store/index.js";
import { recordAudit } from "../audit/index.js";
import { appendEvent } from "../outbox/index.js";
import type {
  ConfigPort,
  DispatchPort,
  EnvironmentsPort,
  LifecycleOp,
  PlacementPort,
} from "./ports.js";
import { checkSpec, type Driver, type ServiceSpec, type SpecInput } from "./spec.js";
import { CREDENTIAL_KEYS, generateCredentials, templateOf, templateSpec } from "./templates.js";

export type Visibility = "PUBLIC" | "PRIVATE";
export type ObservedStatus = "unknown" | "pending" | "deploying" | "running" | "stopped" | "failed";
export type DeploymentStatus =
  | "pending"
  | "deploying"
  | "running"
  | "failed"
  | "superseded"
  | "stopped";
export type DeploymentReason = "create" | "deploy" | "rollback" | "config_change";

export interface Service {
  id: string;
  projectId: string;
  environmentId: string;
  slug: string;
  name: string;
  kind: "app" | "database";
  templateId: string | null;
  visibility: Visibility;
  serverId: string | null;
  spec: ServiceSpec;
  desiredDeploymentId: string | null;
  observed: {
    status: ObservedStatus;
    reason: string | null;
    deploymentId: string | null;
    endpoint: string | null;
    observedAt: Date | null;
  };
  createdAt: Date;
  updatedAt: Date;
}

export interface Deployment {
  id: string;
  serviceId: string;
  number: number;
  spec: ServiceSpec;
  configVersion: string;
  reason: DeploymentReason;
  sourceDeploymentId: string | null;
  createdBy: string;
  createdAt: Date;
  status: DeploymentStatus;
  statusReason: string | null;
  endpoint: string | null;
  observedAt: Date | null;
  desired: boolean;
}

interface ServiceRow {
  id: string;
  project_id: string;
  environment_id: string;
  slug: string;
  name: string;
  kind: "app" | "database";
  template_id: string | null;
  visibility: Visibility;
  server_id: string | null;
  spec: ServiceSpec;
  desired_deployment_id: string | null;
  observed_status: ObservedStatus;
  observed_reason: string | null;
  observed_deployment_id: string | null;
  observed_endpoint: string | null;
  observed_at: Date | null;
  created_at: Date;
  updated_at: Date;
}

interface DeploymentRow {
  id: string;
  service_id: string;
  number: number;
  spec: ServiceSpec;
  config_version: string;
  reason: DeploymentReason;
  source_deployment_id: string | null;
  created_by: string;
  created_at: Date;
  status: DeploymentStatus;
  status_reason: string | null;
  endpoint: string | null;
  observed_at: Date | null;
  desired: boolean;
}

const SERVICE_COLUMNS = `id, project_id, environment_id, slug, name, kind, template_id, visibility, server_id, spec,
  desired_deployment_id, observed_status, observed_reason, observed_deployment_id, observed_endpoint, observed_at,
  created_at, updated_at`;

const DEPLOYMENT_COLUMNS = `d.id, d.service_id, d.number, d.spec, d.config_version, d.reason, d.source_deployment_id,
  d.created_by, d.created_at, d.status, d.status_reason, d.endpoint, d.observed_at,
  (s.desired_deployment_id = d.id) AS desired`;

function toService(r: ServiceRow): Service {
  return {
    id: r.id,
    projectId: r.project_id,
    environmentId: r.environment_id,
    slug: r.slug,
    name: r.name,
    kind: r.kind,
    templateId: r.template_id,
    visibility: r.visibility,
    serverId: r.server_id,
    spec: r.spec,
    desiredDeploymentId: r.desired_deployment_id,
    observed: {
      status: r.observed_status,
      reason: r.observed_reason,
      deploymentId: r.observed_deployment_id,
      endpoint: r.observed_endpoint,
      observedAt: r.observed_at,
    },
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

function toDeployment(r: DeploymentRow): Deployment {
  return {
    id: r.id,
    serviceId: r.service_id,
    number: r.number,
    spec: r.spec,
    configVersion: r.config_version,
    reason: r.reason,
    sourceDeploymentId: r.source_deployment_id,
    createdBy: r.created_by,
    createdAt: r.created_at,
    status: r.status,
    statusReason: r.status_reason,
    endpoint: r.endpoint,
    observedAt: r.observed_at,
    desired: Boolean(r.desired),
  };
}

function checkVisibility(v: Visibility | undefined): Visibility {
  if (v !== "PUBLIC" && v !== "PRIVATE") throw invalid("visibility", "must be PUBLIC or PRIVATE");
  return v;
}

export interface CreateServiceInput {
  environmentId: string;
  name: string;
  slug: string;
  visibility: Visibility | undefined;
  serverId: string;
  spec: SpecInput | undefined;
  deployNow: boolean;
}

export interface CreateDatabaseInput {
  environmentId: string;
  name: string;
  slug: string;
  templateId: string;
  serverId: string;
  deployNow: boolean;
  /** Unset: docker when the server reports a Docker engine, else exec. */
  driver: Driver | undefined;
}

const DATABASE_IS_PRIVATE = () =>
  new FlotillaError(
    "validation.failed",
    "visibility: a managed database is never PUBLIC; its siblings reach it privately (connect-info shows how)",
    { field: "visibility" },
  );

export interface UpdateServiceInput {
  name: string;
  visibility: Visibility | undefined;
  serverId: string;
  spec: SpecInput | undefined;
}

/** What an agent reports about a deployment it runs (written by the agent-report path only). */
export interface Observation {
  /** When set (an agent's report), only a service placed on this server is affected. */
  serverId?: string;
  serviceId: string;
  deploymentId: string;
  status: Exclude<ObservedStatus, "unknown">;
  reason?: string;
  endpoint?: string;
}

// Statuses in which a service counts as running for "refuse to delete while running".
const ACTIVE_STATUSES = ["pending", "deploying", "running"];

/** No servers: services are recorded but not placed (this module's own tests). */
export const NO_PLACEMENT: PlacementPort = {
  check: async (_c, id) => id,
  defaultServer: async () => null,
};
export const NO_DISPATCH: DispatchPort = { intend: async () => "" };

/** What the agent needs to run a deployment; secrets are added by the hub when it sends it. */
function runArgs(service: Service, deployment: { id: string; spec: ServiceSpec }) {
  return {
    service: {
      id: service.id,
      slug: service.slug,
      visibility: service.visibility,
      environment_id: service.environmentId,
    },
    deployment: { id: deployment.id, spec: deployment.spec },
  };
}

export class ServicesService {
  constructor(
    private readonly db: Db,
    private readonly environments: EnvironmentsPort,
    private readonly config: ConfigPort,
    private readonly placement: PlacementPort = NO_PLACEMENT,
    private readonly dispatch: DispatchPort = NO_DISPATCH,
  ) {}

  async createService(
    c: Caller,
    input: CreateServiceInput,
  ): Promise<{ service: Service; deployment: Deployment | null }> {
    const name = checkName("name", input.name);
    const slug = input.slug ? checkSlug("slug", input.slug) : slugFrom(name, "service");
    const visibility = checkVisibility(input.visibility);
    const requestedServer = input.serverId ? checkId("server_id", input.serverId) : null;
    const spec = checkSpec(input.spec);
    return this.db.tx(async (tx) => {
      const env = await this.environments.environment(c, input.environmentId, tx);
      const serverId = await this.placeOn(c, requestedServer, tx);
      const service = await this.insertService(tx, c, env, {
        slug,
        name,
        kind: "app",
        templateId: null,
        visibility,
        serverId,
        spec,
      });
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "service.create",
        target: { type: "service", id: service.id },
        details: { slug, visibility, driver: spec.driver },
      });
      await appendEvent(tx, {
        organizationId: c.organizationId,
        type: "service.created",
        subjectId: service.id,
        payload: { service_id: service.id, environment_id: env.id, slug, visibility },
      });
      const deployment = input.deployNow
        ? await this.insertDeployment(tx, c, service, spec, "create", null)
        : null;
      if (deployment) service.desiredDeploymentId = deployment.id;
      return { service, deployment };
    });
  }

  /**
   * A managed database from the catalogue: the template fixes image, port and volume, the
   * service is PRIVATE, credentials come from the CSPRNG; the row, its config (the password
   * sealed, through the config port) and the first deployment commit together or not at all.
   */
  async createDatabase(
    c: Caller,
    input: CreateDatabaseInput,
  ): Promise<{ service: Service; deployment: Deployment | null }> {
    const name = checkName("name", input.name);
    const slug = input.slug ? checkSlug("slug", input.slug) : slugFrom(name, "db");
    if (!input.templateId) throw invalid("template_id", "is required (e.g. postgres16)");
    const template = templateOf(input.templateId);
    const requestedServer = input.serverId ? checkId("server_id", input.serverId) : null;
    if (input.driver !== undefined && input.driver !== "exec" && input.driver !== "docker")
      throw invalid("driver", "must be exec or docker");
    return this.db.tx(async (tx) => {
      const env = await this.environments.environment(c, input.environmentId, tx);
      const serverId = await this.placeOn(c, requestedServer, tx);
      const reported =
        serverId && this.placement.drivers ? await this.placement.drivers(c, serverId, tx) : [];
      const driver: Driver = input.driver ?? (reported.includes("docker") ? "docker" : "exec");
      const spec = templateSpec(template, driver);
      const service = await this.insertService(tx, c, env, {
        slug,
        name,
        kind: "database",
        templateId: template.id,
        visibility: "PRIVATE",
        serverId,
        spec,
      });
      const credentials = generateCredentials(slug);
      await this.config.writeServiceConfig(tx, c.organizationId, service.id, {
        variables: {
          [CREDENTIAL_KEYS.user]: credentials.user,
          [CREDENTIAL_KEYS.database]: credentials.database,
        },
        secrets: { [CREDENTIAL_KEYS.password]: credentials.password },
      });
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "service.create_database",
        target: { type: "service", id: service.id },
        // Never the password: the audit says which keys were written, not their values.
        details: {
          slug,
          template_id: template.id,
          driver,
          user: credentials.user,
          database: credentials.database,
          config_keys: Object.values(CREDENTIAL_KEYS),
        },
      });
      await appendEvent(tx, {
        organizationId: c.organizationId,
        type: "service.created",
        subjectId: service.id,
        payload: {
          service_id: service.id,
          environment_id: env.id,
          slug,
          visibility: "PRIVATE",
          kind: "database",
          template_id: template.id,
        },
      });
      const deployment = input.deployNow
        ? await this.insertDeployment(tx, c, service, spec, "create", null)
        : null;
      if (deployment) service.desiredDeploymentId = deployment.id;
      return { service, deployment };
    });
  }

  private async placeOn(c: Caller, requested: string | null, tx: Queryable) {
    return requested
      ? await this.placement.check(c, requested, tx)
      : await this.placement.defaultServer(c, tx);
  }

  private async insertService(
    tx: Queryable,
    c: Caller,
    env: { id: string; projectId: string },
    row: {
      slug: string;
      name: string;
      kind: "app" | "database";
      templateId: string | null;
      visibility: Visibility;
      serverId: string | null;
      spec: ServiceSpec;
    },
  ): Promise<Service> {
    try {
      const { rows } = await tx.query<ServiceRow>(
        `INSERT INTO services (id, organization_id, project_id, environment_id, slug, name, kind, template_id, visibility, server_id, spec)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING ${SERVICE_COLUMNS}`,
        [
          uuidv7(),
          c.organizationId,
          env.projectId,
          env.id,
          row.slug,
          row.name,
          row.kind,
          row.templateId,
          row.visibility,
          row.serverId,
          JSON.stringify(row.spec),
        ],
      );
      return toService(rows[0]!);
    } catch (err) {
      if (isUniqueViolation(err)) {
        throw new FlotillaError(
          "resource.already_exists",
          `a service with slug "${row.slug}" already exists in this environment`,
          { field: "slug" },
        );
      }
      throw err;
    }
  }

  async listServices(
    c: Caller,
    filter: { project: string; environmentId: string },
  ): Promise<Service[]> {
    const projectId = filter.project
      ? await this.environments.projectId(c, filter.project, this.db)
      : null;
    const environmentId = filter.environmentId
      ? checkId("environment_id", filter.environmentId)
      : null;
    const { rows } = await this.db.query<ServiceRow>(
      `SELECT ${SERVICE_COLUMNS} FROM services
       WHERE organization_id = $1 AND ($2::uuid IS NULL OR project_id = $2::uuid) AND ($3::uuid IS NULL OR environment_id = $3::uuid)
       ORDER BY slug`,
      [c.organizationId, projectId, environmentId],
    );
    return rows.map(toService);
  }

  async getService(
    c: Caller,
    idText: string,
    q: Queryable = this.db,
    field = "service_id",
  ): Promise<Service> {
    const id = checkId(field, idText);
    const { rows } = await q.query<ServiceRow>(
      `SELECT ${SERVICE_COLUMNS} FROM services WHERE id = $1 AND organization_id = $2`,
      [id, c.organizationId],
    );
    if (!rows[0]) throw notFound(`service ${id}`);
    return toService(rows[0]);
  }

  /** The service, its effective config version, and whether config changed since the desired deployment. */
  async describeService(c: Caller, idText: string) {
    const service = await this.getService(c, idText);
    const version = await this.config.version(
      this.db,
      c.organizationId,
      service.environmentId,
      service.id,
    );
    let configChanged = false;
    if (service.desiredDeploymentId) {
      const { rows } = await this.db.query<{ config_version: string }>(
        "SELECT config_version FROM deployments WHERE id = $1",
        [service.desiredDeploymentId],
      );
      configChanged = rows[0]?.config_version !== version;
    }
    return { service, configVersion: version, configChanged };
  }

  async updateService(c: Caller, idText: string, input: UpdateServiceInput): Promise<Service> {
    const name = checkName("name", input.name);
    const visibility = checkVisibility(input.visibility);
    const requestedServer = input.serverId ? checkId("server_id", input.serverId) : null;
    const spec = checkSpec(input.spec);
    return this.db.tx(async (tx) => {
      const current = await this.getService(c, idText, tx);
      let newSpec = spec;
      if (current.kind === "database") {
        if (visibility !== "PRIVATE") throw DATABASE_IS_PRIVATE();
        // The template fixes the spec: the request may only repeat it (as `services update`
        // does when it changes the name or server).
        const { template, ...fixed } = current.spec;
        if (JSON.stringify(checkSpec(fixed)) !== JSON.stringify(spec))
          throw new FlotillaError(
            "resource.conflict",
            `spec: ${current.slug} is a managed database; its spec is fixed by template ${current.templateId}`,
            { field: "spec" },
          );
        newSpec = { ...spec, ...(template ? { template } : {}) };
      }
      const serverId = requestedServer ? await this.placement.check(c, requestedServer, tx) : null;
      const { rows } = await tx.query<ServiceRow>(
        `UPDATE services SET name = $3, visibility = $4, server_id = $5, spec = $6, updated_at = now()
         WHERE id = $1 AND organization_id = $2 RETURNING ${SERVICE_COLUMNS}`,
        [current.id, c.organizationId, name, visibility, serverId, JSON.stringify(newSpec)],
      );
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "service.update",
        target: { type: "service", id: current.id },
        details: { name, visibility, driver: spec.driver },
      });
      await appendEvent(tx, {
        organizationId: c.organizationId,
        type: "service.updated",
        subjectId: current.id,
        payload: { service_id: current.id, name, visibility },
      });
      return toService(rows[0]!);
    });
  }

  /** Deletes the service; its agent removes the instance, and its volumes too when purgeData. */
  async deleteService(c: Caller, idText: string, purgeData = false): Promise<void> {
    await this.db.tx(async (tx) => {
      const service = await this.getService(c, idText, tx);
      // The agent stops and removes the instance; the intent outlives the service row.
      if (service.serverId)
        await this.dispatch.intend(tx, {
          organizationId: c.organizationId,
          serverId: service.serverId,
          serviceId: service.id,
          deploymentId: service.desiredDeploymentId,
          op: "delete",
          args: { purge_data: purgeData },
        });
      await this.config.removeServiceConfig(tx, c.organizationId, service.id);
      await tx.query("DELETE FROM services WHERE id = $1 AND organization_id = $2", [
        service.id,
        c.organizationId,
      ]);
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "service.delete",
        target: { type: "service", id: service.id },
        details: { slug: service.slug, purge_data: purgeData },
      });
      await appendEvent(tx, {
        organizationId: c.organizationId,
        type: "service.deleted",
        subjectId: service.id,
        payload: { service_id: service.id, slug: service.slug },
      });
    });
  }

  /** A new deployment from the current spec and effective config; it becomes the desired one. */
  async deploy(
    c: Caller,
    serviceIdText: string,
    reason: "deploy" | "config_change" = "deploy",
  ): Promise<Deployment> {
    return this.db.tx(async (tx) => {
      const service = await this.lockService(tx, c, serviceIdText);
      return this.insertDeployment(tx, c, service, service.spec, reason, null);
    });
  }

  /** A new deployment made from an earlier one's spec (the one before the desired one by default). */
  async rollback(c: Caller, serviceIdText: string, deploymentIdText: string): Promise<Deployment> {
    return this.db.tx(async (tx) => {
      const service = await this.lockService(tx, c, serviceIdText);
      let source: Deployment | undefined;
      if (deploymentIdText) {
        const id = checkId("deployment_id", deploymentIdText);
        source = await this.findDeployment(tx, c, id);
        if (!source) throw notFound(`deployment ${id}`);
        if (source.serviceId !== service.id) {
          throw new FlotillaError(
            "resource.conflict",
            `deployment ${id} belongs to another service; roll back to one of ${service.slug}'s deployments`,
            { field: "deployment_id" },
          );
        }
      } else {
        const { rows } = await tx.query<DeploymentRow>(
          `SELECT ${DEPLOYMENT_COLUMNS} FROM deployments d JOIN services s ON s.id = d.service_id
           WHERE d.service_id = $1 AND d.organization_id = $2
             AND d.number < coalesce((SELECT number FROM deployments WHERE id = s.desired_deployment_id), 2147483647)
           ORDER BY d.number DESC LIMIT 1`,
          [service.id, c.organizationId],
        );
        if (!rows[0]) {
          throw new FlotillaError(
            "resource.conflict",
            `${service.slug} has no earlier deployment to roll back to`,
            {
              field: "deployment_id",
            },
          );
        }
        source = toDeployment(rows[0]);
      }
      return this.insertDeployment(tx, c, service, source.spec, "rollback", source.id);
    });
  }

  /** A one-off command in the service's context, on its server; returns the job's dispatch id. */
  async runJob(
    c: Caller,
    serviceIdText: string,
    input: { command: string; args: string[]; timeoutSeconds: number },
  ): Promise<string> {
    if (!input.command) throw invalid("command", "is required");
    if (input.command.length > 4096 || input.command.includes("\0"))
      throw invalid("command", "must be at most 4096 characters, without NUL bytes");
    if (input.args.length > 256) throw invalid("args", "must have at most 256 items");
    input.args.forEach((a, i) => {
      if (a.length > 4096 || a.includes("\0"))
        throw invalid(`args[${i}]`, "must be at most 4096 characters, without NUL bytes");
    });
    const timeout = input.timeoutSeconds || 600;
    if (!Number.isInteger(timeout) || timeout < 1 || timeout > 3600)
      throw invalid("timeout_seconds", "must be from 1 to 3600");
    return this.db.tx(async (tx) => {
      const service = await this.getService(c, serviceIdText, tx);
      if (!service.serverId)
        throw new FlotillaError(
          "resource.conflict",
          `${service.slug} is not placed on a server, so there is nowhere to run a job`,
          { field: "service_id" },
        );
      const id = await this.dispatch.intend(tx, {
        organizationId: c.organizationId,
        serverId: service.serverId,
        serviceId: service.id,
        deploymentId: service.desiredDeploymentId,
        op: "job",
        args: {
          service: {
            id: service.id,
            slug: service.slug,
            visibility: service.visibility,
            environment_id: service.environmentId,
          },
          command: input.command,
          args: input.args,
          cwd: service.spec.exec?.workingDirectory ?? "",
          timeout_ms: timeout * 1000,
        },
      });
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "service.run_job",
        target: { type: "service", id: service.id },
        details: { job_id: id, command: input.command, args: input.args.length },
      });
      return id;
    });
  }

  /** Start, stop or restart the desired deployment on the service's server. */
  async lifecycle(c: Caller, serviceIdText: string, op: Exclude<LifecycleOp, "deploy" | "delete">) {
    return this.db.tx(async (tx) => {
      const service = await this.lockService(tx, c, serviceIdText);
      if (!service.serverId)
        throw new FlotillaError(
          "resource.conflict",
          `${service.slug} is not placed on a server; add one with flotilla servers add, then update the service`,
          { field: "service_id" },
        );
      const desired = service.desiredDeploymentId
        ? await this.findDeployment(tx, c, service.desiredDeploymentId)
        : undefined;
      if (!desired && op !== "stop")
        throw new FlotillaError(
          "resource.conflict",
          `${service.slug} has never been deployed; deploy it first`,
          {
            field: "service_id",
          },
        );
      await this.dispatch.intend(tx, {
        organizationId: c.organizationId,
        serverId: service.serverId,
        serviceId: service.id,
        deploymentId: desired?.id ?? null,
        op,
        args: desired ? runArgs(service, desired) : {},
      });
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: `service.${op}`,
        target: { type: "service", id: service.id },
        details: { deployment_id: desired?.id ?? null },
      });
      await appendEvent(tx, {
        organizationId: c.organizationId,
        type: `service.${op}_requested`,
        subjectId: service.id,
        payload: { service_id: service.id, deployment_id: desired?.id ?? null },
      });
      return service;
    });
  }

  async listDeployments(c: Caller, serviceIdText: string, limit: number): Promise<Deployment[]> {
    const n = limit || 20;
    if (!Number.isInteger(n) || n < 1 || n > 200)
      throw invalid("limit", "must be between 1 and 200");
    const service = await this.getService(c, serviceIdText);
    const { rows } = await this.db.query<DeploymentRow>(
      `SELECT ${DEPLOYMENT_COLUMNS} FROM deployments d JOIN services s ON s.id = d.service_id
       WHERE d.service_id = $1 AND d.organization_id = $2 ORDER BY d.number DESC LIMIT $3`,
      [service.id, c.organizationId, n],
    );
    return rows.map(toDeployment);
  }

  async getDeployment(c: Caller, idText: string): Promise<Deployment> {
    const id = checkId("deployment_id", idText);
    const found = await this.findDeployment(this.db, c, id);
    if (!found) throw notFound(`deployment ${id}`);
    return found;
  }

  /**
   * The agent-report path: the only writer of observed columns. A report about a deployment
   * that is no longer the desired one updates that deployment's row but never the service's
   * observed state, so a late report cannot overwrite a newer truth.
   */
  async recordObservation(organizationId: string, o: Observation): Promise<{ applied: boolean }> {
    return this.db.tx(async (tx) => {
      const d = await tx.query<{ id: string }>(
        `UPDATE deployments SET status = $4, status_reason = $5, endpoint = coalesce($6, endpoint), observed_at = now()
         WHERE id = $1 AND service_id = $2 AND organization_id = $3
           AND ($7::uuid IS NULL OR EXISTS (SELECT 1 FROM services s WHERE s.id = $2 AND s.server_id = $7::uuid))
         RETURNING id`,
        [
          o.deploymentId,
          o.serviceId,
          organizationId,
          o.status,
          o.reason ?? null,
          o.endpoint ?? null,
          o.serverId ?? null,
        ],
      );
      if (!d.rows[0]) return { applied: false };
      const s = await tx.query<{ id: string }>(
        `UPDATE services SET observed_status = $4, observed_reason = $5, observed_deployment_id = $3,
                observed_endpoint = coalesce($6, observed_endpoint), observed_at = now()
         WHERE id = $1 AND organization_id = $2 AND desired_deployment_id = $3 RETURNING id`,
        [
          o.serviceId,
          organizationId,
          o.deploymentId,
          o.status,
          o.reason ?? null,
          o.endpoint ?? null,
        ],
      );
      const applied = Boolean(s.rows[0]);
      // Once the desired deployment runs, the ones it replaced no longer do.
      if (applied && o.status === "running")
        await tx.query(
          `UPDATE deployments SET status = 'superseded', observed_at = now()
           WHERE service_id = $1 AND organization_id = $2 AND id <> $3
             AND status IN ('pending', 'deploying', 'running')`,
          [o.serviceId, organizationId, o.deploymentId],
        );
      if (applied) {
        await appendEvent(tx, {
          organizationId,
          type: "service.status_changed",
          subjectId: o.serviceId,
          payload: {
            service_id: o.serviceId,
            deployment_id: o.deploymentId,
            status: o.status,
            reason: o.reason ?? null,
          },
        });
      }
      return { applied };
    });
  }

  /** Names of services in a project or environment that are running or being deployed. */
  async runningIn(
    q: Queryable,
    organizationId: string,
    scope: { projectId: string } | { environmentId: string },
  ) {
    const [column, id] =
      "projectId" in scope
        ? ["project_id", scope.projectId]
        : ["environment_id", scope.environmentId];
    const { rows } = await q.query<{ slug: string }>(
      `SELECT slug FROM services WHERE organization_id = $1 AND ${column} = $2 AND observed_status = ANY($3) ORDER BY slug`,
      [organizationId, id, ACTIVE_STATUSES],
    );
    return rows.map((r) => r.slug);
  }

  /** Removes every service (and its config) in a project or environment, in the caller's transaction. */
  async removeIn(
    tx: Queryable,
    organizationId: string,
    scope: { projectId: string } | { environmentId: string },
  ) {
    const [column, id] =
      "projectId" in scope
        ? ["project_id", scope.projectId]
        : ["environment_id", scope.environmentId];
    const { rows } = await tx.query<{ id: string }>(
      `DELETE FROM services WHERE organization_id = $1 AND ${column} = $2 RETURNING id`,
      [organizationId, id],
    );
    for (const r of rows) await this.config.removeServiceConfig(tx, organizationId, r.id);
  }

  private async lockService(tx: Queryable, c: Caller, idText: string): Promise<Service> {
    const id = checkId("service_id", idText);
    // FOR UPDATE: two concurrent deploys get consecutive numbers instead of a unique violation.
    const { rows } = await tx.query<ServiceRow>(
      `SELECT ${SERVICE_COLUMNS} FROM services WHERE id = $1 AND organization_id = $2 FOR UPDATE`,
      [id, c.organizationId],
    );
    if (!rows[0]) throw notFound(`service ${id}`);
    return toService(rows[0]);
  }

  private async findDeployment(
    q: Queryable,
    c: Caller,
    id: string,
  ): Promise<Deployment | undefined> {
    const { rows } = await q.query<DeploymentRow>(
      `SELECT ${DEPLOYMENT_COLUMNS} FROM deployments d JOIN services s ON s.id = d.service_id
       WHERE d.id = $1 AND d.organization_id = $2`,
      [id, c.organizationId],
    );
    return rows[0] ? toDeployment(rows[0]) : undefined;
  }

  private async insertDeployment(
    tx: Queryable,
    c: Caller,
    service: Service,
    spec: ServiceSpec,
    reason: DeploymentReason,
    sourceId: string | null,
  ): Promise<Deployment> {
    const configVersion = await this.config.version(
      tx,
      c.organizationId,
      service.environmentId,
      service.id,
    );
    const { rows } = await tx.query<DeploymentRow>(
      `INSERT INTO deployments (id, organization_id, service_id, number, spec, config_version, reason, source_deployment_id, created_by)
       VALUES ($1, $2, $3, (SELECT coalesce(max(number), 0) + 1 FROM deployments WHERE service_id = $3), $4, $5, $6, $7, $8)
       RETURNING id, service_id, number, spec, config_version, reason, source_deployment_id, created_by, created_at,
                 status, status_reason, endpoint, observed_at, true AS desired`,
      [
        uuidv7(),
        c.organizationId,
        service.id,
        JSON.stringify(spec),
        configVersion,
        reason,
        sourceId,
        actorLabel(c),
      ],
    );
    const deployment = toDeployment(rows[0]!);
    await tx.query(
      "UPDATE services SET desired_deployment_id = $2, updated_at = now() WHERE id = $1",
      [service.id, deployment.id],
    );
    // Durable first: the agent's intent commits with the deployment, or neither does.
    if (service.serverId)
      await this.dispatch.intend(tx, {
        organizationId: c.organizationId,
        serverId: service.serverId,
        serviceId: service.id,
        deploymentId: deployment.id,
        op: "deploy",
        args: runArgs(service, deployment),
      });
    await recordAudit(tx, {
      organizationId: c.organizationId,
      actor: c.actor,
      action: reason === "rollback" ? "deployment.rollback" : "deployment.create",
      target: { type: "deployment", id: deployment.id },
      details: {
        service: service.slug,
        number: deployment.number,
        reason,
        source_deployment_id: sourceId,
        config_version: configVersion,
      },
    });
    await appendEvent(tx, {
      organizationId: c.organizationId,
      type: "deployment.created",
      subjectId: deployment.id,
      payload: {
        service_id: service.id,
        number: deployment.number,
        reason,
        config_version: configVersion,
        source_deployment_id: sourceId,
      },
    });
    return deployment;
  }
}
