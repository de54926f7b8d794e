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
      // rowCount is the command tag's count (rows a SELECT returned, rows a write changed), as pg
      // reports it; affectedRows is 0 for a SELECT.
      return {
        rows: result.rows,
        rowCount: result.rowCount ?? result.affectedRows ?? result.rows.length,
      };
    },
    async exec(sql: string) {
      await target.exec(sql);
    },
  };
}

/**
 * PostgreSQL touches all of its shared buffers when it starts, and in PGlite they are WASM memory
 * the process keeps: the default 128 MB cost ~135 MB of resident memory, 16 MB costs ~20 (an
 * idle `flotilla up` went from ~370 to ~250 MB). An embedded store holds a few MB of rows, and
 * pages beyond the buffers are read through the OS's file cache.
 */
const SHARED_BUFFERS = "16MB";

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
      startParams: [...PGlite.defaultStartParams, "-c", `shared_buffers=${SHARED_BUFFERS}`],
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
      // Quoted, as the pg adapter does: PGlite splices the name into LISTEN as given, which folds
      // it to lower case. Its returned unlisten drops the quotes and would miss a mixed-case
      // channel, so unlisten by the quoted name.
      const name = `"${channel.replaceAll('"', '""')}"`;
      await pglite.listen(name, fn);
      return async () => {
        await pglite.unlisten(name, fn);
      };
    },
    // One process owns the directory (the lock file) and PGlite has one connection, so there is
    // nobody to exclude: run fn on the database itself.
    withExclusiveLock(_key, fn) {
      return fn(root);
    },
    async tryExclusiveLock(_key, fn) {
      return { ran: true, value: await fn(root) };
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
