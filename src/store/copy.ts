// Copying an embedded installation into PostgreSQL: every table in foreign-key order, in batches,
// in one target transaction, counts verified per table; a rerun adds nothing.
import { isAbsolute, resolve } from "node:path";
import { FlotillaError } from "../shared/index.js";
import type { Db, Queryable } from "./db.js";
import { loadMigrations } from "./migrate.js";

const MIGRATIONS_TABLE = "flotilla_migrations";

/**
 * The data directory an embedded source names. Accepted: pglite:///abs/path, pglite://rel/path,
 * file:/abs/path, file:///abs/path, and a bare path (relative to the working directory).
 */
export function parseEmbeddedSource(raw: string, cwd = process.cwd()): string {
  if (!raw)
    throw new FlotillaError("config.invalid", "--from is required: the embedded data directory");
  let path: string;
  if (raw.startsWith("pglite://")) path = raw.slice("pglite://".length);
  else if (raw.startsWith("file://")) path = raw.slice("file://".length);
  else if (raw.startsWith("file:")) path = raw.slice("file:".length);
  else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(raw))
    throw new FlotillaError(
      "config.invalid",
      `--from ${raw}: expected a data directory (pglite:///abs, pglite://rel, file:/abs or a path)`,
    );
  else path = raw;
  // pglite:///abs keeps its leading slash; pglite://rel is relative.
  path = path.split("?")[0]!;
  if (!path) throw new FlotillaError("config.invalid", `--from ${raw} names no directory`);
  return isAbsolute(path) ? path : resolve(cwd, path);
}

interface Column {
  name: string;
  identity: boolean;
  jsonb: boolean;
}

/** Application tables in an order where every non-deferrable foreign key's parent comes first. */
export async function tablesInForeignKeyOrder(q: Queryable): Promise<string[]> {
  const { rows: tables } = await q.query<{ name: string }>(
    `SELECT table_name AS name FROM information_schema.tables
     WHERE table_schema = 'public' AND table_type = 'BASE TABLE' AND table_name <> $1 ORDER BY 1`,
    [MIGRATIONS_TABLE],
  );
  const { rows: edges } = await q.query<{ child: string; parent: string }>(
    `SELECT c.conrelid::regclass::text AS child, c.confrelid::regclass::text AS parent
     FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
     WHERE c.contype = 'f' AND n.nspname = 'public' AND NOT c.condeferrable
       AND c.conrelid <> c.confrelid`,
  );
  const names = tables.map((t) => t.name);
  const parents = new Map(names.map((n) => [n, new Set<string>()]));
  for (const e of edges) parents.get(e.child)?.add(e.parent);
  const ordered: string[] = [];
  const placed = new Set<string>();
  while (ordered.length < names.length) {
    const ready = names.filter(
      (n) => !placed.has(n) && [...parents.get(n)!].every((p) => placed.has(p) || !parents.has(p)),
    );
    if (ready.length === 0)
      throw new Error(
        `foreign keys form a cycle among ${names.filter((n) => !placed.has(n)).join(", ")}`,
      );
    for (const n of ready) {
      ordered.push(n);
      placed.add(n);
    }
  }
  return ordered;
}

async function columnsOf(q: Queryable, table: string): Promise<Column[]> {
  const { rows } = await q.query<{ name: string; identity: string; type: string }>(
    `SELECT column_name AS name, is_identity AS identity, data_type AS type FROM information_schema.columns
     WHERE table_schema = 'public' AND table_name = $1 AND is_generated = 'NEVER'
     ORDER BY ordinal_position`,
    [table],
  );
  return rows.map((r) => ({
    name: r.name,
    identity: r.identity === "YES",
    jsonb: r.type === "jsonb",
  }));
}

async function primaryKeyOf(q: Queryable, table: string): Promise<string[]> {
  const { rows } = await q.query<{ name: string }>(
    `SELECT a.attname AS name FROM pg_index i
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
     WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)`,
    [table],
  );
  return rows.map((r) => r.name);
}

const ident = (name: string) => `"${name.replaceAll('"', '""')}"`;

/** A value read from one engine as a parameter for the other. */
function toParam(v: unknown, column: Column): unknown {
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  // jsonb comes back parsed, whatever its JSON type (a string, a number): send it as JSON text.
  // (SQL NULL and a JSON null both read as null; SQL NULL is what every column here means.)
  if (column.jsonb && v !== null) return JSON.stringify(v);
  return v;
}

export interface TableCopy {
  table: string;
  source: number;
  inserted: number;
  target: number;
}

export interface CopyProgress {
  table(table: string, total: number): void;
  rows(table: string, done: number, total: number): void;
}

/**
 * Copies every application table of `source` into `target` (both migrated to the same version).
 * One target transaction with deferrable constraints deferred; rows already there (a rerun) are
 * skipped by primary key. Throws, changing nothing, if any table's counts then differ.
 */
