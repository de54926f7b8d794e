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
  const listener = new SharedListener(clientConfig, () => listenerReconnects++);
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
    listen: (channel, fn, onReconnect) => listener.subscribe(channel, fn, onReconnect),
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
      await listener.close();
      await pool.end();
    },
  };
}

interface Subscription {
  channel: string;
  fn: (payload: string) => void;
  onReconnect: (() => void) | undefined;
}

/**
 * One dedicated LISTEN connection per store, shared by every channel the process listens on (a
 * hub listens on seven: dispatches, events, outbox, principals, ...; one connection each would
 * cost a replica seven of PostgreSQL's default 100). On loss (a restart, pg_terminate_backend)
 * it reconnects with backoff (250 ms doubling to 10 s), LISTENs every channel again and calls
 * each subscriber's onReconnect: notifications sent meanwhile are lost, so they re-read.
 */
class SharedListener {
  private readonly subs = new Set<Subscription>();
  private client: pg.Client | undefined;
  private opening: Promise<pg.Client> | undefined;
  private readonly listening = new Set<string>();
  private backoff = 250;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly config: pg.ClientConfig,
    private readonly countReconnect: () => void,
  ) {}

  async subscribe(
    channel: string,
    fn: (payload: string) => void,
    onReconnect?: () => void,
  ): Promise<() => Promise<void>> {
    const sub: Subscription = { channel, fn, onReconnect };
    this.subs.add(sub);
    try {
      const client = this.client ?? (await this.open());
      if (!this.listening.has(channel)) {
        await client.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
        this.listening.add(channel);
      }
    } catch (err) {
      this.subs.delete(sub);
      throw err;
    }
    return async () => {
      if (!this.subs.delete(sub)) return;
      if ([...this.subs].some((s) => s.channel === channel)) return;
      this.listening.delete(channel);
      if (this.subs.size === 0) await this.end();
      else await this.client?.query(`UNLISTEN ${pg.escapeIdentifier(channel)}`).catch(() => {});
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.subs.clear();
    await this.end();
  }

  /** Opens the connection (once, however many subscribers ask at the same moment). */
  private open(): Promise<pg.Client> {
    this.opening ??= (async () => {
      const c = new pg.Client(this.config);
      c.on("error", () => {});
      c.on("notification", (msg) => {
        for (const s of this.subs) if (s.channel === msg.channel) s.fn(msg.payload ?? "");
      });
      try {
        await c.connect();
        this.listening.clear();
        for (const channel of new Set([...this.subs].map((s) => s.channel))) {
          await c.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
          this.listening.add(channel);
        }
      } catch (err) {
        await c.end().catch(() => {});
        throw err;
      }
      c.once("end", () => {
        if (this.client !== c) return;
        this.client = undefined;
        this.listening.clear();
        if (!this.closed && this.subs.size > 0) {
          this.countReconnect();
          this.schedule();
        }
      });
      this.client = c;
      this.backoff = 250;
      return c;
    })().finally(() => {
      this.opening = undefined;
    });
    return this.opening;
  }

  private schedule(): void {
    if (this.closed || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.closed || this.subs.size === 0) return;
      // A new subscriber may have reopened it already; the others still missed what was sent.
      (this.client ? Promise.resolve(this.client) : this.open()).then(
        () => {
          for (const s of [...this.subs]) s.onReconnect?.();
        },
        () => this.schedule(),
      );
    }, this.backoff);
    this.timer.unref();
    this.backoff = Math.min(this.backoff * 2, 10_000);
  }

  private async end(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.opening?.catch(() => {});
    const c = this.client;
    this.client = undefined;
    this.listening.clear();
    await c?.end().catch(() => {});
  }
}
