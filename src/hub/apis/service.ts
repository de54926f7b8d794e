// APIs (RestApi, LlmProvider, LlmProxy), their consumer keys, their deployments to gateways, and
// the gateways' observed status per deployment.
import { createHash, randomBytes } from "node:crypto";
import {
  API_KINDS,
  type ApiKindName,
  actorLabel,
  type Caller,
  checkDefinition,
  checkId,
  checkSlug,
  type DeploymentContent,
  type ExpectedRow,
  expectedRowLine,
  FlotillaError,
  invalid,
  isUniqueViolation,
  isUuid,
  notFound,
  type RestApiDefinition,
  uuidv7,
} from "../../shared/index.js";
import type { Db, Queryable } from "../../store/index.js";
import { recordAudit } from "../audit/index.js";
import { appendEvent } from "../outbox/index.js";
import type { GatewayLookupPort, SealerPort, ServiceLookupPort } from "./ports.js";

export interface ConsumerKey {
  id: string;
  name: string;
  createdAt: Date;
}

export interface Api {
  id: string;
  organizationId: string;
  name: string;
  kind: ApiKindName;
  definition: unknown;
  hasCredential: boolean;
  providerApiId: string | null;
  consumerKeys: ConsumerKey[];
  createdAt: Date;
  updatedAt: Date;
}

export type DeploymentState = "DEPLOYED" | "UNDEPLOYED";

export interface ApiDeployment {
  deploymentId: string;
  apiId: string;
  apiName: string;
  kind: ApiKindName;
  gatewayId: string;
  state: DeploymentState;
  deployedAt: Date;
  observed: {
    status: string;
    reason: string | null;
    deploymentId: string;
    at: Date;
  } | null;
}

/** One row of a gateway's expected set, as the sync endpoint lists it. */
export interface ExpectedDeployment {
  apiId: string;
  deploymentId: string;
  kind: ApiKindName;
  state: DeploymentState;
  /** Milliseconds since the epoch (the column has millisecond precision). */
  deployedAt: number;
}

/** A gateway's report about one deployment (observed state). */
export interface GatewayReport {
  apiId: string;
  deploymentId: string;
  deployedAt: number;
  status: "deployed" | "undeployed" | "failed";
  reason?: string;
}

interface ApiRow {
  id: string;
  organization_id: string;
  name: string;
  kind: ApiKindName;
  definition: unknown;
  credential_sealed: Buffer | null;
  credential_key_id: string | null;
  provider_api_id: string | null;
  created_at: Date;
  updated_at: Date;
}

const API_COLUMNS =
  "id, organization_id, name, kind, definition, credential_sealed, credential_key_id, provider_api_id, created_at, updated_at";
const MAX_CREDENTIAL_BYTES = 4096;
/** Consumer keys per LlmProxy: every key's hash travels in the proxy's deployment content. */
const MAX_CONSUMER_KEYS = 1000;

const credentialAad = (apiId: string) => `api:${apiId}:credential`;

/** SHA-256 over the expected set's canonical lines sorted by api id: the gateway computes the same. */
export function configHash(set: ExpectedRow[]): string {
  const lines = set.map(expectedRowLine).sort();
  return createHash("sha256").update(lines.join("\n")).digest("hex");
}

export class ApisService {
  constructor(
    private readonly db: Db,
    private readonly sealer: SealerPort,
    private readonly gateways: GatewayLookupPort,
    private readonly services: ServiceLookupPort,
  ) {}

  private async rowFor(c: Caller, ref: string, q: Queryable, field = "api"): Promise<ApiRow> {
    if (!ref) throw invalid(field, "is required");
    const byId = isUuid(ref);
    const { rows } = await q.query<ApiRow>(
      `SELECT ${API_COLUMNS} FROM apis WHERE organization_id = $1 AND ${byId ? "id" : "name"} = $2`,
      [c.organizationId, byId ? checkId(field, ref) : ref],
    );
    if (!rows[0]) throw notFound(`API ${ref.slice(0, 60)}`);
    return rows[0];
  }

  private async toApi(q: Queryable, r: ApiRow): Promise<Api> {
    const { rows } = await q.query<{ id: string; name: string; created_at: Date }>(
      "SELECT id, name, created_at FROM api_consumer_keys WHERE api_id = $1 ORDER BY name",
      [r.id],
    );
    return {
      id: r.id,
      organizationId: r.organization_id,
      name: r.name,
      kind: r.kind,
      definition: r.definition,
      hasCredential: r.credential_sealed !== null,
      providerApiId: r.provider_api_id,
      consumerKeys: rows.map((k) => ({ id: k.id, name: k.name, createdAt: k.created_at })),
      createdAt: r.created_at,
      updatedAt: r.updated_at,
    };
  }

