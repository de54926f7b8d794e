// Two hub processes racing on one fresh PostgreSQL database apply every migration exactly once,
// and a replica refuses to start when an applied migration's checksum no longer matches.
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadMigrations } from "../../src/store/index.js";
import { createTestDatabase, type TestDatabase } from "../support/pg.js";
import { type FlotillaProcess, killAll, SECRET_A, startFlotilla } from "./procs.js";

describe("hub replicas starting together on a fresh PostgreSQL database", () => {
  let database: TestDatabase;
  let client: pg.Client;
  const hubs: FlotillaProcess[] = [];
  const migrations = loadMigrations();

  const hubEnv = () => ({
    FLOTILLA_DATABASE_URL: database.url,
    FLOTILLA_SESSION_SECRET: SECRET_A,
  });

  beforeAll(async () => {
    database = await createTestDatabase("mp_migrations");
    client = new pg.Client({ connectionString: database.url });
    await client.connect();
  });

  afterAll(async () => {
    await Promise.all(hubs.map((h) => h.stop(10_000)));
    await killAll();
    await client?.end();
    await database?.drop();
  });

  it("both reach /ready and every migration is recorded exactly once, applied by one of them", async () => {
    // Spawned back to back, so both reach the migration runner within milliseconds of each other.
    const [first, second] = await Promise.all([
      startFlotilla("hub", { env: hubEnv() }),
      startFlotilla("hub", { env: hubEnv() }),
    ]);
    hubs.push(first!, second!);
    await Promise.all(hubs.map((h) => h.waitReady(30_000)));

    const { rows } = await client.query<{ version: number; name: string; checksum: string }>(
      "SELECT version, name, checksum FROM flotilla_migrations ORDER BY version",
    );
    expect(rows).toEqual(
      migrations.map((m) => ({ version: m.version, name: m.name, checksum: m.checksum })),
    );
    const counts = await client.query<{ version: number; n: number }>(
      "SELECT version, count(*)::int AS n FROM flotilla_migrations GROUP BY version ORDER BY version",
    );
    expect(counts.rows).toEqual(migrations.map((m) => ({ version: m.version, n: 1 })));

    // Each process reports what it applied: together exactly the full list, with no overlap.
    const applied = hubs.flatMap((h) => {
      const ready = h.logs().find((r) => r.msg === "store ready");
      expect(ready, h.describe()).toBeDefined();
      return ready!.applied as number[];
    });
    expect(applied.sort((a, b) => a - b)).toEqual(migrations.map((m) => m.version));

    for (const h of hubs) {
      expect(h.errorLogs(), h.describe()).toEqual([]);
      expect(h.exitStatus(), h.describe()).toBeNull();
    }
  }, 90_000);

  it("a replica started after an applied migration's checksum changed exits non-zero naming the migration", async () => {
    expect(hubs).toHaveLength(2);
    await client.query("UPDATE flotilla_migrations SET checksum = 'x' WHERE version = 1");

    const third = await startFlotilla("hub", { env: hubEnv() });
    hubs.push(third);
    const exit = await third.waitExit(30_000);
    expect(exit.code, third.describe()).not.toBe(0);
    expect(exit.code, third.describe()).not.toBeNull();
    expect(third.stderr()).toContain("store.migration_changed");
    expect(third.stderr()).toMatch(/migration 1 \(identity\) was changed/);

    // The replicas already running are not affected by the refused start.
    for (const h of hubs.slice(0, 2)) {
      const res = await fetch(`${h.url}/ready`);
      expect(res.status, h.describe()).toBe(200);
    }
  }, 90_000);
});
