// `flotilla migrate`: a populated embedded installation (the fixture generator's rows in every
// table) copied into PostgreSQL by the real command: counts and rows verified, a rerun copies
// nothing twice, every accepted --from form works, and --drop-source removes the source only
// after a verified copy.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate, openPglite, openPostgres, parseEmbeddedSource } from "../../src/store/index.js";
import {
  comparable,
  expectedRows,
  FIXTURES,
  type FixtureReport,
  readBack,
  seedFixtures,
} from "../support/fixtures.js";
import { createTestDatabase, type TestDatabase } from "../support/pg.js";
import { CLI, ROOT } from "./procs.js";

function flotillaMigrate(args: string[], cwd = ROOT) {
  return spawnSync(process.execPath, [CLI, "migrate", ...args], {
    cwd,
    encoding: "utf8",
    env: { ...process.env, FLOTILLA_DATABASE_URL: "" },
    timeout: 120_000,
  });
}

describe("flotilla migrate from an embedded installation to PostgreSQL", () => {
  let dir: string;
  let dataDir: string;
  let target: TestDatabase;
  let seeded: FixtureReport;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "flotilla-migrate-"));
    dataDir = join(dir, "data");
    const source = await openPglite(dataDir);
    await migrate(source);
    seeded = await seedFixtures(source);
    await source.close();
    target = await createTestDatabase("mp_migrate");
  }, 120_000);

  afterAll(async () => {
    await target?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("copies every table, in foreign-key order, with every row and value intact", async () => {
    const r = flotillaMigrate(["--from", dataDir, "--to", target.url, "--json"]);
    expect(r.status, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as {
      tables: Array<{ table: string; source: number; inserted: number; target: number }>;
    };
    for (const [table, count] of Object.entries(seeded)) {
      expect(
        summary.tables.find((t) => t.table === table),
        table,
      ).toMatchObject({
        source: count,
        inserted: count,
        target: count,
      });
    }
    const db = openPostgres(target.url, { max: 2 });
    try {
      for (const fixture of FIXTURES) {
        const rows = await readBack(db, fixture);
        expect(rows.map(comparable), fixture.table).toEqual(expectedRows(fixture).map(comparable));
      }
    } finally {
      await db.close();
    }
  }, 120_000);

  it("a rerun copies nothing twice and still verifies every count", () => {
    const r = flotillaMigrate(["--from", dataDir, "--to", target.url, "--json"]);
    expect(r.status, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as { copied: number; rows: number };
    expect(summary.copied).toBe(0);
    expect(summary.rows).toBe(Object.values(seeded).reduce((a, b) => a + b, 0));
  }, 120_000);

  it("a rerun brings a row that changed since the first copy up to date", async () => {
    const db = openPostgres(target.url, { max: 1 });
    try {
      const { rows } = await db.query<{ id: string; name: string }>(
        "SELECT id, name FROM organizations ORDER BY id LIMIT 1",
      );
      await db.query("UPDATE organizations SET name = 'stale copy' WHERE id = $1", [rows[0]!.id]);
      const r = flotillaMigrate(["--from", dataDir, "--to", target.url, "--json"]);
      expect(r.status, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).copied).toBe(1);
      const after = await db.query<{ name: string }>(
        "SELECT name FROM organizations WHERE id = $1",
        [rows[0]!.id],
      );
      expect(after.rows[0]!.name).toBe(rows[0]!.name);
    } finally {
      await db.close();
    }
  }, 120_000);

  it.each([
    ["pglite:///abs/path", () => `pglite://${dataDir}`, ROOT],
    ["pglite://rel/path", () => `pglite://${basename(dataDir)}`, undefined],
    ["file:/abs/path", () => `file:${dataDir}`, ROOT],
    ["file:///abs/path", () => `file://${dataDir}`, ROOT],
    ["a bare relative path", () => basename(dataDir), undefined],
  ])(
    "accepts --from as %s",
    (_form, from, cwd) => {
      const r = flotillaMigrate(["--from", from(), "--to", target.url, "--json"], cwd ?? dir);
      expect(r.status, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).copied).toBe(0);
    },
    120_000,
  );

  it("parses each form to the same directory, and refuses other schemes", () => {
    for (const form of [`pglite://${dataDir}`, `file:${dataDir}`, `file://${dataDir}`, dataDir])
      expect(parseEmbeddedSource(form)).toBe(dataDir);
    expect(parseEmbeddedSource("pglite://data", dir)).toBe(dataDir);
    expect(parseEmbeddedSource("data", dir)).toBe(dataDir);
    expect(() => parseEmbeddedSource("postgres://x/y")).toThrow(/expected a data directory/);
  });

  it("--drop-source keeps the source when the copy fails, and removes only the store after a verified copy", async () => {
    // A target that already holds another installation's rows: counts cannot match.
    const other = await createTestDatabase("mp_migrate_other");
    try {
      const db = openPostgres(other.url, { max: 2 });
      await migrate(db);
      await db.query(
        "INSERT INTO organizations (id, slug, name) VALUES ('00000000-0000-7000-8000-00000000f00d', 'someone-else', 'Someone else')",
      );
      await db.close();
      const refused = flotillaMigrate(["--from", dataDir, "--to", other.url, "--drop-source"]);
      expect(refused.status).not.toBe(0);
      expect(refused.stderr).toContain("counts differ, nothing was copied");
      expect(existsSync(join(dataDir, "pgdata"))).toBe(true);
    } finally {
      await other.drop();
    }
    // The local agent's state and its services' volumes live beside the store: they stay.
    mkdirSync(join(dataDir, "agent", "volumes", "db", "data"), { recursive: true });
    writeFileSync(join(dataDir, "agent", "volumes", "db", "data", "PG_VERSION"), "16\n");
    const done = flotillaMigrate(["--from", dataDir, "--to", target.url, "--drop-source"]);
    expect(done.status, done.stderr).toBe(0);
    expect(done.stdout).toContain("Removed the embedded store");
    expect(existsSync(join(dataDir, "pgdata"))).toBe(false);
    expect(existsSync(join(dataDir, "agent", "volumes", "db", "data", "PG_VERSION"))).toBe(true);
  }, 120_000);
});