  async create(
    c: Caller,
    input: {
      name: string;
      kind: string;
      definitionJson: string;
      credential?: string;
      provider?: string;
    },
  ): Promise<Api> {
    const name = checkSlug("name", input.name);
    if (!API_KINDS.includes(input.kind as ApiKindName))
      throw invalid("kind", "must be REST_API, LLM_PROVIDER or LLM_PROXY");
    const kind = input.kind as ApiKindName;
    let raw: unknown;
    try {
      raw = JSON.parse(input.definitionJson);
    } catch {
      throw invalid("definition_json", "is not valid JSON");
    }
    const definition = checkDefinition(kind, raw, "definition_json");
    const credential = input.credential ?? "";
    if (kind === "LlmProvider") {
      if (!credential) throw invalid("credential", "an LlmProvider needs its upstream's API key");
      if (Buffer.byteLength(credential) > MAX_CREDENTIAL_BYTES)
        throw invalid("credential", `must be at most ${MAX_CREDENTIAL_BYTES} bytes`);
      if (/[\r\n]/.test(credential)) throw invalid("credential", "must be one line");
    } else if (credential) throw invalid("credential", "only an LlmProvider holds a credential");
    if (kind !== "LlmProxy" && input.provider)
      throw invalid("provider", "only an LlmProxy names a provider");
    if (kind === "LlmProxy" && !input.provider)
      throw invalid("provider", "an LlmProxy needs its LlmProvider's id or name");
    return this.db.tx(async (tx) => {
      if (kind === "RestApi") {
        const up = (definition as RestApiDefinition).upstream;
        if ("service" in up) {
          const target = await this.services.check(
            c,
            checkId("definition_json.upstream.service", up.service),
            tx,
            "definition_json.upstream.service",
          );
          // A managed database is never reachable through a gateway (issue 5): it speaks the
          // PostgreSQL protocol, not HTTP, and its credentials must not face the public side.
          if (target.kind === "database")
            throw invalid(
              "definition_json.upstream.service",
              "is a managed database: it cannot be an API's upstream; siblings reach it privately (flotilla db connect-info)",
            );
        }
      }
      let providerId: string | null = null;
      if (kind === "LlmProxy") {
        const p = await this.rowFor(c, input.provider ?? "", tx, "provider");
        if (p.kind !== "LlmProvider")
          throw invalid("provider", `${p.name} is a ${p.kind}, not an LlmProvider`);
        providerId = p.id;
      }
      const id = uuidv7();
      const sealed =
        kind === "LlmProvider" ? this.sealer.seal(credential, credentialAad(id)) : null;
      try {
        const { rows } = await tx.query<ApiRow>(
          `INSERT INTO apis (id, organization_id, name, kind, definition, credential_sealed, credential_key_id, provider_api_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ${API_COLUMNS}`,
          [
            id,
            c.organizationId,
            name,
            kind,
            JSON.stringify(definition),
            sealed?.sealed ?? null,
            sealed?.keyId ?? null,
            providerId,
          ],
        );
        await recordAudit(tx, {
          organizationId: c.organizationId,
          actor: c.actor,
          action: "api.create",
          target: { type: "api", id },
          details: { name, kind },
        });
        return this.toApi(tx, rows[0]!);
      } catch (err) {
        if (isUniqueViolation(err))
          throw new FlotillaError(
            "resource.already_exists",
            `an API named ${name} already exists`,
            {
              field: "name",
            },
          );
        throw err;
      }
    });
  }

  async list(c: Caller): Promise<Api[]> {
    const { rows } = await this.db.query<ApiRow>(
      `SELECT ${API_COLUMNS} FROM apis WHERE organization_id = $1 ORDER BY name`,
      [c.organizationId],
    );
    return Promise.all(rows.map((r) => this.toApi(this.db, r)));
  }

  async get(c: Caller, ref: string): Promise<Api> {
    return this.toApi(this.db, await this.rowFor(c, ref, this.db));
  }

