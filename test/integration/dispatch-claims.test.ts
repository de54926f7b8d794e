// Dispatch claims are compare-and-sets: six drains of one server at once hand each dispatch out
// exactly once; a rolled-back intent sends no wake-up; complete and fail hold only while the
// dispatch is in progress.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DispatchStore } from "../../src/hub/servers/index.js";
import { migrate, openPostgres, type PgDb } from "../../src/store/index.js";
import { createTestDatabase, type TestDatabase } from "../support/pg.js";

describe("dispatch claims on PostgreSQL", () => {
  let database: TestDatabase;
  let db: PgDb;
  let store: DispatchStore;
  const org = "00000000-0000-7000-8000-000000000001";
  const server = "00000000-0000-7000-8000-000000000002";

  beforeAll(async () => {
    database = await createTestDatabase("dispatch_claims");
    db = openPostgres(database.url, { max: 10 });
    await migrate(db);
    store = new DispatchStore(db);
    await db.query("INSERT INTO organizations (id, slug, name) VALUES ($1, 'org', 'Org')", [org]);
    await db.query(
      `INSERT INTO servers (id, organization_id, name, secret_sealed, secret_key_id)
       VALUES ($1, $2, 'box', '\\x00', 'k')`,
      [server, org],
    );
  });
  afterAll(async () => {
    await db?.close();
    await database?.drop();
  });

  it("six concurrent drains of one server claim each of 300 dispatches exactly once", async () => {
    for (let i = 0; i < 300; i++)
      await db.tx((tx) => store.insert(tx, { organizationId: org, serverId: server, op: "job" }));
    const claimedBy = new Map<string, string[]>();
    const drain = async (hub: string) => {
      for (;;) {
        const pending = await store.pendingFor(server);
        if (pending.length === 0) return;
        for (const d of pending) {
          const won = await store.claim(d.id, hub);
          if (won) claimedBy.set(d.id, [...(claimedBy.get(d.id) ?? []), hub]);
        }
      }
    };
    await Promise.all(["a", "b", "c", "d", "e", "f"].map(drain));
    expect(claimedBy.size).toBe(300);
    expect([...claimedBy.values()].filter((hubs) => hubs.length !== 1)).toEqual([]);
    // The work was shared, not done by one drain alone (else the test proves nothing).
    expect(new Set([...claimedBy.values()].flat()).size).toBeGreaterThan(1);
  });

  it("a rolled-back intent leaves no row and sends no wake-up; a committed one wakes once", async () => {
    const heard: string[] = [];
    const unlisten = await db.listen("flotilla_dispatch", (p) => heard.push(p));
    try {
      await db
        .tx(async (tx) => {
          await store.insert(tx, { organizationId: org, serverId: server, op: "job" });
          throw new Error("the business write failed");
        })
        .catch(() => {});
      await db.tx((tx) => store.insert(tx, { organizationId: org, serverId: server, op: "stop" }));
      await new Promise((r) => setTimeout(r, 300));
      expect(heard).toEqual([server]);
      const { rows } = await db.query<{ op: string; n: number }>(
        "SELECT op, count(*)::int AS n FROM dispatches WHERE state = 'pending' GROUP BY op",
      );
      expect(rows).toEqual([{ op: "stop", n: 1 }]);
    } finally {
      await unlisten();
    }
  });

  it("complete and fail apply only to a dispatch in progress: a late or repeated result changes nothing", async () => {
    const d = await db.tx((tx) =>
      store.insert(tx, { organizationId: org, serverId: server, op: "job" }),
    );
    expect(await store.complete(d.id, "a", { ok: 1 })).toBe(false); // not claimed yet
    expect(await store.claim(d.id, "a")).not.toBeNull();
    expect(await store.claim(d.id, "b")).toBeNull();
    expect(await store.complete(d.id, "a", { ok: 1 })).toBe(true);
    expect(await store.fail(d.id, "a", "late failure")).toBe(false);
    expect(await store.complete(d.id, "a", { ok: 2 })).toBe(false);
    const row = await store.get(d.id);
    expect(row).toMatchObject({ state: "done", result: { ok: 1 }, error: null, attempts: 1 });
  });

  it("release, complete and fail move a dispatch only for the replica that holds its claim", async () => {
    const d = await db.tx((tx) =>
      store.insert(tx, { organizationId: org, serverId: server, op: "job" }),
    );
    expect(await store.claim(d.id, "a")).not.toBeNull();
    // Replica a's lease ran out and the dispatch went to b (the reaper, then b's claim).
    await db.query(
      "UPDATE dispatches SET deadline_at = now() - interval '1 second' WHERE id = $1",
      [d.id],
    );
    await store.reap(5);
    expect(await store.claim(d.id, "b")).not.toBeNull();
    // a's late answer or release must not touch b's delivery.
    expect(await store.release(d.id, "a")).toBe(false);
    expect(await store.complete(d.id, "a", { from: "a" })).toBe(false);
    expect(await store.fail(d.id, "a", "a gave up")).toBe(false);
    expect(await store.get(d.id)).toMatchObject({
      state: "in_progress",
      claimedBy: "b",
      result: null,
      error: null,
    });
    expect(await store.release(d.id, "b")).toBe(true);
    expect(await store.get(d.id)).toMatchObject({ state: "pending", claimedBy: null });
    expect(await store.claim(d.id, "b")).not.toBeNull();
    expect(await store.fail(d.id, "b", "the job failed", { exit: 1 })).toBe(true);
    expect(await store.get(d.id)).toMatchObject({
      state: "failed",
      error: "the job failed",
      result: { exit: 1 },
    });
  });

  it("six concurrent batch claims of one server hand each of 300 dispatches out exactly once, oldest first", async () => {
    await db.query("DELETE FROM dispatches");
    for (let i = 0; i < 300; i++)
      await db.tx((tx) => store.insert(tx, { organizationId: org, serverId: server, op: "stop" }));
    const claimedBy = new Map<string, string[]>();
    const drain = async (hub: string) => {
      for (;;) {
        const batch = await store.claimBatch(server, hub, 25);
        if (batch.length === 0) return;
        // Each batch comes oldest first: lifecycle operations reach the agent in intent order.
        const times = batch.map((d) => d.createdAt.getTime());
        expect(times).toEqual([...times].sort((a, b) => a - b));
        for (const d of batch) claimedBy.set(d.id, [...(claimedBy.get(d.id) ?? []), hub]);
      }
    };
    await Promise.all(["a", "b", "c", "d", "e", "f"].map(drain));
    expect(claimedBy.size).toBe(300);
    expect([...claimedBy.values()].filter((hubs) => hubs.length !== 1)).toEqual([]);
    const { rows } = await db.query<{ state: string; attempts: number; n: number }>(
      "SELECT state, attempts, count(*)::int AS n FROM dispatches GROUP BY state, attempts",
    );
    expect(rows).toEqual([{ state: "in_progress", attempts: 1, n: 300 }]);
    expect(new Set([...claimedBy.values()].flat()).size).toBeGreaterThan(1);
  });

  it("finish records an outcome only for a dispatch in progress on the reporting server, once", async () => {
    const other = "00000000-0000-7000-8000-000000000003";
    await db.query(
      `INSERT INTO servers (id, organization_id, name, secret_sealed, secret_key_id)
       VALUES ($1, $2, 'other', '\\x00', 'k') ON CONFLICT DO NOTHING`,
      [other, org],
    );
    const d = await db.tx((tx) =>
      store.insert(tx, { organizationId: org, serverId: server, op: "stop" }),
    );
    expect(await store.finish(d.id, server, { ok: true })).toBeNull(); // not claimed yet
    await store.claim(d.id, "a");
    expect(await store.finish(d.id, other, { ok: true })).toBeNull(); // another server's agent
    const done = await store.finish(d.id, server, { ok: false, error: "exit 3", result: { c: 3 } });
    expect(done).toMatchObject({ state: "failed", error: "exit 3", result: { c: 3 } });
    expect(await store.finish(d.id, server, { ok: true })).toBeNull(); // a repeated result
    expect(await store.get(d.id)).toMatchObject({ state: "failed", error: "exit 3" });
  });

  it("signals the outcome on flotilla_dispatch_done only for a dispatch someone waits for", async () => {
    const heard: string[] = [];
    const unlisten = await db.listen("flotilla_dispatch_done", (p) => heard.push(p));
    try {
      const quiet = await db.tx((tx) =>
        store.insert(tx, { organizationId: org, serverId: server, op: "stop" }),
      );
      const awaited = await db.tx((tx) =>
        store.insert(tx, { organizationId: org, serverId: server, op: "stop", notifyDone: true }),
      );
      for (const d of [quiet, awaited]) {
        await store.claim(d.id, "a");
        await store.finish(d.id, server, { ok: true });
      }
      await new Promise((r) => setTimeout(r, 300));
      expect(heard).toEqual([awaited.id]);
    } finally {
      await unlisten();
    }
  });
});
