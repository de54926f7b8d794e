// Private links of a data plane: rows with a stable id, user-owned config validated per provider, and controller-owned status.
import {
  type Caller,
  checkId,
  FlotillaError,
  hasControlCharacter,
  invalid,
  isUniqueViolation,
  notFound,
  uuidv7,
} from "../../shared/index.js";
import type { Db, Queryable } from "../../store/index.js";
import { recordAudit } from "../audit/index.js";
import { appendEvent } from "../outbox/index.js";
import type { DataPlane, DataPlanesService } from "./service.js";

export const PROVIDERS = ["aws", "azure", "gcp"] as const;
export type Provider = (typeof PROVIDERS)[number];
export const LINK_STATUSES = ["pending", "provisioned", "failed"] as const;
export type LinkStatus = (typeof LINK_STATUSES)[number];
export type LinkConfig = Record<string, unknown>;

export const DUPLICATE_IDENTITY =
  "a private link with this service identity already exists on this data plane";

/** What a link's service identity is read from, per provider (the generated column agrees). */
export const IDENTITY_FIELD: Record<Provider, string> = {
  aws: "service_name",
  azure: "service_name",
  gcp: "service_attachment",
};

export interface PrivateLink {
  id: string;
  dataPlaneId: string;
  provider: Provider;
  config: LinkConfig;
  serviceIdentity: string;
  generation: number;
  status: LinkStatus;
  details: Record<string, unknown> | null;
  error: string | null;
  observedAt: Date | null;
  createdAt: Date;
}

interface LinkRow {
  id: string;
  data_plane_id: string;
  provider: Provider;
  config: LinkConfig;
  service_identity: string;
  generation: number;
  status: LinkStatus;
  details: Record<string, unknown> | null;
  error: string | null;
  observed_at: Date | null;
  created_at: Date;
}

export const LINK_COLUMNS =
  "id, data_plane_id, provider, config, service_identity, generation, status, details, error, observed_at, created_at";

export const toLink = (r: LinkRow): PrivateLink => ({
  id: r.id,
  dataPlaneId: r.data_plane_id,
  provider: r.provider,
  config: r.config,
  serviceIdentity: r.service_identity,
  generation: Number(r.generation),
  status: r.status,
  details: r.details,
  error: r.error,
  observedAt: r.observed_at,
  createdAt: r.created_at,
});

// ---- config validation, one schema per provider (ARCHITECTURE.md "Private links") ----

type FieldKind = "string" | "strings" | "boolean";
interface FieldSpec {
  kind: FieldKind;
  required: boolean;
  /** For strings: the longest value accepted. */
  max?: number;
  pattern?: RegExp;
  hint?: string;
}

// Cloud names are short: AWS region/AZ ids are < 20 characters, a GCP service attachment path
// about 150; 255 leaves room without letting a config row grow unbounded (the table caps it at 16 KiB).
const REGION = /^[a-z]{2,}(-[a-z0-9]+)+$/;
const AZ_ID = /^[a-z]{2,}[0-9]?-az[0-9]+$/;
const NO_SPACES = /^\S+$/;
const DNS_NAME =
  /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.?$/i;