  async remove(c: Caller, ref: string): Promise<void> {
    await this.db.tx(async (tx) => {
      const api = await this.rowFor(c, ref, tx);
      const { rows } = await tx.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM api_deployments WHERE api_id = $1 AND state = 'DEPLOYED'",
        [api.id],
      );
      if (rows[0]!.n > 0)
        throw new FlotillaError(
          "resource.in_use",
          `${api.name} is deployed on ${rows[0]!.n} gateway(s); undeploy it first`,
          { field: "api" },
        );
      const users = await tx.query<{ name: string }>(
        "SELECT name FROM apis WHERE provider_api_id = $1 ORDER BY name LIMIT 5",
        [api.id],
      );
      if (users.rows.length > 0)
        throw new FlotillaError(
          "resource.in_use",
          `${api.name} is the provider of ${users.rows.map((u) => u.name).join(", ")}; delete those first`,
          { field: "api" },
        );
      await tx.query("DELETE FROM api_deployment_status WHERE api_id = $1", [api.id]);
      await tx.query("DELETE FROM apis WHERE id = $1", [api.id]);
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "api.delete",
        target: { type: "api", id: api.id },
        details: { name: api.name },
      });
    });
  }

  async createConsumerKey(
    c: Caller,
    ref: string,
    keyName: string,
  ): Promise<{ consumerKey: ConsumerKey; key: string }> {
    const name = checkSlug("name", keyName);
    return this.db.tx(async (tx) => {
      const api = await this.rowFor(c, ref, tx);
      if (api.kind !== "LlmProxy")
        throw invalid("api", `${api.name} is a ${api.kind}; consumer keys belong to an LlmProxy`);
      const count = await tx.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM api_consumer_keys WHERE api_id = $1",
        [api.id],
      );
      if (count.rows[0]!.n >= MAX_CONSUMER_KEYS)
        throw new FlotillaError(
          "resource.conflict",
          `${api.name} already has ${MAX_CONSUMER_KEYS} consumer keys; delete unused ones`,
          { field: "api" },
        );
      const key = `fck_${randomBytes(32).toString("base64url")}`;
      const id = uuidv7();
      try {
        const { rows } = await tx.query<{ created_at: Date }>(
          `INSERT INTO api_consumer_keys (id, organization_id, api_id, name, key_hash)
           VALUES ($1, $2, $3, $4, $5) RETURNING created_at`,
          [id, c.organizationId, api.id, name, createHash("sha256").update(key).digest()],
        );
        await recordAudit(tx, {
          organizationId: c.organizationId,
          actor: c.actor,
          action: "api.consumer_key.create",
          target: { type: "api", id: api.id },
          details: { name },
        });
        // Gateways learn the new key with a redeploy of the proxy where it is deployed.
        await this.redeployEverywhere(tx, c, api);
        return { consumerKey: { id, name, createdAt: rows[0]!.created_at }, key };
      } catch (err) {
        if (isUniqueViolation(err))
          throw new FlotillaError(
            "resource.already_exists",
            `${api.name} already has a consumer key named ${name}`,
            { field: "name" },
          );
        throw err;
      }
    });
  }

  async deleteConsumerKey(c: Caller, ref: string, keyId: string): Promise<void> {
    const id = checkId("consumer_key_id", keyId);
    await this.db.tx(async (tx) => {
      const api = await this.rowFor(c, ref, tx);
      const { rowCount } = await tx.query(
        "DELETE FROM api_consumer_keys WHERE id = $1 AND api_id = $2",
        [id, api.id],
      );
      if (!rowCount) throw notFound(`consumer key ${id}`);
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "api.consumer_key.delete",
        target: { type: "api", id: api.id },
        details: { consumer_key_id: id },
      });
      await this.redeployEverywhere(tx, c, api);
    });
  }

  private async redeployEverywhere(tx: Queryable, c: Caller, api: ApiRow): Promise<void> {
    const { rows } = await tx.query<{ gateway_id: string }>(
      "SELECT gateway_id FROM api_deployments WHERE api_id = $1 AND state = 'DEPLOYED'",
      [api.id],
    );
    for (const r of rows) await this.writeDeployment(tx, c, api, r.gateway_id);
  }

  /** A new deployment id for (api, gateway); deployed_at moves forward by at least 1 ms. */
  private async writeDeployment(
    tx: Queryable,
    c: Caller,
    api: ApiRow,
    gatewayId: string,
  ): Promise<ApiDeployment> {
    const deploymentId = uuidv7();
    const content = {
      name: api.name,
      kind: api.kind,
      definition: api.definition,
      provider_api_id: api.provider_api_id,
    };
    const { rows } = await tx.query<DeploymentRow>(
      `INSERT INTO api_deployments (deployment_id, organization_id, api_id, gateway_id, state, deployed_at, content, created_by)
       VALUES ($1, $2, $3, $4, 'DEPLOYED', date_trunc('milliseconds', clock_timestamp()), $5, $6)
       ON CONFLICT (gateway_id, api_id) DO UPDATE SET
         deployment_id = excluded.deployment_id, state = 'DEPLOYED', content = excluded.content,
         created_by = excluded.created_by,
         deployed_at = greatest(excluded.deployed_at, api_deployments.deployed_at + interval '1 millisecond')
       RETURNING ${DEPLOYMENT_COLUMNS}`,
      [deploymentId, c.organizationId, api.id, gatewayId, JSON.stringify(content), actorLabel(c)],
    );
    const d = toDeployment(rows[0]!);
    await appendEvent(tx, {
      organizationId: c.organizationId,
      type: "api.deployed",
      subjectId: d.deploymentId,
      payload: eventPayload(d),
    });
    return d;
  }

  async deploy(c: Caller, apiRef: string, gatewayRef: string): Promise<ApiDeployment> {
    return this.db.tx(async (tx) => {
      const api = await this.rowFor(c, apiRef, tx);
      const gateway = await this.gateways.get(c, gatewayRef, tx, "gateway");
      // Serializes deploys of one API, so content and deployed_at advance together.
      await tx.query("SELECT id FROM apis WHERE id = $1 FOR UPDATE", [api.id]);
      const d = await this.writeDeployment(tx, c, api, gateway.id);
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "api.deploy",
        target: { type: "api", id: api.id },
        details: { gateway_id: gateway.id, deployment_id: d.deploymentId },
      });
      return d;
    });
  }

  async undeploy(c: Caller, apiRef: string, gatewayRef: string): Promise<ApiDeployment> {
    return this.db.tx(async (tx) => {
      const api = await this.rowFor(c, apiRef, tx);
      const gateway = await this.gateways.get(c, gatewayRef, tx, "gateway");
      const { rows } = await tx.query<DeploymentRow>(
        `UPDATE api_deployments d SET state = 'UNDEPLOYED',
           deployed_at = greatest(date_trunc('milliseconds', clock_timestamp()), d.deployed_at + interval '1 millisecond')
         WHERE d.api_id = $1 AND d.gateway_id = $2 AND d.state = 'DEPLOYED'
         RETURNING ${D_COLUMNS}`,
        [api.id, gateway.id],
      );
      if (!rows[0]) {
        const current = await this.listDeployments(c, { api: api.id, gateway: gateway.id }, tx);
        if (current[0]) return current[0]; // Already undeployed: idempotent, no event.
        throw notFound(`a deployment of ${api.name} on gateway ${gateway.name}`);
      }
      const d = toDeployment(rows[0]);
      await appendEvent(tx, {
        organizationId: c.organizationId,
        type: "api.undeployed",
        subjectId: d.deploymentId,
        payload: eventPayload(d),
      });
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "api.undeploy",
        target: { type: "api", id: api.id },
        details: { gateway_id: gateway.id, deployment_id: d.deploymentId },
      });
      return d;
    });
  }

  async listDeployments(
    c: Caller,
    filter: { api?: string; gateway?: string },
    q: Queryable = this.db,
  ): Promise<ApiDeployment[]> {
    const apiId = filter.api ? (await this.rowFor(c, filter.api, q)).id : null;
    const gatewayId = filter.gateway
      ? (await this.gateways.get(c, filter.gateway, q, "gateway")).id
      : null;
    const { rows } = await q.query<DeploymentRow & StatusColumns>(
      `SELECT ${D_COLUMNS},
              s.status AS observed_status, s.reason AS observed_reason,
              s.deployment_id AS observed_deployment_id, s.observed_at
       FROM api_deployments d JOIN apis a ON a.id = d.api_id
       LEFT JOIN api_deployment_status s ON s.gateway_id = d.gateway_id AND s.api_id = d.api_id
       WHERE d.organization_id = $1 AND ($2::uuid IS NULL OR d.api_id = $2) AND ($3::uuid IS NULL OR d.gateway_id = $3)
       ORDER BY d.deployed_at, d.deployment_id`,
      [c.organizationId, apiId, gatewayId],
    );
    return rows.map((r) => ({
      ...toDeployment(r),
      observed: r.observed_status
        ? {
            status: r.observed_status,
            reason: r.observed_reason,
            deploymentId: r.observed_deployment_id!,
            at: r.observed_at!,
          }
        : null,
    }));
  }

  // ---- The gateway sync path (authenticated by the gateway's token, not a user) ----

  /** The gateway's expected set, optionally only rows changed after `since` (ms). */
  async expectedFor(gatewayId: string, since: number | null): Promise<ExpectedDeployment[]> {
    const { rows } = await this.db.query<{
      api_id: string;
      deployment_id: string;
      kind: ApiKindName;
      state: DeploymentState;
      ms: string;
    }>(
      `SELECT d.api_id, d.deployment_id, a.kind, d.state,
              (extract(epoch FROM d.deployed_at) * 1000)::bigint::text AS ms
       FROM api_deployments d JOIN apis a ON a.id = d.api_id
       WHERE d.gateway_id = $1 AND ($2::timestamptz IS NULL OR d.deployed_at > $2)
       ORDER BY d.deployed_at, d.deployment_id`,
      [gatewayId, since === null ? null : new Date(since)],
    );
    return rows.map((r) => ({
      apiId: r.api_id,
      deploymentId: r.deployment_id,
      kind: r.kind,
      state: r.state,
      deployedAt: Number(r.ms),
    }));
  }

  /** Which of these deployment ids still exist for the gateway (in any state). */
  async existing(gatewayId: string, deploymentIds: string[]): Promise<string[]> {
    const { rows } = await this.db.query<{ deployment_id: string }>(
      "SELECT deployment_id FROM api_deployments WHERE gateway_id = $1 AND deployment_id = ANY($2::uuid[])",
      [gatewayId, deploymentIds],
    );
    return rows.map((r) => r.deployment_id);
  }

  /**
   * Content of the gateway's DEPLOYED deployments among these ids, secrets opened for transit.
   * Two queries per batch whatever its size (a sync of 10,000 is 200 batches of 50).
   */
  async contentFor(gatewayId: string, deploymentIds: string[]): Promise<DeploymentContent[]> {
    const { rows } = await this.db.query<{
      deployment_id: string;
      api_id: string;
      organization_id: string;
      content: {
        name: string;
        kind: ApiKindName;
        definition: unknown;
        provider_api_id: string | null;
      };
      credential_sealed: Buffer | null;
      credential_key_id: string | null;
      provider_id: string | null;
      provider_definition: { upstreamUrl: string; models: string[]; timeoutMs?: number } | null;
      provider_sealed: Buffer | null;
      provider_key_id: string | null;
    }>(
      `SELECT d.deployment_id, d.api_id, d.organization_id, d.content,
              a.credential_sealed, a.credential_key_id,
              p.id AS provider_id, p.definition AS provider_definition,
              p.credential_sealed AS provider_sealed, p.credential_key_id AS provider_key_id
       FROM api_deployments d JOIN apis a ON a.id = d.api_id
       LEFT JOIN apis p ON p.id = (d.content->>'provider_api_id')::uuid
       WHERE d.gateway_id = $1 AND d.deployment_id = ANY($2::uuid[]) AND d.state = 'DEPLOYED'
       ORDER BY d.deployment_id`,
      [gatewayId, deploymentIds],
    );
    const proxies = rows.filter((r) => r.content.kind === "LlmProxy").map((r) => r.api_id);
    const keys = new Map<string, string[]>();
    if (proxies.length) {
      const k = await this.db.query<{ api_id: string; key_hash: Buffer }>(
        "SELECT api_id, key_hash FROM api_consumer_keys WHERE api_id = ANY($1::uuid[]) ORDER BY id",
        [proxies],
      );
      for (const r of k.rows)
        keys.set(r.api_id, [
          ...(keys.get(r.api_id) ?? []),
          Buffer.from(r.key_hash).toString("hex"),
        ]);
    }
    const out: DeploymentContent[] = [];
    for (const r of rows) {
      const item: DeploymentContent = {
        apiId: r.api_id,
        deploymentId: r.deployment_id,
        name: r.content.name,
        kind: r.content.kind,
        definition: r.content.definition,
      };
      if (item.kind === "LlmProvider" && r.credential_sealed && r.credential_key_id)
        item.credential = this.sealer.open(
          r.credential_sealed,
          r.credential_key_id,
          credentialAad(r.api_id),
        );
      if (item.kind === "RestApi") {
        const up = (item.definition as RestApiDefinition).upstream;
        if (up && "service" in up) {
          const endpoint = await this.services.endpoint(r.organization_id, up.service);
          if (endpoint)
            item.resolvedUpstreamUrl = /^https?:\/\//.test(endpoint)
              ? endpoint
              : `http://${endpoint}`;
        }
      }
      if (item.kind === "LlmProxy") {
        const def = r.provider_definition;
        if (def && r.provider_id && r.provider_sealed && r.provider_key_id)
          item.provider = {
            upstreamUrl: def.upstreamUrl,
            models: def.models,
            credential: this.sealer.open(
              r.provider_sealed,
              r.provider_key_id,
              credentialAad(r.provider_id),
            ),
            ...(def.timeoutMs ? { timeoutMs: def.timeoutMs } : {}),
          };
        item.consumerKeyHashes = keys.get(r.api_id) ?? [];
      }
      out.push(item);
    }
    return out;
  }

  /**
   * Observed state, from the gateway's own reports only. A report about an older deployment
   * (smaller deployedAt) than the one already recorded changes nothing; reports about
   * deployments the gateway does not have are ignored. Returns how many rows changed.
   */
  async recordReports(gatewayId: string, reports: GatewayReport[]): Promise<number> {
    // One statement for the batch (500 round trips took ~150 ms of a pool connection and held
    // back a deploy's event behind a full sync's reports). ON CONFLICT may touch a row once per
    // statement, so a batch naming an API twice keeps what applying them in order would leave:
    // the last report among those with the latest deployedAt.
    const latest = new Map<string, GatewayReport>();
    for (const r of reports) {
      const kept = latest.get(r.apiId);
      if (!kept || kept.deployedAt <= r.deployedAt) latest.set(r.apiId, r);
    }
    if (latest.size === 0) return 0;
    const rows = [...latest.values()];
    const { rowCount } = await this.db.query(
      `INSERT INTO api_deployment_status (gateway_id, api_id, organization_id, deployment_id, observed_deployed_at, status, reason, observed_at)
       SELECT d.gateway_id, d.api_id, d.organization_id, r.deployment_id, r.deployed_at, r.status, r.reason, now()
       FROM unnest($2::uuid[], $3::uuid[], $4::timestamptz[], $5::text[], $6::text[])
         AS r (api_id, deployment_id, deployed_at, status, reason)
       JOIN api_deployments d ON d.gateway_id = $1 AND d.api_id = r.api_id
       ON CONFLICT (gateway_id, api_id) DO UPDATE SET
         deployment_id = excluded.deployment_id, observed_deployed_at = excluded.observed_deployed_at,
         status = excluded.status, reason = excluded.reason, observed_at = excluded.observed_at
       WHERE api_deployment_status.observed_deployed_at <= excluded.observed_deployed_at`,
      [
        gatewayId,
        rows.map((r) => r.apiId),
        rows.map((r) => r.deploymentId),
        rows.map((r) => new Date(r.deployedAt).toISOString()),
        rows.map((r) => r.status),
        // PostgreSQL text cannot hold NUL; a gateway's reason is free text.
        rows.map((r) => r.reason?.replaceAll("\0", "").slice(0, 1000) ?? null),
      ],
    );
    return rowCount ?? 0;
  }
}

