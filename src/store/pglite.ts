// Embedded adapter of the Db port: PGlite (PostgreSQL in WASM) in one data directory owned by one process.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { PGlite, type Transaction } from "@electric-sql/pglite";
import type { Db, Queryable } from "./db.js";
import { acquireLockFile } from "./lockfile.js";

function wrap(target: PGlite | Transaction): Queryable {
  return {
    async query<T>(sql: string, params?: unknown[]) {
      const result = await target.query<T>(sql, params);
      return { rows: result.rows, rowCount: result.affectedRows ?? result.rows.length };
    },
    async exec(sql: string) {
      await target.exec(sql);
    },
  };
}

export interface PgliteDb extends Db {
  readonly pglite: PGlite;
}

/**
 * Opens the embedded store. dataDir is Flotilla's data directory: PGlite's files live in
 * dataDir/pgdata and the lock file in dataDir/flotilla.lock. Pass "memory://" for a throwaway
 * in-memory store (tests).
 */
export async function openPglite(dataDir: string): Promise<PgliteDb> {
  const inMemory = dataDir.startsWith("memory://");
  let lock: { release(): void } | undefined;
  if (!inMemory) {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    lock = acquireLockFile(join(dataDir, "flotilla.lock"));
  }
  let pglite: PGlite;
  try {
    // int8 as a number, as the pg adapter does, so both engines return the same shapes.
    pglite = await PGlite.create(inMemory ? undefined : join(dataDir, "pgdata"), {
      parsers: { 20: (v: string) => Number(v) },
    });
  } catch (err) {
    lock?.release();
    throw err;
  }
  const root = wrap(pglite);
  return {
    engine: "pglite",
    pglite,
    query: root.query,
    exec: root.exec,
    tx(fn) {
      return pglite.transaction((tx) => fn(wrap(tx)));
    },
    async listen(channel, fn) {
      const unlisten = await pglite.listen(channel, fn);
      return async () => {
        await unlisten();
      };
    },
    // One process owns the directory (the lock file) and PGlite has one connection, so there is
    // nobody to exclude: run fn on the database itself.
    withExclusiveLock(_key, fn) {
      return fn(root);
    },
    async ping() {
      await pglite.query("SELECT 1");
    },
    async close() {
      try {
        await pglite.close();
      } finally {
        lock?.release();
      }
    },
  };
}
