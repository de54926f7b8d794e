// Config: variables and sealed secrets per environment or service, effective config and its version.
import { type Caller, FlotillaError, invalid, notFound, uuidv7 } from "../../shared/index.js";
import type { Db, Queryable } from "../../store/index.js";
import { recordAudit } from "../audit/index.js";
import { appendEvent } from "../outbox/index.js";
import { parseDotenv } from "./dotenv.js";
import type { ScopesPort } from "./ports.js";
import type { Keyring } from "./sealer.js";

export type ScopeType = "environment" | "service";
export type ConfigKind = "variable" | "secret";

export interface ConfigTarget {
  scope: ScopeType | undefined;
  id: string;
}

export interface ConfigEntry {
  key: string;
  kind: ConfigKind;
  /** Variables only: secrets are listed by name. */
  value: string;
  scope: ScopeType;
  updatedAt: Date;
}

const KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
const MAX_KEY = 256;
/** 64 KiB: room for a PEM bundle or a JSON credential, small enough for env blocks and frames. */
export const MAX_VALUE_BYTES = 64 * 1024;
/** One import may set this many keys. */
const MAX_IMPORT = 500;

export function checkKey(field: string, key: string): string {
  if (!key) throw invalid(field, "is required");
  if (key.length > MAX_KEY) throw invalid(field, `must be at most ${MAX_KEY} characters`);
  if (!KEY.test(key)) {
    throw invalid(
      field,
      `"${key.slice(0, 60).replace(/\0/g, "\\0")}" is not an environment variable name: use letters, digits and _, not starting with a digit`,
    );
  }
  return key;
}

export function checkValue(field: string, value: string): string {
  if (value.includes("\0")) throw invalid(field, "must not contain a NUL byte");
  if (Buffer.byteLength(value) > MAX_VALUE_BYTES)
    throw invalid(field, `must be at most ${MAX_VALUE_BYTES} bytes`);
  return value;
}

interface EntryRow {
  key: string;
  kind: ConfigKind;
  value: string | null;
  sealed: Uint8Array | null;
  key_id: string | null;
  scope_type: ScopeType;
  scope_id: string;
  updated_at: Date;
}

const aadOf = (scope: ScopeType, id: string, key: string) =>
  `flotilla/config/${scope}/${id}/${key}`;

const toEntry = (r: EntryRow): ConfigEntry => ({
  key: r.key,
  kind: r.kind,
  value: r.kind === "variable" ? (r.value ?? "") : "",
  scope: r.scope_type,
  updatedAt: r.updated_at,
});

export class ConfigService {
  constructor(
    private readonly db: Db,
    private readonly keyring: Keyring,
    private readonly scopes: ScopesPort,
  ) {}

  private async resolve(
    c: Caller,
    target: ConfigTarget,
    q: Queryable,
  ): Promise<{ scope: ScopeType; id: string }> {
    if (target.scope === "environment")
      return { scope: "environment", id: (await this.scopes.environment(c, target.id, q)).id };
    if (target.scope === "service")
      return { scope: "service", id: (await this.scopes.service(c, target.id, q)).id };
    throw invalid("target.scope", "must be ENVIRONMENT or SERVICE");
  }

  /** Bumps the scope's revision (creating the scope row on first use); returns the new revision. */
  private async bump(
    tx: Queryable,
    organizationId: string,
    scope: ScopeType,
    id: string,
  ): Promise<number> {
    const { rows } = await tx.query<{ revision: number }>(
      `INSERT INTO config_scopes (scope_type, scope_id, organization_id, revision) VALUES ($1, $2, $3, 1)
       ON CONFLICT (scope_type, scope_id) DO UPDATE SET revision = config_scopes.revision + 1
       RETURNING revision`,
      [scope, id, organizationId],
    );
    return rows[0]!.revision;
  }