interface DeploymentRow {
  deployment_id: string;
  api_id: string;
  api_name: string;
  gateway_id: string;
  state: DeploymentState;
  deployed_at: Date;
  content: { kind: ApiKindName };
}

interface StatusColumns {
  observed_status: string | null;
  observed_reason: string | null;
  observed_deployment_id: string | null;
  observed_at: Date | null;
}

const DEPLOYMENT_COLUMNS =
  "deployment_id, api_id, content->>'name' AS api_name, gateway_id, state, deployed_at, content";
const D_COLUMNS =
  "d.deployment_id, d.api_id, d.content->>'name' AS api_name, d.gateway_id, d.state, d.deployed_at, d.content";

function toDeployment(r: DeploymentRow): ApiDeployment {
  return {
    deploymentId: r.deployment_id,
    apiId: r.api_id,
    apiName: r.api_name,
    kind: r.content.kind,
    gatewayId: r.gateway_id,
    state: r.state,
    deployedAt: r.deployed_at,
    observed: null,
  };
}

/** Event payload: ids, state and the millisecond timestamp; never content or secrets. */
function eventPayload(d: ApiDeployment): Record<string, unknown> {
  return {
    gateway_id: d.gatewayId,
    api_id: d.apiId,
    deployment_id: d.deploymentId,
    kind: d.kind,
    state: d.state,
    deployed_at: d.deployedAt.getTime(),
  };
}
