// PostgreSQL adapter: a LISTEN connection that is cut comes back and says so; a try-lock held
// elsewhere skips instead of waiting.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate, openPostgres, type PgDb } from "../../src/store/index.js";
import { createTestDatabase, type TestDatabase } from "../support/pg.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("postgres adapter: resilient LISTEN and try-lock", () => {
  let database: TestDatabase;
  let db: PgDb;

  beforeAll(async () => {
    database = await createTestDatabase("listen_trylock");
    db = openPostgres(database.url, { max: 4 });
    await migrate(db);
  });
  afterAll(async () => {
    await db?.close();
    await database?.drop();
  });

  it("after pg_terminate_backend the listener reconnects, calls onReconnect, and hears later notifications", async () => {
    const heard: string[] = [];
    let reconnected = 0;
    const unlisten = await db.listen(
      "flotilla_test_channel",
      (p) => heard.push(p),
      () => reconnected++,
    );
    try {
      await db.query("SELECT pg_notify('flotilla_test_channel', 'one')");
      for (let i = 0; i < 50 && heard.length < 1; i++) await sleep(20);
      const cut = await db.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'`,
      );
      expect(cut.rowCount).toBe(1);
      for (let i = 0; i < 100 && reconnected < 1; i++) await sleep(20);
      expect(reconnected).toBe(1);
      expect(db.listenerReconnects).toBe(1);
      await db.query("SELECT pg_notify('flotilla_test_channel', 'two')");
      for (let i = 0; i < 50 && heard.length < 2; i++) await sleep(20);
      expect(heard).toEqual(["one", "two"]);
    } finally {
      await unlisten();
    }
  });

  it("every channel shares one LISTEN connection, and each comes back after it is cut", async () => {
    const channels = ["flotilla_test_a", "flotilla_test_b", "flotilla_test_c"];
    const heard = new Map<string, string[]>(channels.map((c) => [c, []]));
    const reconnected = new Map<string, number>(channels.map((c) => [c, 0]));
    const unlisten = await Promise.all(
      channels.map((c) =>
        db.listen(
          c,
          (p) => heard.get(c)!.push(p),
          () => reconnected.set(c, reconnected.get(c)! + 1),
        ),
      ),
    );
    const listeners = async () =>
      (
        await db.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity
           WHERE datname = current_database() AND query ILIKE '%LISTEN%' AND pid <> pg_backend_pid()`,
        )
      ).rows[0]!.n;
    try {
      expect(await listeners()).toBe(1);
      await db.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'`,
      );
      for (let i = 0; i < 150 && [...reconnected.values()].some((n) => n < 1); i++) await sleep(20);
      expect([...reconnected.values()]).toEqual([1, 1, 1]);
      for (const c of channels) await db.query("SELECT pg_notify($1, $1)", [c]);
      for (let i = 0; i < 50 && [...heard.values()].some((h) => h.length < 1); i++) await sleep(20);
      expect(Object.fromEntries(heard)).toEqual(Object.fromEntries(channels.map((c) => [c, [c]])));
      expect(await listeners()).toBe(1);
    } finally {
      await Promise.all(unlisten.map((u) => u()));
    }
    // The server ends the closed connection's backend a moment after the client goes.
    for (let i = 0; i < 50 && (await listeners()) > 0; i++) await sleep(20);
    expect(await listeners()).toBe(0);
  });

  it("tryExclusiveLock skips (ran: false) while another connection holds the lock, and runs once it is free", async () => {
    const key = 0x7e57_0001;
    let release: () => void = () => {};
    let acquired: () => void = () => {};
    const holding = new Promise<void>((r) => (acquired = r));
    const held = db.withExclusiveLock(key, () => {
      acquired();
      return new Promise<void>((r) => (release = r));
    });
    await holding;
    const skipped = await db.tryExclusiveLock(key, async () => "ran");
    expect(skipped).toEqual({ ran: false });
    release();
    await held;
    expect(await db.tryExclusiveLock(key, async () => "ran")).toEqual({ ran: true, value: "ran" });
  });
});
