// The fixture generator covers every table the migrations create, on both engines, and what it
// writes reads back unchanged. Fails when a migration adds a table and FIXTURES does not fill it.
import { beforeAll, expect, it } from "vitest";
import { describeEachEngine } from "../support/engines.js";
import {
  emptyTables,
  expectedRows,
  FIXTURE_TABLES,
  FIXTURES,
  type FixtureReport,
  listTables,
  MAX,
  MAX_LENGTHS,
  MIGRATIONS_TABLE,
  MIXED,
  readBack,
  seedFixtures,
  UNICODE,
} from "../support/fixtures.js";

describeEachEngine("fixture generator", (store) => {
  let report: FixtureReport;
  beforeAll(async () => {
    report = await seedFixtures(store());
  });

  it("seeding reports, per table in foreign-key order, the rows it inserted", () => {
    expect(Object.keys(report)).toEqual(FIXTURE_TABLES);
    for (const fixture of FIXTURES) {
      expect(report[fixture.table], fixture.table).toBe(fixture.rows.length);
      expect(fixture.rows.length, fixture.table).toBeGreaterThan(0);
    }
  });

  it("leaves no table of the migrated schema empty (add rows to FIXTURES for a new table)", async () => {
    const tables = await listTables(store());
    expect(tables.length).toBeGreaterThanOrEqual(FIXTURE_TABLES.length);
    expect(await emptyTables(store())).toEqual([]);
    // The generator names only tables that exist, and the schema has none the generator skips.
    expect([...FIXTURE_TABLES].sort()).toEqual(tables);
  });

  it("the table listing excludes only the migration runner's bookkeeping table, which exists", async () => {
    const { rows } = await store().query<{ n: number }>(
      `SELECT count(*)::int AS n FROM information_schema.tables
       WHERE table_schema = 'public' AND table_type = 'BASE TABLE' AND table_name = $1`,
      [MIGRATIONS_TABLE],
    );
    expect(rows[0]!.n).toBe(1);
    expect(await listTables(store())).not.toContain(MIGRATIONS_TABLE);
  });

  it("the coverage check names a table a new migration added without fixture rows", async () => {
    // Inside a transaction that is rolled back, so the schema other tests see is unchanged.
    const sentinel = new Error("roll back");
    const seen = store().tx(async (tx) => {
      await tx.exec("CREATE TABLE zz_added_later (id uuid PRIMARY KEY, note text)");
      expect(await emptyTables(tx)).toContain("zz_added_later");
      throw sentinel;
    });
    await expect(seen).rejects.toBe(sentinel);
    expect(await listTables(store())).not.toContain("zz_added_later");
  });

  for (const fixture of FIXTURES) {
    it(`${fixture.table}: every seeded column reads back equal (unicode, JSON, bytes, instants)`, async () => {
      expect(await readBack(store(), fixture)).toEqual(expectedRows(fixture));
    });
  }

  it("maximum lengths allowed by the CHECK constraints are stored whole (counted by PostgreSQL)", async () => {
    for (const { table, column, length } of MAX_LENGTHS) {
      const { rows } = await store().query<{ n: number }>(
        `SELECT max(length(${column}))::int AS n FROM ${table}`,
      );
      expect(rows[0]!.n, `${table}.${column}`).toBe(length);
    }
  });

  it("unicode comes back byte for byte: emoji, CJK, RTL and unnormalized combining marks", async () => {
    const { rows } = await store().query<{ value: string; hex: string }>(
      "SELECT value, encode(convert_to(value, 'UTF8'), 'hex') AS hex FROM config_entries WHERE key = $1",
      [MAX.configKey],
    );
    expect(rows[0]!.value).toBe(MIXED);
    for (const sample of Object.values(UNICODE)) expect(rows[0]!.value).toContain(sample);
    // What the server stores is exactly the UTF-8 of what was sent, not a re-encoding.
    expect(rows[0]!.hex).toBe(Buffer.from(MIXED, "utf8").toString("hex"));
    // U+0301 stays a separate code point (NFC would have folded "e\u0301" into "é").
    expect(rows[0]!.value).toContain("e\u0301");
  });

  it("the deferred and self-referencing foreign keys hold: desired and source deployments resolve", async () => {
    const { rows } = await store().query<{ slug: string; number: number; source: number | null }>(
      `SELECT s.slug, d.number, src.number AS source
       FROM services s
       JOIN deployments d ON d.id = s.desired_deployment_id
       LEFT JOIN deployments src ON src.id = d.source_deployment_id`,
    );
    expect(rows).toEqual([{ slug: "api", number: 2, source: 1 }]);
  });

  it("a secret entry keeps only the sealed box and key id; a variable keeps only its value", async () => {
    const { rows } = await store().query<{
      kind: string;
      has_value: boolean;
      sealed_bytes: number | null;
      key_id: string | null;
    }>(
      `SELECT kind, value IS NOT NULL AS has_value, length(sealed) AS sealed_bytes, key_id
       FROM config_entries ORDER BY kind, key`,
    );
    expect(rows).toEqual([
      { kind: "secret", has_value: false, sealed_bytes: 52, key_id: "mk-2024-01" },
      { kind: "variable", has_value: true, sealed_bytes: null, key_id: null },
      { kind: "variable", has_value: true, sealed_bytes: null, key_id: null },
    ]);
  });

  it("omitted columns took their defaults (empty display name, -infinity, empty details)", async () => {
    const users = await store().query<{ display_name: string; valid_after: string }>(
      "SELECT display_name, sessions_valid_after::text AS valid_after FROM users WHERE email = $1",
      ["Mixed.Case@Example.COM"],
    );
    expect(users.rows).toEqual([{ display_name: "", valid_after: "-infinity" }]);
    const audit = await store().query<{ details: unknown }>(
      "SELECT details FROM audit_log WHERE action = 'identity.login.failed'",
    );
    expect(audit.rows).toEqual([{ details: {} }]);
  });
});