export async function copyInstallation(
  source: Db,
  target: Db,
  options: { batchSize?: number; progress?: CopyProgress } = {},
): Promise<TableCopy[]> {
  const batchSize = options.batchSize ?? 1000;
  const versions = async (db: Db) =>
    (await db.query<{ version: number }>(`SELECT version FROM ${MIGRATIONS_TABLE} ORDER BY 1`)).rows
      .map((r) => r.version)
      .join(",");
  const expected = loadMigrations()
    .map((m) => m.version)
    .join(",");
  const [from, to] = [await versions(source), await versions(target)];
  if (from !== expected)
    throw new FlotillaError(
      "config.invalid",
      `the source's schema is at migrations [${from}] but this flotilla has [${expected}]: start \`flotilla up\` on it once with this version, stop it, then migrate`,
    );
  if (to !== expected)
    throw new FlotillaError(
      "config.invalid",
      `the target's schema is at [${to}], expected [${expected}]`,
    );

  const tables = await tablesInForeignKeyOrder(target);
  return target.tx(async (tx) => {
    await tx.query("SET CONSTRAINTS ALL DEFERRED");
    // Rows arrive as the source has them, derived columns included: triggers that derive state
    // from writes (the private links' projection and converge requests) must not fire again, or
    // the copy would differ from its source. Re-enabled before commit; a failure rolls both back.
    // Only tables with such triggers: ALTER TABLE on one with deferred checks pending would fail.
    const { rows: triggered } = await tx.query<{ name: string }>(
      `SELECT DISTINCT c.relname AS name FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE NOT t.tgisinternal AND n.nspname = 'public' ORDER BY 1`,
    );
    for (const { name } of triggered)
      await tx.query(`ALTER TABLE ${ident(name)} DISABLE TRIGGER USER`);
    const report: TableCopy[] = [];
    for (const table of tables) {
      const columns = await columnsOf(tx, table);
      const key = await primaryKeyOf(tx, table);
      const order = (key.length ? key : columns.map((c) => c.name)).map(ident).join(", ");
      const { rows: countRows } = await source.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM ${ident(table)}`,
      );
      const total = countRows[0]!.n;
      options.progress?.table(table, total);
      const list = columns.map((c) => ident(c.name)).join(", ");
      const overriding = columns.some((c) => c.identity) ? "OVERRIDING SYSTEM VALUE" : "";
      let inserted = 0;
      for (let offset = 0; offset < total; offset += batchSize) {
        const { rows } = await source.query<Record<string, unknown>>(
          `SELECT ${list} FROM ${ident(table)} ORDER BY ${order} LIMIT $1 OFFSET $2`,
          [batchSize, offset],
        );
        if (rows.length === 0) break;
        const params: unknown[] = [];
        const tuples = rows.map((row) => {
          const placeholders = columns.map((c) => {
            const v = row[c.name];
            // jsonb values come back parsed; send them as JSON text so both drivers agree.
            params.push(toParam(v, c));
            return `$${params.length}`;
          });
          return `(${placeholders.join(", ")})`;
        });
        // A rerun brings changed rows up to date (a revoked token, a rotated secret) and counts
        // only what it changed; rows the source no longer has make the counts differ below.
        const rest = columns.filter((c) => !key.includes(c.name)).map((c) => ident(c.name));
        const onConflict =
          key.length === 0
            ? "ON CONFLICT DO NOTHING"
            : rest.length === 0
              ? `ON CONFLICT (${key.map(ident).join(", ")}) DO NOTHING`
              : `ON CONFLICT (${key.map(ident).join(", ")}) DO UPDATE SET ${rest.map((c) => `${c} = EXCLUDED.${c}`).join(", ")}
                 WHERE (${rest.map((c) => `${ident(table)}.${c}`).join(", ")}) IS DISTINCT FROM (${rest.map((c) => `EXCLUDED.${c}`).join(", ")})`;
        const result = await tx.query(
          `INSERT INTO ${ident(table)} (${list}) ${overriding} VALUES ${tuples.join(", ")} ${onConflict}`,
          params,
        );
        inserted += result.rowCount;
        options.progress?.rows(table, Math.min(offset + rows.length, total), total);
      }
      for (const c of columns.filter((col) => col.identity)) {
        // The identity sequence continues after the copied ids.
        await tx.query(
          `SELECT setval(pg_get_serial_sequence($1, $2), GREATEST((SELECT max(${ident(c.name)}) FROM ${ident(table)}), 1))`,
          [table, c.name],
        );
      }
      const { rows: after } = await tx.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM ${ident(table)}`,
      );
      report.push({ table, source: total, inserted, target: after[0]!.n });
    }
    // Every row is in: check the deferred constraints now rather than at commit, because ALTER
    // TABLE refuses a table with pending deferred checks (services has a deferred foreign key and,
    // since the gateway's public routes, a trigger of its own).
    await tx.query("SET CONSTRAINTS ALL IMMEDIATE");
    for (const { name } of triggered)
      await tx.query(`ALTER TABLE ${ident(name)} ENABLE TRIGGER USER`);
    const wrong = report.filter((r) => r.source !== r.target);
    if (wrong.length)
      throw new FlotillaError(
        "resource.conflict",
        `counts differ, nothing was copied: ${wrong.map((r) => `${r.table} ${r.source} in the source, ${r.target} in the target`).join("; ")}; the target holds rows that are not this source's`,
      );
    return report;
  });
}