const SCHEMAS: Record<Provider, Record<string, FieldSpec>> = {
  aws: {
    region: { kind: "string", required: true, max: 64, pattern: REGION, hint: "e.g. us-east-1" },
    az_ids: {
      kind: "strings",
      required: true,
      max: 32,
      pattern: AZ_ID,
      hint: "availability zone ids, e.g. use1-az1",
    },
    service_name: {
      kind: "string",
      required: true,
      max: 255,
      pattern: NO_SPACES,
      hint: "the endpoint service name, e.g. com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0",
    },
    service_region: {
      kind: "string",
      required: false,
      max: 64,
      pattern: REGION,
      hint: "e.g. us-west-2",
    },
  },
  azure: {
    service_name: {
      kind: "string",
      required: true,
      max: 255,
      pattern: NO_SPACES,
      hint: "the private link service alias or resource id",
    },
    location: {
      kind: "string",
      required: true,
      max: 64,
      pattern: /^[a-z0-9]+$/,
      hint: "e.g. eastus",
    },
    dns_name: { kind: "string", required: false, max: 253, pattern: DNS_NAME },
    resource_type: {
      kind: "string",
      required: false,
      max: 255,
      pattern: NO_SPACES,
      hint: "e.g. Microsoft.Sql/servers",
    },
  },
  gcp: {
    service_attachment: {
      kind: "string",
      required: true,
      max: 255,
      pattern: /^projects\/[^/\s]+\/regions\/[^/\s]+\/serviceAttachments\/[^/\s]+$/,
      hint: "projects/PROJECT/regions/REGION/serviceAttachments/NAME",
    },
    region: { kind: "string", required: true, max: 64, pattern: REGION, hint: "e.g. us-central1" },
    dns_zone_name: {
      kind: "string",
      required: true,
      max: 253,
      pattern: DNS_NAME,
      hint: "e.g. example.internal.",
    },
    dns_record_names: { kind: "strings", required: true, max: 253, pattern: DNS_NAME },
    all_ports: { kind: "boolean", required: false },
  },
};

/** Most entries a list field accepts (AZ ids, DNS records): more is a mistake, not a config. */
const MAX_LIST = 32;

export function checkProvider(value: string, field = "provider"): Provider {
  if (!(PROVIDERS as readonly string[]).includes(value))
    throw invalid(field, `"${value.slice(0, 40)}" is not a provider: use aws, azure or gcp`);
  return value as Provider;
}

function checkString(path: string, value: unknown, spec: FieldSpec): string {
  if (typeof value !== "string") throw invalid(path, `must be a string, not ${typeName(value)}`);
  if (!value.trim()) throw invalid(path, "must not be empty");
  if (value.length > (spec.max ?? 255))
    throw invalid(path, `must be at most ${spec.max ?? 255} characters`);
  if (hasControlCharacter(value)) throw invalid(path, "must not contain control characters");
  if (spec.pattern && !spec.pattern.test(value))
    throw invalid(
      path,
      `"${value.slice(0, 80)}" is not valid${spec.hint ? ` (${spec.hint})` : ""}`,
    );
  return value;
}

const typeName = (v: unknown) => (v === null ? "null" : Array.isArray(v) ? "an array" : typeof v);

/**
 * The config for a link of this provider, checked field by field: each failure is a
 * validation.failed naming `config.<field>` (and `[i]` for a list entry). Returns a copy with
 * only the known fields.
 */
export function checkLinkConfig(provider: Provider, config: unknown): LinkConfig {
  if (config === null || config === undefined) throw invalid("config", "is required");
  if (typeof config !== "object" || Array.isArray(config))
    throw invalid("config", `must be an object, not ${typeName(config)}`);
  const schema = SCHEMAS[provider];
  const given = config as Record<string, unknown>;
  for (const key of Object.keys(given)) {
    if (!(key in schema))
      throw invalid(
        `config.${key.slice(0, 60)}`,
        `is not a field of an ${provider} link (fields: ${Object.keys(schema).join(", ")})`,
      );
  }
  const out: LinkConfig = {};
  for (const [key, spec] of Object.entries(schema)) {
    const path = `config.${key}`;
    const value = given[key];
    if (value === undefined || value === null) {
      if (spec.required) throw invalid(path, `is required for an ${provider} link`);
      continue;
    }
    if (spec.kind === "string") out[key] = checkString(path, value, spec);
    else if (spec.kind === "boolean") {
      if (typeof value !== "boolean")
        throw invalid(path, `must be true or false, not ${typeName(value)}`);
      out[key] = value;
    } else {
      if (!Array.isArray(value))
        throw invalid(path, `must be a list of strings, not ${typeName(value)}`);
      if (value.length === 0) throw invalid(path, "must list at least one entry");
      if (value.length > MAX_LIST) throw invalid(path, `must list at most ${MAX_LIST} entries`);
      const items = value.map((v, i) => checkString(`${path}[${i}]`, v, spec));
      const dup = items.find((v, i) => items.indexOf(v) !== i);
      if (dup !== undefined) throw invalid(path, `lists "${dup.slice(0, 80)}" twice`);
      out[key] = items;
    }
  }
  return out;
}

