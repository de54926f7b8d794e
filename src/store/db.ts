// The Db port: the one storage interface every module talks to, whatever the engine underneath.

export interface QueryResult<T> {
  rows: T[];
  rowCount: number;
}

/** What a statement can run on: the database itself or an open transaction. */
export interface Queryable {
  query<T = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<QueryResult<T>>;
  /** Runs several statements separated by semicolons, without parameters (migrations). */
  exec(sql: string): Promise<void>;
}

export type Engine = "postgres" | "pglite";

export interface Db extends Queryable {
  readonly engine: Engine;
  /** Runs fn in one transaction: commit when it resolves, roll back when it throws. */
  tx<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /**
   * Calls fn for every NOTIFY on channel; resolves to an unsubscribe function. If the listening
   * connection is lost it is reopened, and onReconnect is called: notifications sent meanwhile
   * are lost, so the caller re-reads what it may have missed.
   */
  listen(
    channel: string,
    fn: (payload: string) => void,
    onReconnect?: () => void,
  ): Promise<() => Promise<void>>;
  /**
   * Runs fn while holding a session-level advisory lock on a dedicated connection, so replicas
   * doing the same work serialize. On PGlite (one process by the lock file) it just runs fn.
   */
  withExclusiveLock<T>(key: number, fn: (conn: Queryable) => Promise<T>): Promise<T>;
  /**
   * Runs fn only if the lock is free right now (recurring singleton work: a replica that cannot
   * take it skips this tick, another one is doing it).
   */
  tryExclusiveLock<T>(
    key: number,
    fn: (conn: Queryable) => Promise<T>,
  ): Promise<{ ran: boolean; value?: T }>;
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** Advisory lock keys, one place so two features never share one by accident. */
export const LOCK_KEYS = {
  migrations: 0x666c_0001,
  dispatchReaper: 0x666c_0002,
  databaseBackups: 0x666c_0005,
  /** One replica at a time sweeps the public service routes (every 60 s). */
  routeSweep: 0x666c_0006,
  /** Class of pg_advisory_xact_lock(class, hashtext(label)): one derived route hostname at a time. */
  routeHostnames: 0x666c_0007,
} as const;
