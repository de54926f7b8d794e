// PostgreSQL pool settings reach the pool and its connections, with the documented defaults and
// per-setting overrides; the embedded data directory's lock file admits one store at a time.
// (Two processes racing for one directory: test/multiprocess/shutdown.test.ts.)
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  acquireLockFile,
  DEFAULT_POOL_SETTINGS,
  openPglite,
  openPostgres,
  type PgDb,
  type PoolSettings,
} from "../../src/store/index.js";
import { createTestDatabase, type TestDatabase } from "../support/pg.js";

async function waitFor(what: string, check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A promise and the function that resolves it: holds a connection until the test lets go. */
function gate(): { wait: Promise<void>; open(): void } {
  let open!: () => void;
  const wait = new Promise<void>((r) => {
    open = r;
  });
  return { wait, open };
}

describe("PostgreSQL pool settings", () => {
  let database: TestDatabase;
  const opened: PgDb[] = [];
  const open = (settings?: Partial<PoolSettings>) => {
    const db = openPostgres(database.url, settings);
    opened.push(db);
    return db;
  };
  const setting = async (db: PgDb, name: string) =>
    (await db.query<{ v: string }>("SELECT current_setting($1) AS v", [name])).rows[0]!.v;

  beforeAll(async () => {
    database = await createTestDatabase("pool_settings");
  });
  afterAll(async () => {
    // Bounded: a pool whose client is still checked out never ends; the forced drop still runs.
    const closing = Promise.all(opened.map((db) => db.close().catch(() => {})));
    await Promise.race([closing, new Promise((r) => setTimeout(r, 5_000))]);
    await database?.drop();
  });

  it("the defaults are the documented ones (docs/configuration.md)", () => {
    const doc = readFileSync(join(import.meta.dirname, "../../docs/configuration.md"), "utf8");
    const documented = (flag: string) => {
      const match = new RegExp(`\\| \`${flag}\` \\| [^|]+ \\| \`(\\d+)\` \\|`).exec(doc);
      if (!match) throw new Error(`${flag} is not in docs/configuration.md`);
      return Number(match[1]);
    };
    expect(DEFAULT_POOL_SETTINGS).toEqual({
      max: documented("--db-pool-max"),
      idleTimeoutMs: documented("--db-idle-timeout-ms"),
      maxLifetimeSeconds: documented("--db-max-lifetime-s"),
      connectTimeoutMs: 5_000,
      statementTimeoutMs: 30_000,
    });
    expect(doc).toContain("connection timeout 5 s, statement timeout 30 s");
  });

  it("without settings, the pool and its connections get the defaults", async () => {
    const db = open();
    expect(db.pool.options).toMatchObject({
      max: DEFAULT_POOL_SETTINGS.max,
      idleTimeoutMillis: DEFAULT_POOL_SETTINGS.idleTimeoutMs,
      maxLifetimeSeconds: DEFAULT_POOL_SETTINGS.maxLifetimeSeconds,
      connectionTimeoutMillis: DEFAULT_POOL_SETTINGS.connectTimeoutMs,
      statement_timeout: DEFAULT_POOL_SETTINGS.statementTimeoutMs,
    });
    expect(await setting(db, "statement_timeout")).toBe("30s");
    expect(await setting(db, "application_name")).toBe("flotilla");
  });

  it("an override replaces only the settings it names", async () => {
    const db = open({ max: 3, statementTimeoutMs: 1_500 });
    expect(db.pool.options).toMatchObject({
      max: 3,
      idleTimeoutMillis: DEFAULT_POOL_SETTINGS.idleTimeoutMs,
      maxLifetimeSeconds: DEFAULT_POOL_SETTINGS.maxLifetimeSeconds,
      connectionTimeoutMillis: DEFAULT_POOL_SETTINGS.connectTimeoutMs,
      statement_timeout: 1_500,
    });
    expect(await setting(db, "statement_timeout")).toBe("1500ms");
  });

  it("statementTimeoutMs cancels longer statements, on pooled and on dedicated connections", async () => {
    const db = open({ statementTimeoutMs: 200 });
    await expect(db.query("SELECT pg_sleep(2)")).rejects.toMatchObject({ code: "57014" });
    await expect(
      db.withExclusiveLock(0x5157_0001, (conn) => conn.query("SELECT pg_sleep(2)")),
    ).rejects.toMatchObject({ code: "57014" });
    await expect(db.query("SELECT pg_sleep(0.05)")).resolves.toMatchObject({ rowCount: 1 });
  });

  it("max caps the pool's connections: further queries queue until one is free", async () => {
    const db = open({ max: 2 });
    const started = Date.now();
    const queries = Array.from({ length: 4 }, () => db.query("SELECT pg_sleep(0.2)"));
    await waitFor("two queued queries", () => db.pool.waitingCount === 2);
    expect(db.pool.totalCount).toBe(2);
    await Promise.all(queries);
    expect(Date.now() - started).toBeGreaterThanOrEqual(390);
    expect(db.pool.totalCount).toBe(2);
  });

  it("connectTimeoutMs bounds the wait for a pooled connection", async () => {
    const db = open({ max: 1, connectTimeoutMs: 200 });
    const hold = gate();
    const holding = db.tx(() => hold.wait);
    await waitFor(
      "the only connection to be taken",
      () => db.pool.idleCount === 0 && db.pool.totalCount === 1,
    );
    const started = Date.now();
    await expect(db.query("SELECT 1")).rejects.toThrow(/timeout/i);
    expect(Date.now() - started).toBeLessThan(2_000);
    hold.open();
    await holding;
    await expect(db.query("SELECT 1")).resolves.toMatchObject({ rowCount: 1 });
  });

  it("idleTimeoutMs closes connections left idle that long", async () => {
    const quick = open({ idleTimeoutMs: 100 });
    const slow = open();
    await Promise.all([quick.ping(), slow.ping()]);
    expect(quick.pool.totalCount).toBe(1);
    await waitFor("the idle connection to close", () => quick.pool.totalCount === 0, 3_000);
    expect(slow.pool.totalCount).toBe(1);
  });

  it("maxLifetimeSeconds recycles a connection once it is that old", async () => {
    const db = open({ max: 1, maxLifetimeSeconds: 1 });
    const backend = async () =>
      (await db.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid;
    const first = await backend();
    expect(await backend()).toBe(first);
    await new Promise((r) => setTimeout(r, 1_300));
    expect(await backend()).not.toBe(first);
  });

  it("LISTEN and advisory-lock holders use dedicated connections: they work while the pool is exhausted", async () => {
    const db = open({ max: 1, connectTimeoutMs: 500 });
    const hold = gate();
    const holding = db.tx(() => hold.wait);
    await waitFor(
      "the only connection to be taken",
      () => db.pool.idleCount === 0 && db.pool.totalCount === 1,
    );
    const got: string[] = [];
    const unlisten = await db.listen("pool_dedicated", (p) => got.push(p));
    try {
      await db.withExclusiveLock(0x5157_0002, (conn) =>
        conn.query("SELECT pg_notify('pool_dedicated', 'from the lock holder')"),
      );
      await waitFor("the notification", () => got.length > 0);
      expect(got).toEqual(["from the lock holder"]);
      expect(db.pool.totalCount).toBe(1);
    } finally {
      await unlisten();
      hold.open();
      await holding;
    }
  });

  it("ping rejects once the store is closed", async () => {
    const db = open();
    await db.ping();
    await db.close();
    await expect(db.ping()).rejects.toThrow();
  });
});

describe("the embedded data directory's lock file", () => {
  const dirs: string[] = [];
  const children: ChildProcess[] = [];
  const tempDir = () => {
    const dir = mkdtempSync(join(tmpdir(), "flotilla-lock-"));
    dirs.push(dir);
    return dir;
  };
  afterAll(() => {
    for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  it("a second open of one directory in this process fails with store.locked naming our pid; closing lets the next open in", async () => {
    const dataDir = tempDir();
    const lockPath = join(dataDir, "flotilla.lock");
    const first = await openPglite(dataDir);
    let firstClosed = false;
    try {
      await first.exec("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('survives a reopen')");
      await expect(openPglite(dataDir)).rejects.toMatchObject({
        code: "store.locked",
        message: expect.stringContaining(`process ${process.pid}`),
      });
      // The refused open neither removed the lock nor disturbed the store that holds it.
      expect(readFileSync(lockPath, "utf8").trim()).toBe(String(process.pid));
      await first.ping();

      await first.close();
      firstClosed = true;
      expect(existsSync(lockPath)).toBe(false);
      await expect(first.ping()).rejects.toThrow();

      const next = await openPglite(dataDir);
      try {
        expect(readFileSync(lockPath, "utf8").trim()).toBe(String(process.pid));
        const { rows } = await next.query("SELECT v FROM kept");
        expect(rows).toEqual([{ v: "survives a reopen" }]);
      } finally {
        await next.close();
      }
      expect(existsSync(lockPath)).toBe(false);
    } finally {
      if (!firstClosed) await first.close();
    }
  });

  it("acquireLockFile twice on one path in this process (however spelled) refuses until released", () => {
    const dir = tempDir();
    const path = join(dir, "flotilla.lock");
    const lock = acquireLockFile(path);
    expect(() => acquireLockFile(join(dir, ".", "sub", "..", "flotilla.lock"))).toThrow(
      expect.objectContaining({
        code: "store.locked",
        message: expect.stringContaining(`process ${process.pid}`),
      }),
    );
    lock.release();
    expect(existsSync(path)).toBe(false);
    const again = acquireLockFile(path);
    expect(readFileSync(path, "utf8").trim()).toBe(String(process.pid));
    again.release();
  });

  it("a lock file naming another live process refuses with store.locked naming that pid", async () => {
    const holder = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60_000)"], {
      stdio: "ignore",
    });
    children.push(holder);
    await new Promise<void>((resolve, reject) => {
      holder.once("spawn", resolve);
      holder.once("error", reject);
    });
    const path = join(tempDir(), "flotilla.lock");
    writeFileSync(path, `${holder.pid}\n`);
    try {
      expect(() => acquireLockFile(path)).toThrow(
        expect.objectContaining({
          code: "store.locked",
          message: expect.stringContaining(`process ${holder.pid}`),
        }),
      );
      expect(readFileSync(path, "utf8").trim()).toBe(String(holder.pid));
    } finally {
      holder.kill("SIGKILL");
    }
  });

  it("a lock file naming this pid that this process does not hold (pid reused after a crash) is taken over", () => {
    const path = join(tempDir(), "flotilla.lock");
    writeFileSync(path, `${process.pid}\n`);
    const lock = acquireLockFile(path);
    expect(readFileSync(path, "utf8").trim()).toBe(String(process.pid));
    lock.release();
    expect(existsSync(path)).toBe(false);
  });

  it("release leaves alone a lock file that no longer names this process", () => {
    const path = join(tempDir(), "flotilla.lock");
    const lock = acquireLockFile(path);
    writeFileSync(path, "4194304\n");
    lock.release();
    expect(readFileSync(path, "utf8")).toBe("4194304\n");
  });
});

describe("the embedded store's memory", () => {
  it("runs PostgreSQL with 16 MB of shared buffers (it touches them all at start: 128 MB cost ~135 MB RSS), keeping the other defaults", async () => {
    const db = await openPglite("memory://");
    try {
      const { rows } = await db.query<{ shared_buffers: string }>("SHOW shared_buffers");
      expect(rows[0]!.shared_buffers).toBe("16MB");
      // PGlite's own start parameters still apply (one of them: no parallel workers).
      const workers = await db.query<{ max_worker_processes: string }>("SHOW max_worker_processes");
      expect(workers.rows[0]!.max_worker_processes).toBe("0");
    } finally {
      await db.close();
    }
  });
});
