// The gateway's local store (better-sqlite3): one row per API, written only through the
// timestamp-guarded upsert, so a stale event or an older sync answer never regresses a row.
import { createHash, hkdfSync } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import {
  type ApiState,
  type ExpectedRow,
  expectedRowLine,
  openBox,
  sealBox,
} from "../shared/index.js";

/** A row's key facts; missingContent when a DEPLOYED row still waits for its content. */
export type IndexRow = ExpectedRow & { missingContent?: boolean };

export interface StoredRow extends ExpectedRow {
  /** The deployment's content (JSON text of DeploymentContent), or null until fetched. */
  content: string | null;
}

/**
 * The guard every write passes: newer deployedAt wins; an equal deployedAt is broken by the
 * larger deploymentId (the same answer on every gateway); the same deployment may fill in its
 * missing content.
 */
const NEWER = `(artifacts.deployed_at < excluded.deployed_at
  OR (artifacts.deployed_at = excluded.deployed_at AND artifacts.deployment_id < excluded.deployment_id)
  OR (artifacts.deployed_at = excluded.deployed_at AND artifacts.deployment_id = excluded.deployment_id
      AND artifacts.content IS NULL AND excluded.content IS NOT NULL))`;

const SECRET_KINDS = new Set(["LlmProvider", "LlmProxy"]);
const PLAIN = Buffer.from([0]);
const SEALED = Buffer.from([1]);

interface Row {
  api_id: string;
  deployment_id: string;
  kind: string;
  state: ApiState;
  deployed_at: number;
  content: Buffer | null;
}

export class LocalStore {
  private readonly db: Database.Database;
  private readonly key: Buffer;
  private readonly upsertStmt: Database.Statement;
  private readonly getStmt: Database.Statement;
  private readonly deleteStmt: Database.Statement;
  /** configHash()'s last answer; every write that changes a row clears it. */
  private hash: string | undefined;

  /**
   * `secret` (the gateway's token) derives the key that seals secret-bearing content at rest (an
   * LLM API's credential). A new token cannot open old rows; all content is fetched again.
   */
  constructor(dataDir: string, secret: string) {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    this.db = new Database(join(dataDir, "gateway.sqlite"));
    // WAL: readers never block the writer; NORMAL sync is durable across a process crash.
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.exec(`CREATE TABLE IF NOT EXISTS artifacts (
      api_id TEXT PRIMARY KEY,
      deployment_id TEXT NOT NULL,
      kind TEXT NOT NULL,
      state TEXT NOT NULL CHECK (state IN ('DEPLOYED', 'UNDEPLOYED')),
      deployed_at INTEGER NOT NULL,
      content BLOB
    );
    CREATE INDEX IF NOT EXISTS artifacts_deployment_idx ON artifacts (deployment_id);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);`);
    this.key = Buffer.from(hkdfSync("sha256", secret, "flotilla-gateway", "local-store", 32));
    const check = createHash("sha256").update(this.key).digest("hex").slice(0, 16);
    const stored = this.db.prepare("SELECT value FROM meta WHERE key = 'key_check'").get() as
      | { value: string }
      | undefined;
    if (stored && stored.value !== check) {
      // Another token sealed these rows: drop the content, keep the rows (they sync again).
      this.db.exec("UPDATE artifacts SET content = NULL");
    }
    this.db
      .prepare(
        "INSERT INTO meta (key, value) VALUES ('key_check', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
      )
      .run(check);
    this.upsertStmt = this.db.prepare(
      `INSERT INTO artifacts (api_id, deployment_id, kind, state, deployed_at, content)
       VALUES (@apiId, @deploymentId, @kind, @state, @deployedAt, @content)
       ON CONFLICT (api_id) DO UPDATE SET deployment_id = excluded.deployment_id, kind = excluded.kind,
         state = excluded.state, deployed_at = excluded.deployed_at,
         content = CASE WHEN excluded.content IS NOT NULL THEN excluded.content
                        WHEN excluded.deployment_id = artifacts.deployment_id THEN artifacts.content
                        ELSE NULL END
       WHERE ${NEWER}`,
    );
    this.getStmt = this.db.prepare("SELECT * FROM artifacts WHERE api_id = ?");
    this.deleteStmt = this.db.prepare(
      "DELETE FROM artifacts WHERE api_id = ? AND deployment_id = ?",
    );
  }