  private async write(
    tx: Queryable,
    c: Caller,
    scope: ScopeType,
    id: string,
    key: string,
    value: string,
    kind: ConfigKind,
  ) {
    const sealed = kind === "secret" ? this.keyring.seal(value, aadOf(scope, id, key)) : null;
    await tx.query(
      `INSERT INTO config_entries (id, organization_id, scope_type, scope_id, key, kind, value, sealed, key_id)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
       ON CONFLICT (scope_type, scope_id, key) DO UPDATE
         SET kind = excluded.kind, value = excluded.value, sealed = excluded.sealed, key_id = excluded.key_id, updated_at = now()`,
      [
        uuidv7(),
        c.organizationId,
        scope,
        id,
        key,
        kind,
        sealed ? null : value,
        sealed?.sealed ?? null,
        sealed?.keyId ?? null,
      ],
    );
  }

  private async changed(
    tx: Queryable,
    c: Caller,
    scope: ScopeType,
    id: string,
    keys: string[],
    action: string,
  ) {
    await recordAudit(tx, {
      organizationId: c.organizationId,
      actor: c.actor,
      action,
      target: { type: scope, id },
      details: { keys },
    });
    await appendEvent(tx, {
      organizationId: c.organizationId,
      type: "config.changed",
      subjectId: id,
      payload: { scope, [`${scope}_id`]: id, keys },
    });
  }

  async set(
    c: Caller,
    target: ConfigTarget,
    keyText: string,
    valueText: string,
    kind: ConfigKind | undefined,
  ) {
    const key = checkKey("key", keyText);
    const value = checkValue("value", valueText);
    if (kind !== "variable" && kind !== "secret")
      throw invalid("kind", "must be VARIABLE or SECRET");
    return this.db.tx(async (tx) => {
      const { scope, id } = await this.resolve(c, target, tx);
      await this.bump(tx, c.organizationId, scope, id);
      await this.write(tx, c, scope, id, key, value, kind);
      await this.changed(tx, c, scope, id, [key], "config.set");
      const entry = await this.entry(tx, scope, id, key);
      return { entry: entry!, version: await this.scopeVersion(tx, scope, id) };
    });
  }

  async importDotenv(c: Caller, target: ConfigTarget, text: string, asSecrets: boolean) {
    if (Buffer.byteLength(text) > MAX_VALUE_BYTES * 4)
      throw invalid("dotenv", `must be at most ${MAX_VALUE_BYTES * 4} bytes`);
    const parsed = parseDotenv(text);
    if (parsed.length === 0) throw invalid("dotenv", "has no KEY=value lines");
    if (parsed.length > MAX_IMPORT)
      throw invalid("dotenv", `must have at most ${MAX_IMPORT} entries`);
    for (const p of parsed) {
      checkKey(`dotenv:${p.line}`, p.key);
      checkValue(`dotenv:${p.line}`, p.value);
    }
    return this.db.tx(async (tx) => {
      const { scope, id } = await this.resolve(c, target, tx);
      await this.bump(tx, c.organizationId, scope, id);
      for (const p of parsed)
        await this.write(tx, c, scope, id, p.key, p.value, asSecrets ? "secret" : "variable");
      const keys = parsed.map((p) => p.key);
      await this.changed(tx, c, scope, id, keys, "config.import");
      return { keys, version: await this.scopeVersion(tx, scope, id) };
    });
  }

  async list(c: Caller, target: ConfigTarget) {
    const { scope, id } = await this.resolve(c, target, this.db);
    const { rows } = await this.db.query<EntryRow>(
      `SELECT key, kind, value, NULL::bytea AS sealed, key_id, scope_type, scope_id, updated_at FROM config_entries
       WHERE scope_type = $1 AND scope_id = $2 AND organization_id = $3 ORDER BY key`,
      [scope, id, c.organizationId],
    );
    return { entries: rows.map(toEntry), version: await this.scopeVersion(this.db, scope, id) };
  }

