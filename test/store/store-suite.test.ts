// The backend-agnostic store suite: every behaviour of the Db port, the migration runner and the
// schema's CHECK constraints, proved on PGlite (PostgreSQL 18) and on PostgreSQL 15 alike.
import { randomUUID } from "node:crypto";
import { appendFileSync, cpSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type Db,
  LOCK_KEYS,
  loadMigrations,
  type Migration,
  migrate,
  type Queryable,
} from "../../src/store/index.js";
import { describeEachEngine } from "../support/engines.js";

const MIGRATIONS_DIR = join(import.meta.dirname, "../../migrations");
const UNICODE_TEXT = "🚀 東京 مرحبا שלום e\u0301 Z\u0335a\u0334";

async function waitFor(what: string, check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** What a refused statement reports: SQLSTATE and the constraint's name. */
async function refusal(
  statement: Promise<unknown>,
): Promise<{ code: string; constraint: string | undefined }> {
  try {
    await statement;
  } catch (err) {
    const e = err as { code?: string; constraint?: string };
    return { code: e.code ?? "none", constraint: e.constraint };
  }
  throw new Error("the statement was accepted");
}

async function count(q: Queryable, sql: string, params: unknown[] = []): Promise<number> {
  const { rows } = await q.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM (${sql}) AS q`,
    params,
  );
  return rows[0]!.n;
}

/** A copy of migrations/ the test may edit or extend, then a loader over it. */
function migrationsCopy(dirs: string[]): { dir: string; load(): Migration[] } {
  const dir = mkdtempSync(join(tmpdir(), "flotilla-migrations-"));
  dirs.push(dir);
  cpSync(MIGRATIONS_DIR, dir, { recursive: true });
  return { dir, load: () => loadMigrations(dir) };
}

function nextMigrationFile(dir: string, name: string, sql: string): number {
  const version = Math.max(...loadMigrations(dir).map((m) => m.version)) + 1;
  writeFileSync(join(dir, `${String(version).padStart(4, "0")}_${name}.sql`), sql);
  return version;
}

// PGlite is one connection: isolation between connections and lock contention do not exist
// there, so those cases are registered on PostgreSQL only (not reported as skipped on PGlite).
const onPostgresFor = (engine: string) =>
  engine === "postgres" ? it : (((..._args: unknown[]) => {}) as unknown as typeof it);

describeEachEngine("store suite", (store, engine) => {
  const onPostgres = onPostgresFor(engine);
  const items = "suite_items";
  beforeAll(async () => {
    await store().exec(`
      CREATE TABLE ${items} (
        id uuid PRIMARY KEY,
        label text,
        doc jsonb,
        blob bytea,
        at timestamptz,
        n bigint,
        flag boolean
      );
      CREATE TABLE suite_log (id serial PRIMARY KEY, note text NOT NULL);
    `);
  });
  const notes = (db: Queryable) =>
    db
      .query<{ note: string }>("SELECT note FROM suite_log ORDER BY id")
      .then((r) => r.rows.map((row) => row.note));

  describe("query and parameters", () => {
    it("text, uuid, nested jsonb, bytea, timestamptz, bigint, boolean and NULL round-trip as the same JS values", async () => {
      const doc = {
        name: UNICODE_TEXT,
        list: [1, "two", { three: [3.5, null, true] }],
        nested: { a: { b: { c: { d: [] } } } },
        empty: {},
      };
      const blob = Buffer.from([0, 1, 127, 128, 255, 0]);
      const at = new Date("2024-02-29T23:59:59.123Z");
      const id = randomUUID().toUpperCase();
      await store().query(
        `INSERT INTO ${items} (id, label, doc, blob, at, n, flag) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
        [id, UNICODE_TEXT, JSON.stringify(doc), blob, at, 2 ** 53 - 1, false],
      );
      await store().query(`INSERT INTO ${items} (id) VALUES ($1)`, [randomUUID()]);
      const { rows } = await store().query<Record<string, unknown>>(
        `SELECT id, label, doc, blob, at, n, flag FROM ${items} WHERE id = $1`,
        [id],
      );
      const row = rows[0]!;
      expect(row.id).toBe(id.toLowerCase());
      expect(row.label).toBe(UNICODE_TEXT);
      expect(row.doc).toEqual(doc);
      expect(row.blob).toBeInstanceOf(Uint8Array);
      expect(Buffer.from(row.blob as Uint8Array).equals(blob)).toBe(true);
      expect(row.at).toBeInstanceOf(Date);
      expect((row.at as Date).toISOString()).toBe(at.toISOString());
      expect(row.n).toBe(2 ** 53 - 1);
      expect(row.flag).toBe(false);

      const nulls = await store().query<Record<string, unknown>>(
        `SELECT label, doc, blob, at, n, flag FROM ${items} WHERE id <> $1`,
        [id],
      );
      expect(nulls.rows).toEqual([
        { label: null, doc: null, blob: null, at: null, n: null, flag: null },
      ]);
    });

    it("NULL parameters bind as NULL, and ±infinity timestamps read back as ±Infinity", async () => {
      const { rows } = await store().query<Record<string, unknown>>(
        "SELECT $1::text IS NULL AS null_text, $2::jsonb IS NULL AS null_json, '-infinity'::timestamptz AS lo, 'infinity'::timestamptz AS hi",
        [null, null],
      );
      expect(rows).toEqual([
        {
          null_text: true,
          null_json: true,
          lo: Number.NEGATIVE_INFINITY,
          hi: Number.POSITIVE_INFINITY,
        },
      ]);
    });

    it("a top-level JSON array passed as JSON text is stored as a jsonb array", async () => {
      const { rows } = await store().query<{ doc: unknown; kind: string }>(
        "SELECT $1::jsonb AS doc, jsonb_typeof($1::jsonb) AS kind",
        [JSON.stringify([1, { two: [2] }, "три"])],
      );
      expect(rows).toEqual([{ doc: [1, { two: [2] }, "три"], kind: "array" }]);
    });

    it("parameters are bound, never spliced into the SQL: a quote-laden value is stored verbatim", async () => {
      const hostile = `x'); DROP TABLE ${items}; --`;
      const id = randomUUID();
      await store().query(`INSERT INTO ${items} (id, label) VALUES ($1, $2)`, [id, hostile]);
      const { rows } = await store().query<{ label: string }>(
        `SELECT label FROM ${items} WHERE id = $1`,
        [id],
      );
      expect(rows).toEqual([{ label: hostile }]);
    });

    it("rowCount is the number of rows a SELECT returned or an INSERT/UPDATE/DELETE changed", async () => {
      const db = store();
      await db.exec("CREATE TABLE suite_counts (n int)");
      expect((await db.query("INSERT INTO suite_counts VALUES (1), (2), (3)")).rowCount).toBe(3);
      expect((await db.query("SELECT n FROM suite_counts WHERE n > 1")).rowCount).toBe(2);
      expect((await db.query("UPDATE suite_counts SET n = n + 10 WHERE n < 3")).rowCount).toBe(2);
      expect((await db.query("UPDATE suite_counts SET n = 0 WHERE n < 0")).rowCount).toBe(0);
      expect((await db.query("DELETE FROM suite_counts RETURNING n")).rowCount).toBe(3);
    });

    it("a failing statement rejects with the server's SQLSTATE", async () => {
      await expect(store().query("SELECT 1 / $1::int", [0])).rejects.toMatchObject({
        code: "22012",
      });
      await expect(store().query("SELECT * FROM no_such_table")).rejects.toMatchObject({
        code: "42P01",
      });
    });
  });

  describe("tx", () => {
    it("commits when fn resolves and returns fn's value", async () => {
      const result = await store().tx(async (tx) => {
        await tx.query("INSERT INTO suite_log (note) VALUES ($1)", ["committed"]);
        return "value";
      });
      expect(result).toBe("value");
      expect(await notes(store())).toContain("committed");
    });

    it("rolls back every statement when fn throws, and rethrows that same error", async () => {
      const boom = new Error("boom");
      const run = store().tx(async (tx) => {
        await tx.query("INSERT INTO suite_log (note) VALUES ($1)", ["rolled-back-1"]);
        await tx.exec("INSERT INTO suite_log (note) VALUES ('rolled-back-2')");
        throw boom;
      });
      await expect(run).rejects.toBe(boom);
      const seen = await notes(store());
      expect(seen).not.toContain("rolled-back-1");
      expect(seen).not.toContain("rolled-back-2");
    });

    it("a statement that failed inside fn aborts the tx even when fn catches it: tx rejects, nothing commits", async () => {
      const run = store().tx(async (tx) => {
        await tx.query("INSERT INTO suite_log (note) VALUES ($1)", ["before-failure"]);
        await tx.query("SELECT 1 / 0").catch(() => {});
        return "fn resolved";
      });
      await expect(run).rejects.toThrow(/rolled back/i);
      expect(await notes(store())).not.toContain("before-failure");
      await store().ping(); // the connection went back to the pool usable
    });

    it("the tx Queryable sees its own uncommitted writes, in helpers and concurrent calls, and commits them together", async () => {
      const insert = (q: Queryable, note: string) =>
        q.query("INSERT INTO suite_log (note) VALUES ($1)", [note]);
      const seenInside = await store().tx(async (tx) => {
        await insert(tx, "nested-1");
        await Promise.all([insert(tx, "nested-2"), insert(tx, "nested-3")]);
        await tx.exec("INSERT INTO suite_log (note) VALUES ('nested-4')");
        return notes(tx);
      });
      for (const note of ["nested-1", "nested-2", "nested-3", "nested-4"]) {
        expect(seenInside).toContain(note);
        expect(await notes(store())).toContain(note);
      }
    });

    // On PGlite the database is one connection: a db.query inside tx would wait for the tx.
    onPostgres("other connections do not see a tx's writes until it commits", async () => {
      let release!: () => void;
      const gate = new Promise<void>((r) => {
        release = r;
      });
      let inserted!: () => void;
      const insertedP = new Promise<void>((r) => {
        inserted = r;
      });
      const run = store().tx(async (tx) => {
        await tx.query("INSERT INTO suite_log (note) VALUES ($1)", ["isolated"]);
        inserted();
        await gate;
      });
      await insertedP;
      expect(await notes(store())).not.toContain("isolated");
      release();
      await run;
      expect(await notes(store())).toContain("isolated");
    });
  });

  describe("exec", () => {
    it("runs several statements separated by semicolons", async () => {
      await store().exec(`
        CREATE TABLE suite_exec (v text);
        INSERT INTO suite_exec VALUES ('a');
        INSERT INTO suite_exec VALUES ('b'); UPDATE suite_exec SET v = v || '!';
      `);
      const { rows } = await store().query("SELECT v FROM suite_exec ORDER BY v");
      expect(rows).toEqual([{ v: "a!" }, { v: "b!" }]);
    });

    it("applies none of the statements when one of them fails", async () => {
      await expect(
        store().exec(
          "CREATE TABLE suite_exec_partial (v int); INSERT INTO suite_exec_partial VALUES (1); SELECT 1 / 0;",
        ),
      ).rejects.toMatchObject({ code: "22012" });
      expect(
        await count(store(), "SELECT 1 FROM pg_tables WHERE tablename = 'suite_exec_partial'"),
      ).toBe(0);
    });
  });

  describe("listen", () => {
    it("a NOTIFY sent in a committed tx is delivered with its payload intact", async () => {
      const got: string[] = [];
      const unlisten = await store().listen("suite_channel", (p) => got.push(p));
      try {
        await store().tx(async (tx) => {
          await tx.query("SELECT pg_notify($1, $2)", ["suite_channel", UNICODE_TEXT]);
          // Not delivered before the commit.
          expect(got).toEqual([]);
        });
        await waitFor("the committed notification", () => got.length > 0);
        expect(got).toEqual([UNICODE_TEXT]);
      } finally {
        await unlisten();
      }
    });

    it("a NOTIFY sent in a rolled-back tx is never delivered", async () => {
      const got: string[] = [];
      const unlisten = await store().listen("suite_channel", (p) => got.push(p));
      try {
        await expect(
          store().tx(async (tx) => {
            await tx.query("SELECT pg_notify('suite_channel', 'rolled-back')");
            throw new Error("roll back");
          }),
        ).rejects.toThrow("roll back");
        // Notifications arrive in commit order: once the later marker is here, the other never comes.
        await store().query("SELECT pg_notify('suite_channel', 'marker')");
        await waitFor("the marker notification", () => got.includes("marker"));
        expect(got).toEqual(["marker"]);
      } finally {
        await unlisten();
      }
    });

    it("a listener hears only its channel, channel names are case-sensitive, and unsubscribing stops delivery", async () => {
      const lower: string[] = [];
      const mixed: string[] = [];
      const stopLower = await store().listen("suite_case", (p) => lower.push(p));
      const stopMixed = await store().listen("Suite_Case", (p) => mixed.push(p));
      try {
        await store().query("SELECT pg_notify('suite_case', 'to-lower')");
        await store().query("SELECT pg_notify('Suite_Case', 'to-mixed')");
        await store().query("SELECT pg_notify('suite_other', 'elsewhere')");
        await waitFor("both notifications", () => lower.length > 0 && mixed.length > 0);
        expect(lower).toEqual(["to-lower"]);
        expect(mixed).toEqual(["to-mixed"]);

        await stopMixed();
        await store().query("SELECT pg_notify('Suite_Case', 'after-unsubscribe')");
        await store().query("SELECT pg_notify('suite_case', 'marker')");
        await waitFor("the marker", () => lower.includes("marker"));
        await new Promise((r) => setTimeout(r, 50));
        expect(mixed).toEqual(["to-mixed"]);
      } finally {
        await stopLower();
        await stopMixed();
      }
    });
  });

  describe("withExclusiveLock and ping", () => {
    it("runs fn with a usable connection and returns its result", async () => {
      const result = await store().withExclusiveLock(LOCK_KEYS.migrations + 100, async (conn) => {
        await conn.exec("CREATE TABLE suite_locked (v int); INSERT INTO suite_locked VALUES (7)");
        const { rows } = await conn.query<{ v: number }>("SELECT v FROM suite_locked");
        return rows[0]!.v;
      });
      expect(result).toBe(7);
    });

    it("rethrows fn's error", async () => {
      const boom = new Error("inside the lock");
      await expect(
        store().withExclusiveLock(LOCK_KEYS.migrations + 100, async () => {
          throw boom;
        }),
      ).rejects.toBe(boom);
    });

    onPostgres(
      "on PostgreSQL holds the advisory lock while fn runs and releases it after, even when fn throws",
      async () => {
        const key = LOCK_KEYS.migrations + 101;
        const held = () =>
          count(
            store(),
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND granted",
            [key],
          );
        let during = -1;
        await store().withExclusiveLock(key, async () => {
          during = await held();
        });
        expect(during).toBe(1);
        expect(await held()).toBe(0);
        await expect(
          store().withExclusiveLock(key, async () => {
            throw new Error("x");
          }),
        ).rejects.toThrow("x");
        expect(await held()).toBe(0);
      },
    );

    onPostgres(
      "on PostgreSQL two holders of one key run one after the other, never overlapping",
      async () => {
        const events: string[] = [];
        const holder = (name: string) =>
          store().withExclusiveLock(LOCK_KEYS.migrations + 102, async (conn) => {
            events.push(`${name}:in`);
            await conn.query("SELECT pg_sleep(0.2)");
            events.push(`${name}:out`);
          });
        await Promise.all([holder("a"), holder("b")]);
        expect([
          ["a:in", "a:out", "b:in", "b:out"],
          ["b:in", "b:out", "a:in", "a:out"],
        ]).toContainEqual(events);
      },
    );

    it("ping resolves on an open store", async () => {
      await expect(store().ping()).resolves.toBeUndefined();
    });
  });

  describe("migrations", () => {
    const dirs: string[] = [];
    afterAll(() => {
      for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
    });
    const files = loadMigrations();

    it(`every migration ran on this engine (PostgreSQL ${engine === "pglite" ? "18 in PGlite" : "15"}) and is recorded once with its checksum`, async () => {
      const version = await store().query<{ v: number }>(
        "SELECT current_setting('server_version_num')::int / 10000 AS v",
      );
      expect(version.rows[0]!.v).toBe(engine === "pglite" ? 18 : 15);
      const { rows } = await store().query(
        "SELECT version, name, checksum FROM flotilla_migrations ORDER BY version",
      );
      expect(rows).toEqual(
        files.map((m) => ({ version: m.version, name: m.name, checksum: m.checksum })),
      );
      expect(files.length).toBeGreaterThanOrEqual(6);
    });

    it("re-running migrate applies nothing and counts every migration as already applied", async () => {
      expect(await migrate(store())).toEqual({ applied: [], alreadyApplied: files.length });
    });

    it("a changed checksum of an applied migration refuses with store.migration_changed and applies nothing new", async () => {
      const copy = migrationsCopy(dirs);
      appendFileSync(join(copy.dir, "0001_identity.sql"), "\n-- edited after it was applied\n");
      nextMigrationFile(copy.dir, "never_applied", "CREATE TABLE suite_never (id int);");
      await expect(migrate(store(), copy.load())).rejects.toMatchObject({
        code: "store.migration_changed",
        message: expect.stringMatching(/migration 1 \(identity\) was changed/),
      });
      expect(await count(store(), "SELECT 1 FROM pg_tables WHERE tablename = 'suite_never'")).toBe(
        0,
      );
      expect(await count(store(), "SELECT 1 FROM flotilla_migrations")).toBe(files.length);
    });

    it("a database that has a migration this build does not know refuses with store.migration_changed", async () => {
      const last = files[files.length - 1]!;
      await expect(migrate(store(), files.slice(0, -1))).rejects.toMatchObject({
        code: "store.migration_changed",
        message: expect.stringContaining(`migration ${last.version} (${last.name})`),
      });
    });

    it("a failing pending migration rolls back whole: no partial table, no bookkeeping row", async () => {
      const copy = migrationsCopy(dirs);
      const version = nextMigrationFile(
        copy.dir,
        "broken",
        "CREATE TABLE suite_partial (id int);\nINSERT INTO suite_partial VALUES (1);\nSELECT 1 / 0;",
      );
      await expect(migrate(store(), copy.load())).rejects.toThrow(
        `migration ${version} (broken) failed: division by zero`,
      );
      expect(
        await count(store(), "SELECT 1 FROM pg_tables WHERE tablename = 'suite_partial'"),
      ).toBe(0);
      expect(await count(store(), "SELECT 1 FROM flotilla_migrations")).toBe(files.length);
      await store().ping();
    });

    it("a new pending migration is applied alone, once, and recorded", async () => {
      const copy = migrationsCopy(dirs);
      const version = nextMigrationFile(copy.dir, "added", "CREATE TABLE suite_added (id int);");
      try {
        expect(await migrate(store(), copy.load())).toEqual({
          applied: [version],
          alreadyApplied: files.length,
        });
        expect(await migrate(store(), copy.load())).toEqual({
          applied: [],
          alreadyApplied: files.length + 1,
        });
        expect(
          await count(store(), "SELECT 1 FROM flotilla_migrations WHERE version = $1", [version]),
        ).toBe(1);
      } finally {
        // Back to the shipped migrations for the rest of the file.
        await store().exec(
          `DROP TABLE IF EXISTS suite_added; DELETE FROM flotilla_migrations WHERE version = ${version};`,
        );
      }
    });
  });

  describe("CHECK constraints, enforced alike on both engines", () => {
    const org = randomUUID();
    const project = randomUUID();
    const env = randomUUID();
    beforeAll(async () => {
      const db = store();
      await db.query("INSERT INTO organizations (id, slug, name) VALUES ($1, 'checks', 'Checks')", [
        org,
      ]);
      await db.query(
        "INSERT INTO projects (id, organization_id, slug, name) VALUES ($1, $2, 'p', 'P')",
        [project, org],
      );
      await db.query(
        "INSERT INTO environments (id, organization_id, project_id, slug, name) VALUES ($1, $2, $3, 'e', 'E')",
        [env, org, project],
      );
      await db.query(
        "INSERT INTO config_scopes (scope_type, scope_id, organization_id, revision) VALUES ('environment', $1, $2, 1)",
        [env, org],
      );
    });

    const service = (
      db: Db,
      kind: string,
      visibility: string,
      slug = `s-${randomUUID().slice(0, 8)}`,
      templateId: string | null = kind === "database" ? "postgres16" : null,
    ) =>
      db.query(
        `INSERT INTO services (id, organization_id, project_id, environment_id, slug, name, kind, template_id, visibility, spec)
         VALUES ($1, $2, $3, $4, $5, 'S', $6, $7, $8, '{}')`,
        [randomUUID(), org, project, env, slug, kind, templateId, visibility],
      );
    const entry = (
      db: Db,
      kind: string,
      value: string | null,
      sealed: Buffer | null,
      keyId: string | null,
      key = `K_${randomUUID().slice(0, 8)}`,
    ) =>
      db.query(
        `INSERT INTO config_entries (id, organization_id, scope_type, scope_id, key, kind, value, sealed, key_id)
         VALUES ($1, $2, 'environment', $3, $4, $5, $6, $7, $8)`,
        [randomUUID(), org, env, key, kind, value, sealed, keyId],
      );
    const organization = (db: Db, slug: string, name = "N") =>
      db.query("INSERT INTO organizations (id, slug, name) VALUES ($1, $2, $3)", [
        randomUUID(),
        slug,
        name,
      ]);
    const box = Buffer.from([0, 1, 2, 255]);

    // Each case: statements the constraint lets through, then ones it refuses, by name.
    const cases: {
      constraint: string;
      title: string;
      accepted: ((db: Db) => Promise<unknown>)[];
      refused: ((db: Db) => Promise<unknown>)[];
    }[] = [
      {
        constraint: "services_database_private",
        title: "a database-kind service cannot be PUBLIC",
        accepted: [
          (db) => service(db, "database", "PRIVATE"),
          (db) => service(db, "app", "PUBLIC"),
        ],
        refused: [(db) => service(db, "database", "PUBLIC")],
      },
      {
        constraint: "services_database_template",
        title: "a database-kind service names its template, and only a database does",
        accepted: [
          (db) => service(db, "database", "PRIVATE", undefined, "postgres16"),
          (db) => service(db, "app", "PRIVATE", undefined, null),
        ],
        refused: [
          (db) => service(db, "database", "PRIVATE", undefined, null),
          (db) => service(db, "app", "PRIVATE", undefined, "postgres16"),
        ],
      },
      {
        constraint: "config_entries_sealed_secrets",
        title: "a secret has sealed bytes and a key id and no plaintext; a variable the reverse",
        accepted: [
          (db) => entry(db, "secret", null, box, "mk-1"),
          (db) => entry(db, "variable", "plain", null, null),
        ],
        refused: [
          (db) => entry(db, "secret", "plaintext", box, "mk-1"),
          (db) => entry(db, "secret", null, null, "mk-1"),
          (db) => entry(db, "secret", null, box, null),
          (db) => entry(db, "variable", "plain", box, "mk-1"),
          (db) => entry(db, "variable", null, null, null),
        ],
      },
      {
        constraint: "organizations_slug_check",
        title: "a slug is 1-40 lower-case letters, digits and inner hyphens",
        accepted: [(db) => organization(db, "a"), (db) => organization(db, `x${"-0".repeat(19)}z`)],
        refused: [
          (db) => organization(db, "Acme"),
          (db) => organization(db, `a${"b".repeat(40)}`),
          (db) => organization(db, "-acme"),
          (db) => organization(db, "acme-"),
          (db) => organization(db, "ac me"),
        ],
      },
      {
        constraint: "services_slug_check",
        title: "a service slug with upper case is refused too",
        accepted: [(db) => service(db, "app", "PRIVATE", "web")],
        refused: [(db) => service(db, "app", "PRIVATE", "Web")],
      },
      {
        constraint: "organizations_name_check",
        title: "a name is 1-100 characters (counted as characters, not bytes)",
        accepted: [(db) => organization(db, "n100", "🚀".repeat(100))],
        refused: [
          (db) => organization(db, "n101", "x".repeat(101)),
          (db) => organization(db, "n0", ""),
        ],
      },
      {
        constraint: "config_entries_key_check",
        title: "a config key is an identifier of at most 256 characters",
        accepted: [(db) => entry(db, "variable", "v", null, null, `K${"_".repeat(255)}`)],
        refused: [
          (db) => entry(db, "variable", "v", null, null, `K${"_".repeat(256)}`),
          (db) => entry(db, "variable", "v", null, null, "1ABC"),
          (db) => entry(db, "variable", "v", null, null, "A-B"),
        ],
      },
    ];

    for (const c of cases) {
      it(`${c.title} (${c.constraint})`, async () => {
        for (const accept of c.accepted) await accept(store());
        for (const [i, refuse] of c.refused.entries()) {
          expect(await refusal(refuse(store())), `refused[${i}]`).toEqual({
            code: "23514",
            constraint: c.constraint,
          });
        }
      });
    }
  });
});
