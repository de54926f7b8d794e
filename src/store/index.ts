// Public entry of the store: the Db port, its PostgreSQL and PGlite adapters, and migrations.

export {
  type CopyProgress,
  copyInstallation,
  parseEmbeddedSource,
  type TableCopy,
  tablesInForeignKeyOrder,
} from "./copy.js";
export type { Db, Engine, Queryable, QueryResult } from "./db.js";
export { LOCK_KEYS } from "./db.js";
export { acquireLockFile, type LockFile } from "./lockfile.js";
export { loadMigrations, type Migration, type MigrationReport, migrate } from "./migrate.js";
export { DEFAULT_POOL_SETTINGS, openPostgres, type PgDb, type PoolSettings } from "./pg.js";
export { openPglite, type PgliteDb } from "./pglite.js";
export { WakeLoop, type WakeLoopOptions } from "./wake-loop.js";
