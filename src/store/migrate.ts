// The migration runner: numbered SQL files, each applied once, in its own transaction, under a lock.
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { FlotillaError } from "../shared/index.js";
import { type Db, LOCK_KEYS } from "./db.js";

export interface Migration {
  version: number;
  name: string;
  sql: string;
  checksum: string;
}

const FILE = /^(\d{4})_([a-z0-9_]+)\.sql$/;

/** The package's migrations/ folder, found from this file whether it runs from src/ or dist/src/. */
export function defaultMigrationsDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "migrations"))) {
      return join(dir, "migrations");
    }
    dir = dirname(dir);
  }
  throw new Error("migrations folder not found above the store module");
}

export function loadMigrations(dir: string = defaultMigrationsDir()): Migration[] {
  const migrations = readdirSync(dir)
    .filter((f) => f.endsWith(".sql"))
    .map((file) => {
      const match = FILE.exec(file);
      if (!match) throw new Error(`migration file ${file} must be named NNNN_name.sql`);
      const sql = readFileSync(join(dir, file), "utf8");
      return {
        version: Number(match[1]),
        name: match[2]!,
        sql,
        checksum: createHash("sha256").update(sql).digest("hex"),
      };
    })
    .sort((a, b) => a.version - b.version);
  // 1..N without gaps: a build missing a number would otherwise apply a later-merged lower one
  // after higher ones on databases that already moved on, out of the order it was written for.
  migrations.forEach((m, i) => {
    if (m.version !== i + 1)
      throw new Error(
        `migration numbers must run 1..N without gaps or repeats; found ${m.version} (${m.name}) at position ${i + 1}`,
      );
  });
  return migrations;
}

export interface MigrationReport {
  applied: number[];
  alreadyApplied: number;
}

/**
 * Applies pending migrations. Under a session advisory lock on PostgreSQL, so N replicas starting
 * together apply each migration exactly once; the others wait, then find nothing to do. Refuses
 * to run when an applied migration's checksum changed or the database knows a newer migration.
 */
export async function migrate(
  db: Db,
  migrations: Migration[] = loadMigrations(),
): Promise<MigrationReport> {
  return db.withExclusiveLock(LOCK_KEYS.migrations, async (conn) => {
    await conn.exec(`
      CREATE TABLE IF NOT EXISTS flotilla_migrations (
        version integer PRIMARY KEY,
        name text NOT NULL,
        checksum text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
      )`);
    const { rows } = await conn.query<{ version: number; name: string; checksum: string }>(
      "SELECT version, name, checksum FROM flotilla_migrations ORDER BY version",
    );
    const byVersion = new Map(migrations.map((m) => [m.version, m]));
    for (const row of rows) {
      const known = byVersion.get(row.version);
      if (!known) {
        throw new FlotillaError(
          "store.migration_changed",
          `the database has migration ${row.version} (${row.name}) that this build does not know; run a newer Flotilla`,
        );
      }
      if (known.checksum !== row.checksum) {
        throw new FlotillaError(
          "store.migration_changed",
          `migration ${row.version} (${row.name}) was changed after it was applied (checksum ${row.checksum.slice(0, 12)} in the database, ${known.checksum.slice(0, 12)} on disk); restore the original file`,
        );
      }
    }
    const done = new Set(rows.map((r) => r.version));
    const applied: number[] = [];
    for (const m of migrations) {
      if (done.has(m.version)) continue;
      // Each migration and its bookkeeping row commit together or not at all.
      await conn.exec("BEGIN");
      try {
        await conn.exec(m.sql);
        await conn.query(
          "INSERT INTO flotilla_migrations (version, name, checksum) VALUES ($1, $2, $3)",
          [m.version, m.name, m.checksum],
        );
        await conn.exec("COMMIT");
      } catch (err) {
        await conn.exec("ROLLBACK").catch(() => {});
        throw new Error(`migration ${m.version} (${m.name}) failed: ${(err as Error).message}`, {
          cause: err,
        });
      }
      applied.push(m.version);
    }
    return { applied, alreadyApplied: done.size };
  });
}
