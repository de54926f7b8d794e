// PostgreSQL adapter of the Db port: a pg pool plus dedicated connections for LISTEN and locks.
import pg from "pg";
import type { Db, Queryable, QueryResult } from "./db.js";

export interface PoolSettings {
  /** Connections in the pool. Default 20: two cores serve ~20 concurrent queries before queueing helps. */
  max: number;
  /** Close a connection idle this long. Default 30 s. */
  idleTimeoutMs: number;
  /** Recycle a connection after this age, so failovers and config reloads reach every connection. Default 30 min. */
  maxLifetimeSeconds: number;
  /** Give up acquiring a connection after this long. Default 5 s. */
  connectTimeoutMs: number;
  /** Cancel any statement running longer than this. Default 30 s. */
  statementTimeoutMs: number;
}

export const DEFAULT_POOL_SETTINGS: PoolSettings = {
  max: 20,
  idleTimeoutMs: 30_000,
  maxLifetimeSeconds: 1_800,
  connectTimeoutMs: 5_000,
  statementTimeoutMs: 30_000,
};

// bigint columns come back as strings from pg; counters and sizes here fit in 2^53, and the
// PGlite adapter returns numbers too, so both engines agree.
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number(v));

function adapt<T>(result: pg.QueryResult): QueryResult<T> {
  return { rows: result.rows as T[], rowCount: result.rowCount ?? 0 };
}

function wrapClient(client: pg.ClientBase): Queryable {
  return {
    async query<T>(sql: string, params?: unknown[]) {
      return adapt<T>(await client.query(sql, params as unknown[]));
    },
    async exec(sql: string) {
      await client.query(sql);
    },
  };
}

export interface PgDb extends Db {
  readonly pool: pg.Pool;
  /** How many times a LISTEN connection was lost and reopened since the store opened. */
  readonly listenerReconnects: number;
}

export function openPostgres(url: string, settings: Partial<PoolSettings> = {}): PgDb {
  const s = { ...DEFAULT_POOL_SETTINGS, ...settings };
  const clientConfig = {
    connectionString: url,
    connectionTimeoutMillis: s.connectTimeoutMs,
    statement_timeout: s.statementTimeoutMs,
    application_name: "flotilla",
  };
  const pool = new pg.Pool({
    ...clientConfig,
    max: s.max,
    idleTimeoutMillis: s.idleTimeoutMs,
    maxLifetimeSeconds: s.maxLifetimeSeconds,
  });
  // An idle client losing its server is reported here; the pool drops it and opens another.
  pool.on("error", () => {});
  let listenerReconnects = 0;
  const dedicated = async () => {
    const client = new pg.Client(clientConfig);
    client.on("error", () => {});
    await client.connect();
    return client;
  };

  return {
    engine: "postgres",
    pool,
    get listenerReconnects() {
      return listenerReconnects;
    },
    async query<T>(sql: string, params?: unknown[]) {
      return adapt<T>(await pool.query(sql, params as unknown[]));
    },
    async exec(sql: string) {
      await pool.query(sql);
    },
    async tx<T>(fn: (tx: Queryable) => Promise<T>) {
      const client = await pool.connect();
      try {
        await client.query("BEGIN");
        const result = await fn(wrapClient(client));
        // A failed statement aborts the transaction; PostgreSQL then answers COMMIT with ROLLBACK
        // instead of an error. Report it, as PGlite does, rather than resolve as if committed.
        const commit = await client.query("COMMIT");
        if (commit.command === "ROLLBACK") {
          throw new Error(
            "the transaction was rolled back instead of committed: a statement in it failed",
          );
        }
        return result;
      } catch (err) {
        await client.query("ROLLBACK").catch(() => {});
        throw err;
      } finally {
        client.release();
      }
    },
    async listen(channel, fn, onReconnect) {
      // A dedicated connection that comes back: on loss (a restart, pg_terminate_backend) it
      // reconnects with backoff (250 ms doubling to 10 s) and LISTENs again. Notifications sent
      // while it was away are lost, so the caller is told, to re-read what it may have missed.
      // One connection at a time: a loss is acted on once, and every client opened is ended.
      const clients = new Set<pg.Client>();
      let closed = false;
      let backoff = 250;
      let timer: NodeJS.Timeout | undefined;
      const schedule = () => {
        if (closed || timer) return;
        timer = setTimeout(() => {
          timer = undefined;
          reopen();
        }, backoff);
        timer.unref();
        backoff = Math.min(backoff * 2, 10_000);
      };
      const open = async (): Promise<void> => {
        const c = new pg.Client(clientConfig);
        clients.add(c);
        let ready = false;
        c.on("notification", (msg) => {
          if (msg.channel === channel) fn(msg.payload ?? "");
        });
        c.on("error", () => {});
        c.once("end", () => {
          clients.delete(c);
          // Before LISTEN succeeded, the failing open() reports the loss itself.
          if (ready && !closed) {
            listenerReconnects++;
            schedule();
          }
        });
        try {
          await c.connect();
          await c.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
        } catch (err) {
          await c.end().catch(() => {});
          throw err;
        }
        if (closed) {
          await c.end().catch(() => {});
          return;
        }
        ready = true;
        backoff = 250;
      };
      const reopen = () => {
        if (closed) return;
        open().then(
          () => {
            if (!closed) onReconnect?.();
          },
          () => schedule(),
        );
      };
      try {
        await open();
      } catch (err) {
        closed = true;
        throw err;
      }
      return async () => {
        closed = true;
        clearTimeout(timer);
        await Promise.all([...clients].map((c) => c.end().catch(() => {})));
      };
    },
    async tryExclusiveLock(key, fn) {
      const client = await dedicated();
      try {
        const { rows } = await client.query<{ ok: boolean }>(
          "SELECT pg_try_advisory_lock($1) AS ok",
          [key],
        );
        if (!rows[0]?.ok) return { ran: false };
        try {
          return { ran: true, value: await fn(wrapClient(client)) };
        } finally {
          await client.query("SELECT pg_advisory_unlock($1)", [key]).catch(() => {});
        }
      } finally {
        await client.end().catch(() => {});
      }
    },
    async withExclusiveLock(key, fn) {
      const client = await dedicated();
      try {
        await client.query("SELECT pg_advisory_lock($1)", [key]);
        try {
          return await fn(wrapClient(client));
        } finally {
          await client.query("SELECT pg_advisory_unlock($1)", [key]).catch(() => {});
        }
      } finally {
        await client.end().catch(() => {});
      }
    },
    async ping() {
      await pool.query("SELECT 1");
    },
    async close() {
      await pool.end();
    },
  };
}