  /**
   * Content carrying a secret (the LLM kinds hold the provider's credential) is sealed; the rest
   * is stored plain, because opening 10,000 boxes costs a restart ~100 ms before it serves. The
   * first byte says which: 1 sealed, 0 plain.
   */
  private seal(apiId: string, kind: string, content: string | null): Buffer | null {
    if (content === null) return null;
    if (!SECRET_KINDS.has(kind)) return Buffer.concat([PLAIN, Buffer.from(content, "utf8")]);
    return Buffer.concat([SEALED, sealBox(this.key, content, apiId)]);
  }

  private toRow(r: Row): StoredRow {
    let content: string | null = null;
    if (r.content) {
      const body = r.content.subarray(1);
      if (r.content[0] === 0) content = body.toString("utf8");
      else
        try {
          content = openBox(this.key, body, r.api_id);
        } catch {
          content = null; // Sealed under another key: fetched again by the next sync.
        }
    }
    return {
      apiId: r.api_id,
      deploymentId: r.deployment_id,
      kind: r.kind,
      state: r.state,
      deployedAt: r.deployed_at,
      content,
    };
  }

  /**
   * The guarded upsert. Returns true only if the row changed: the caller tells the in-memory
   * config store about that row and no other.
   */
  upsert(row: StoredRow): boolean {
    const info = this.upsertStmt.run({
      ...row,
      content: this.seal(row.apiId, row.kind, row.content),
    });
    if (info.changes === 0) return false;
    this.hash = undefined;
    return true;
  }

  /** Many guarded upserts in one transaction; returns the rows that changed. */
  upsertMany(rows: StoredRow[]): StoredRow[] {
    const changed: StoredRow[] = [];
    this.db.transaction(() => {
      for (const r of rows) if (this.upsert(r)) changed.push(r);
    })();
    return changed;
  }

  /** Deletes the API's row only if it still holds that deployment. */
  delete(apiId: string, deploymentId: string): boolean {
    if (this.deleteStmt.run(apiId, deploymentId).changes === 0) return false;
    this.hash = undefined;
    return true;
  }

  get(apiId: string): StoredRow | undefined {
    const r = this.getStmt.get(apiId) as Row | undefined;
    return r ? this.toRow(r) : undefined;
  }

  all(): StoredRow[] {
    return (this.db.prepare("SELECT * FROM artifacts ORDER BY api_id").all() as Row[]).map((r) =>
      this.toRow(r),
    );
  }

  /** Rows without content (state and timestamps only): cheap, for reconcile and hashing. */
  index(): IndexRow[] {
    return (
      this.db
        .prepare(
          "SELECT api_id, deployment_id, kind, state, deployed_at, content IS NULL AS missing FROM artifacts",
        )
        .all() as Array<Omit<Row, "content"> & { missing: number }>
    ).map((r) => ({
      apiId: r.api_id,
      deploymentId: r.deployment_id,
      kind: r.kind,
      state: r.state,
      deployedAt: r.deployed_at,
      ...(r.missing ? { missingContent: true } : {}),
    }));
  }

  /**
   * The same hash the hub computes over the expected set. Kept until the next write: computing
   * it reads and sorts every row (~10 MB of garbage at 10,000 rows).
   */
  configHash(): string {
    if (this.hash === undefined) {
      const lines = this.index().map(expectedRowLine).sort();
      this.hash = createHash("sha256").update(lines.join("\n")).digest("hex");
    }
    return this.hash;
  }

  close(): void {
    this.db.close();
  }
}