export interface ConvergeState {
  /** Changes recorded for this data plane so far, and how many the last finished converge covered. */
  requested: number;
  converged: number;
  convergedAt: Date | null;
  /** The last converge's failure (the provisioner crashed, timed out, or is not configured). */
  lastError: string | null;
  attempts: number;
  nextAttemptAt: Date | null;
}

/** The domain event each audited action appends to the outbox. */
const EVENT_OF = {
  "private_link.add": "private_link.added",
  "private_link.update": "private_link.updated",
  "private_link.remove": "private_link.removed",
} as const;

export interface PlaneState {
  provisioner: string;
  converge: ConvergeState;
}

/** Locks a data plane's row (FOR NO KEY UPDATE: link inserts' foreign-key checks still pass). */
export async function lockDataPlane(tx: Queryable, dataPlaneId: string): Promise<void> {
  await tx.query("SELECT 1 FROM data_planes WHERE id = $1 FOR NO KEY UPDATE", [dataPlaneId]);
}

/** Links of data planes: list, add, update, remove. Data planes are resolved through DataPlanesService. */
export class PrivateLinksService {
  constructor(
    private readonly db: Db,
    private readonly planes: DataPlanesService,
  ) {}

  /**
   * The data plane, its row locked for the rest of the transaction. Link changes and the
   * controller's status write (which updates every link of the plane in one statement) take it
   * first, so they serialize per data plane: without it a change of link B to link A's identity
   * waited on the controller's new version of A while the controller waited on B's lock, and
   * PostgreSQL broke the deadlock by failing the user's request (seen in CI).
   */
  private async lockedPlane(c: Caller, ref: string, tx: Queryable): Promise<DataPlane> {
    const plane = await this.planes.get(c, ref, tx);
    await lockDataPlane(tx, plane.id);
    return plane;
  }

  async list(c: Caller, dataPlaneRef: string): Promise<{ plane: DataPlane; links: PrivateLink[] }> {
    const plane = await this.planes.get(c, dataPlaneRef);
    const { rows } = await this.db.query<LinkRow>(
      `SELECT ${LINK_COLUMNS} FROM data_plane_private_links WHERE data_plane_id = $1
       ORDER BY created_at, id`,
      [plane.id],
    );
    return { plane, links: rows.map(toLink) };
  }

  async add(
    c: Caller,
    input: { dataPlane: string; provider: string; config: unknown },
  ): Promise<PrivateLink> {
    const provider = checkProvider(input.provider);
    const config = checkLinkConfig(provider, input.config);
    return this.db.tx(async (tx) => {
      const plane = await this.lockedPlane(c, input.dataPlane, tx);
      try {
        const { rows } = await tx.query<LinkRow>(
          `INSERT INTO data_plane_private_links (id, data_plane_id, provider, config)
           VALUES ($1, $2, $3, $4) RETURNING ${LINK_COLUMNS}`,
          [uuidv7(), plane.id, provider, JSON.stringify(config)],
        );
        const link = toLink(rows[0]!);
        await this.audit(tx, c, "private_link.add", link, plane);
        return link;
      } catch (err) {
        throw duplicateOr(err, provider);
      }
    });
  }