  async unset(c: Caller, target: ConfigTarget, keyText: string) {
    const key = checkKey("key", keyText);
    return this.db.tx(async (tx) => {
      const { scope, id } = await this.resolve(c, target, tx);
      const { rows } = await tx.query<{ id: string }>(
        "DELETE FROM config_entries WHERE scope_type = $1 AND scope_id = $2 AND key = $3 AND organization_id = $4 RETURNING id",
        [scope, id, key, c.organizationId],
      );
      if (!rows[0]) throw notFound(`config key ${key}`);
      await this.bump(tx, c.organizationId, scope, id);
      await this.changed(tx, c, scope, id, [key], "config.unset");
      return { version: await this.scopeVersion(tx, scope, id) };
    });
  }

  /** Decrypts one secret for a caller with config.reveal; the reveal is audited (never the value). */
  async reveal(c: Caller, target: ConfigTarget, keyText: string): Promise<string> {
    const key = checkKey("key", keyText);
    return this.db.tx(async (tx) => {
      const { scope, id } = await this.resolve(c, target, tx);
      const { rows } = await tx.query<EntryRow>(
        `SELECT key, kind, value, sealed, key_id, scope_type, scope_id, updated_at FROM config_entries
         WHERE scope_type = $1 AND scope_id = $2 AND key = $3 AND organization_id = $4`,
        [scope, id, key, c.organizationId],
      );
      const row = rows[0];
      if (!row) throw notFound(`config key ${key}`);
      if (row.kind !== "secret") {
        throw new FlotillaError(
          "resource.conflict",
          `${key} is a variable, not a secret; ListConfig shows its value`,
          { field: "key" },
        );
      }
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "config.reveal",
        target: { type: scope, id },
        details: { key },
      });
      return this.keyring.open(row.sealed!, row.key_id!, aadOf(scope, id, key));
    });
  }

  /** A service's environment entries overlaid by its own; secrets by name only. */
  async effective(
    c: Caller,
    serviceId: string,
  ): Promise<{ entries: ConfigEntry[]; version: string }> {
    const service = await this.scopes.service(c, serviceId, this.db);
    const rows = await this.effectiveRows(
      this.db,
      c.organizationId,
      service.environmentId,
      service.id,
    );
    return {
      entries: rows.map(toEntry),
      version: await this.version(this.db, c.organizationId, service.environmentId, service.id),
    };
  }

  /**
   * The effective config with secrets decrypted, for the moment a deployment is sent to an agent,
   * and the keys that are secrets (the agent masks their values in what it reports). Never log or
   * store the result.
   */
  async resolveForRuntime(
    organizationId: string,
    environmentId: string,
    serviceId: string,
  ): Promise<{ env: Record<string, string>; secretKeys: string[] }> {
    const rows = await this.effectiveRows(this.db, organizationId, environmentId, serviceId, true);
    const env: Record<string, string> = {};
    const secretKeys: string[] = [];
    for (const r of rows) {
      if (r.kind === "secret") {
        env[r.key] = this.keyring.open(
          r.sealed!,
          r.key_id!,
          aadOf(r.scope_type, r.scope_id, r.key),
        );
        secretKeys.push(r.key);
      } else env[r.key] = r.value ?? "";
    }
    return { env, secretKeys };
  }

  private async effectiveRows(
    q: Queryable,
    organizationId: string,
    environmentId: string,
    serviceId: string,
    withSealed = false,
  ) {
    const { rows } = await q.query<EntryRow>(
      `SELECT DISTINCT ON (key) key, kind, value, ${withSealed ? "sealed" : "NULL::bytea AS sealed"}, key_id, scope_type, scope_id, updated_at
       FROM config_entries
       WHERE organization_id = $1 AND ((scope_type = 'environment' AND scope_id = $2) OR (scope_type = 'service' AND scope_id = $3))
       ORDER BY key, (scope_type = 'service') DESC`,
      [organizationId, environmentId, serviceId],
    );
    return rows;
  }

  /** `e<environment revision>.s<service revision>`: changes whenever either scope changes. */
  async version(
    q: Queryable,
    organizationId: string,
    environmentId: string,
    serviceId: string,
  ): Promise<string> {
    const { rows } = await q.query<{ scope_type: ScopeType; revision: number }>(
      `SELECT scope_type, revision FROM config_scopes WHERE organization_id = $1
       AND ((scope_type = 'environment' AND scope_id = $2) OR (scope_type = 'service' AND scope_id = $3))`,
      [organizationId, environmentId, serviceId],
    );
    const rev = (t: ScopeType) => rows.find((r) => r.scope_type === t)?.revision ?? 0;
    return `e${rev("environment")}.s${rev("service")}`;
  }

  private async scopeVersion(q: Queryable, scope: ScopeType, id: string): Promise<string> {
    const { rows } = await q.query<{ revision: number }>(
      "SELECT revision FROM config_scopes WHERE scope_type = $1 AND scope_id = $2",
      [scope, id],
    );
    return `${scope === "environment" ? "e" : "s"}${rows[0]?.revision ?? 0}`;
  }

  private async entry(
    q: Queryable,
    scope: ScopeType,
    id: string,
    key: string,
  ): Promise<ConfigEntry | undefined> {
    const { rows } = await q.query<EntryRow>(
      `SELECT key, kind, value, NULL::bytea AS sealed, key_id, scope_type, scope_id, updated_at FROM config_entries
       WHERE scope_type = $1 AND scope_id = $2 AND key = $3`,
      [scope, id, key],
    );
    return rows[0] ? toEntry(rows[0]) : undefined;
  }

  /**
   * Writes a service's entries inside the caller's transaction (a managed database's generated
   * credentials): variables as given, secrets sealed. No authorization, audit or event of its
   * own: the caller authorized and audits the operation it belongs to. Nothing is logged.
   */
  async writeWithinTx(
    tx: Queryable,
    organizationId: string,
    serviceId: string,
    entries: { variables: Record<string, string>; secrets: Record<string, string> },
  ): Promise<void> {
    const c: Caller = { organizationId, actor: { type: "user", id: "" } };
    await this.bump(tx, organizationId, "service", serviceId);
    for (const [kind, values] of [
      ["variable", entries.variables],
      ["secret", entries.secrets],
    ] as const) {
      for (const [keyText, valueText] of Object.entries(values)) {
        const key = checkKey("key", keyText);
        await this.write(tx, c, "service", serviceId, key, checkValue(key, valueText), kind);
      }
    }
  }

  /** Removes a scope and its entries, in the caller's transaction (service or environment deleted). */
  async removeScope(
    tx: Queryable,
    organizationId: string,
    scope: ScopeType,
    id: string,
  ): Promise<void> {
    await tx.query(
      "DELETE FROM config_scopes WHERE scope_type = $1 AND scope_id = $2 AND organization_id = $3",
      [scope, id, organizationId],
    );
  }

  /** Re-seals every secret not sealed with the current key. Returns how many were re-sealed. */
  async rotateKey(): Promise<number> {
    let total = 0;
    for (;;) {
      const n = await this.db.tx(async (tx) => {
        const { rows } = await tx.query<EntryRow & { id: string }>(
          `SELECT id, key, kind, value, sealed, key_id, scope_type, scope_id, updated_at FROM config_entries
           WHERE kind = 'secret' AND key_id <> $1 LIMIT 200 FOR UPDATE`,
          [this.keyring.current.id],
        );
        for (const r of rows) {
          const aad = aadOf(r.scope_type, r.scope_id, r.key);
          const resealed = this.keyring.seal(this.keyring.open(r.sealed!, r.key_id!, aad), aad);
          await tx.query("UPDATE config_entries SET sealed = $2, key_id = $3 WHERE id = $1", [
            r.id,
            resealed.sealed,
            resealed.keyId,
          ]);
        }
        return rows.length;
      });
      total += n;
      if (n < 200) return total;
    }
  }
}