  /**
   * Replaces a link's config (and optionally its provider). A different config is a new
   * generation: status resets to pending until the controller observes it. The same config
   * changes nothing. expectedGeneration, when given, must match (compare-and-set).
   */
  async update(
    c: Caller,
    input: {
      dataPlane: string;
      id: string;
      config: unknown;
      provider?: string;
      expectedGeneration?: number;
    },
  ): Promise<PrivateLink> {
    const id = checkId("id", input.id);
    const providerGiven = input.provider ? checkProvider(input.provider) : undefined;
    return this.db.tx(async (tx) => {
      const plane = await this.lockedPlane(c, input.dataPlane, tx);
      const { rows: found } = await tx.query<LinkRow>(
        `SELECT ${LINK_COLUMNS} FROM data_plane_private_links WHERE id = $1 AND data_plane_id = $2
         FOR UPDATE`,
        [id, plane.id],
      );
      const current = found[0];
      if (!current) throw notFound(`private link ${id} on data plane ${plane.name}`);
      if (
        input.expectedGeneration !== undefined &&
        input.expectedGeneration !== Number(current.generation)
      )
        throw new FlotillaError(
          "resource.conflict",
          `the link is at generation ${current.generation}, not ${input.expectedGeneration}: someone changed it meanwhile; list it again and retry`,
          { field: "expected_generation" },
        );
      const provider = providerGiven ?? current.provider;
      const config = checkLinkConfig(provider, input.config);
      try {
        const { rows } = await tx.query<LinkRow>(
          `UPDATE data_plane_private_links SET provider = $2, config = $3 WHERE id = $1
           RETURNING ${LINK_COLUMNS}`,
          [id, provider, JSON.stringify(config)],
        );
        const link = toLink(rows[0]!);
        if (link.generation !== Number(current.generation))
          await this.audit(tx, c, "private_link.update", link, plane);
        return link;
      } catch (err) {
        throw duplicateOr(err, provider);
      }
    });
  }

  async remove(c: Caller, input: { dataPlane: string; id: string }): Promise<void> {
    const id = checkId("id", input.id);
    await this.db.tx(async (tx) => {
      const plane = await this.lockedPlane(c, input.dataPlane, tx);
      const { rows } = await tx.query<LinkRow>(
        `DELETE FROM data_plane_private_links WHERE id = $1 AND data_plane_id = $2
         RETURNING ${LINK_COLUMNS}`,
        [id, plane.id],
      );
      if (!rows[0]) throw notFound(`private link ${id} on data plane ${plane.name}`);
      await this.audit(tx, c, "private_link.remove", toLink(rows[0]), plane);
    });
  }

  /**
   * Per data plane: its provisioner and the controller's progress (requested/converged are 0 for a
   * data plane whose links never changed: nothing to converge).
   */
  async planeStates(planeIds: string[], q: Queryable = this.db): Promise<Map<string, PlaneState>> {
    if (planeIds.length === 0) return new Map();
    const { rows } = await q.query<{
      id: string;
      provisioner: string;
      requested: number | null;
      converged: number | null;
      converged_at: Date | null;
      last_error: string | null;
      attempts: number | null;
      next_attempt_at: Date | null;
    }>(
      `SELECT p.id, p.provisioner, r.requested, r.converged, r.converged_at, r.last_error,
              r.attempts, r.next_attempt_at
       FROM data_planes p LEFT JOIN data_plane_converge_requests r ON r.data_plane_id = p.id
       WHERE p.id = ANY($1::uuid[])`,
      [planeIds],
    );
    return new Map(
      rows.map((r) => [
        r.id,
        {
          provisioner: r.provisioner,
          converge: {
            requested: Number(r.requested ?? 0),
            converged: Number(r.converged ?? 0),
            convergedAt: r.converged_at,
            lastError: r.last_error,
            attempts: r.attempts ?? 0,
            nextAttemptAt: r.next_attempt_at,
          },
        },
      ]),
    );
  }

  /** The audit row and the domain event (private_link.add -> private_link.added) of a change. */
  private async audit(
    tx: Queryable,
    c: Caller,
    action: keyof typeof EVENT_OF,
    link: PrivateLink,
    plane: DataPlane,
  ) {
    // Identities and provider only: a link's config names cloud resources, never secrets, but
    // the rows stay small either way.
    const facts = {
      data_plane: plane.name,
      data_plane_id: plane.id,
      provider: link.provider,
      service_identity: link.serviceIdentity,
      generation: link.generation,
    };
    await recordAudit(tx, {
      organizationId: c.organizationId,
      actor: c.actor,
      action,
      target: { type: "private_link", id: link.id },
      details: facts,
    });
    await appendEvent(tx, {
      organizationId: c.organizationId,
      type: EVENT_OF[action],
      subjectId: link.id,
      payload: facts,
    });
  }
}

function duplicateOr(err: unknown, provider: Provider): unknown {
  if (isUniqueViolation(err))
    return new FlotillaError("resource.already_exists", DUPLICATE_IDENTITY, {
      field: `config.${IDENTITY_FIELD[provider]}`,
    });
  return err;
}
