// Secrets are sealed and silent (doctrine 8): the plaintext is nowhere at rest, in logs, events
// or audit rows; it is listed by name only; only config.reveal opens it, audited without the
// value; the seal is bound to its scope; and key rotation re-seals everything under a new key.
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigKind, ConfigScope } from "../../src/gen/flotilla/v1/config_pb.js";
import { Role } from "../../src/gen/flotilla/v1/identity_pb.js";
import { type HubOptions, Keyring, type MasterKey } from "../../src/hub/index.js";
import type { Queryable } from "../../src/store/index.js";
import {
  type Api,
  addMember,
  api,
  createFixture,
  expectError,
  type Fixture,
  rejection,
} from "../support/core.js";
import { bootstrapOwner, startTestHub, TEST_MASTER_KEY, type TestHub } from "../support/hub.js";
import { createTestDatabase } from "../support/pg.js";

const ENV = ConfigScope.ENVIRONMENT;
const SVC = ConfigScope.SERVICE;
/** A recognisable plaintext per test run; every value below contains the marker. */
const MARKER = `plaintext-${randomBytes(6).toString("hex")}`;
const SERVICE_SECRET = `${MARKER}-service`;
const ENV_SECRET = `${MARKER}-environment`;
const IMPORTED_SECRET = `${MARKER}-imported`;

/** The text of every row of every table, and the bytes of every bytea column, that contain `needle`. */
async function findInDatabase(db: Queryable, needle: string): Promise<string[]> {
  const hits: string[] = [];
  const { rows: tables } = await db.query<{ table_schema: string; table_name: string }>(
    `SELECT table_schema, table_name FROM information_schema.tables
     WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')`,
  );
  expect(tables.map((r) => r.table_name)).toEqual(
    expect.arrayContaining(["config_entries", "outbox_events", "audit_log", "deployments"]),
  );
  const bytes = Buffer.from(needle, "utf8");
  for (const { table_schema, table_name } of tables) {
    const name = `"${table_schema}"."${table_name}"`;
    const { rows } = await db.query<{ row: string }>(`SELECT t::text AS row FROM ${name} t`);
    for (const r of rows) if (r.row.includes(needle)) hits.push(`${name}: ${r.row}`);
    const { rows: cols } = await db.query<{ column_name: string }>(
      `SELECT column_name FROM information_schema.columns
       WHERE table_schema = $1 AND table_name = $2 AND data_type = 'bytea'`,
      [table_schema, table_name],
    );
    for (const { column_name } of cols) {
      const { rows: values } = await db.query<{ v: Uint8Array | null }>(
        `SELECT "${column_name}" AS v FROM ${name}`,
      );
      for (const { v } of values)
        if (v && Buffer.from(v).includes(bytes)) hits.push(`${name}.${column_name} (bytes)`);
    }
  }
  return hits;
}

const aad = (scope: "environment" | "service", id: string, key: string) =>
  `flotilla/config/${scope}/${id}/${key}`;

async function sealedRow(db: Queryable, scopeId: string, key: string) {
  const { rows } = await db.query<{ sealed: Uint8Array; key_id: string; value: string | null }>(
    "SELECT sealed, key_id, value FROM config_entries WHERE scope_id = $1 AND key = $2",
    [scopeId, key],
  );
  expect(rows).toHaveLength(1);
  return { sealed: Buffer.from(rows[0]!.sealed), keyId: rows[0]!.key_id, value: rows[0]!.value };
}

for (const engine of ["pglite", "postgres"] as const) {
  describe(`secrets are sealed and silent [${engine}]`, () => {
    let t: TestHub;
    let owner: Api;
    let ownerToken: string;
    let f: Fixture;

    beforeAll(async () => {
      t = await startTestHub(engine);
      ownerToken = (await bootstrapOwner(t.hub)).token;
      owner = api(t.hub.url, ownerToken);
      f = await createFixture(owner, "secrets");
      await owner.config.setConfig({
        target: { scope: SVC, id: f.serviceId },
        key: "API_KEY",
        value: SERVICE_SECRET,
        kind: ConfigKind.SECRET,
      });
      await owner.config.setConfig({
        target: { scope: ENV, id: f.productionId },
        key: "DB_PASSWORD",
        value: ENV_SECRET,
        kind: ConfigKind.SECRET,
      });
      await owner.config.importConfig({
        target: { scope: SVC, id: f.serviceId },
        dotenv: `# imported\nIMPORTED_TOKEN="${IMPORTED_SECRET}"\nPLAIN=${"visible"}\n`,
        asSecrets: true,
      });
      await owner.services.deploy({ serviceId: f.serviceId });
      // The hub opens every secret at the moment of use, and the owner reveals one.
      const runtime = await t.hub.config.resolveForRuntime(
        (await owner.identity.whoAmI({})).organization!.id,
        f.productionId,
        f.serviceId,
      );
      expect(runtime.env.API_KEY).toBe(SERVICE_SECRET);
      expect(runtime.secretKeys).toContain("API_KEY");
      const revealed = await owner.config.revealSecret({
        target: { scope: SVC, id: f.serviceId },
        key: "API_KEY",
      });
      expect(revealed.value).toBe(SERVICE_SECRET);
    });
    afterAll(async () => {
      await t?.stop();
    });

    it("ListConfig and GetEffectiveConfig return secrets by name only, with an empty value", async () => {
      const svc = await owner.config.listConfig({ target: { scope: SVC, id: f.serviceId } });
      expect(svc.entries.map((e) => [e.key, e.kind, e.value])).toEqual([
        ["API_KEY", ConfigKind.SECRET, ""],
        ["IMPORTED_TOKEN", ConfigKind.SECRET, ""],
        ["PLAIN", ConfigKind.SECRET, ""],
      ]);
      const env = await owner.config.listConfig({ target: { scope: ENV, id: f.productionId } });
      expect(env.entries.map((e) => [e.key, e.kind, e.value])).toEqual([
        ["DB_PASSWORD", ConfigKind.SECRET, ""],
      ]);
      const eff = await owner.config.getEffectiveConfig({ serviceId: f.serviceId });
      expect(eff.entries.map((e) => [e.key, e.kind, e.value])).toEqual([
        ["API_KEY", ConfigKind.SECRET, ""],
        ["DB_PASSWORD", ConfigKind.SECRET, ""],
        ["IMPORTED_TOKEN", ConfigKind.SECRET, ""],
        ["PLAIN", ConfigKind.SECRET, ""],
      ]);
      expect(
        JSON.stringify([svc, env, eff], (_k, v) => (typeof v === "bigint" ? String(v) : v)),
      ).not.toContain(MARKER);
    });

    it("a viewer and a developer cannot reveal a secret (PermissionDenied), though they may list its name", async () => {
      for (const role of [Role.VIEWER, Role.DEVELOPER]) {
        const member = await addMember(t.hub, ownerToken, role);
        const m = api(t.hub.url, member.token);
        const listed = await m.config.listConfig({ target: { scope: SVC, id: f.serviceId } });
        expect(listed.entries.map((e) => e.key)).toContain("API_KEY");
        const err = await expectError(
          m.config.revealSecret({ target: { scope: SVC, id: f.serviceId }, key: "API_KEY" }),
          "auth.permission_denied",
          undefined,
          Code.PermissionDenied,
        );
        expect(err.message).not.toContain(MARKER);
      }
    });

    it("an admin's reveal returns the value and writes a config.reveal audit row naming the key, not the value", async () => {
      const admin = await addMember(t.hub, ownerToken, Role.ADMIN);
      const a = api(t.hub.url, admin.token);
      const r = await a.config.revealSecret({
        target: { scope: ENV, id: f.productionId },
        key: "DB_PASSWORD",
      });
      expect(r.value).toBe(ENV_SECRET);
      const { rows } = await t.hub.db.query<{
        actor_id: string;
        target_type: string;
        target_id: string;
        details: Record<string, unknown>;
      }>(
        "SELECT actor_id, target_type, target_id, details FROM audit_log WHERE action = 'config.reveal' AND actor_id = $1",
        [admin.userId],
      );
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({
        target_type: "environment",
        target_id: f.productionId,
        details: { key: "DB_PASSWORD" },
      });
      expect(JSON.stringify(rows)).not.toContain(MARKER);
    });

    it("a sealed value opens only under its own scope, id and key (the AAD binds it)", async () => {
      const keyring = new Keyring(TEST_MASTER_KEY);
      const svc = await sealedRow(t.hub.db, f.serviceId, "API_KEY");
      expect(svc.value).toBeNull();
      expect(svc.keyId).toBe(TEST_MASTER_KEY.id);
      expect(keyring.open(svc.sealed, svc.keyId, aad("service", f.serviceId, "API_KEY"))).toBe(
        SERVICE_SECRET,
      );
      for (const wrong of [
        aad("environment", f.serviceId, "API_KEY"),
        aad("service", f.productionId, "API_KEY"),
        aad("service", f.serviceId, "IMPORTED_TOKEN"),
      ]) {
        expect(() => keyring.open(svc.sealed, svc.keyId, wrong)).toThrow();
      }

      // Copied onto the environment's row, the service's box does not open there either.
      const env = await sealedRow(t.hub.db, f.productionId, "DB_PASSWORD");
      await t.hub.db.query(
        "UPDATE config_entries SET sealed = $2 WHERE scope_id = $1 AND key = 'DB_PASSWORD'",
        [f.productionId, svc.sealed],
      );
      try {
        const err = await rejection(
          owner.config.revealSecret({
            target: { scope: ENV, id: f.productionId },
            key: "DB_PASSWORD",
          }),
        );
        expect(err.message).not.toContain(MARKER);
      } finally {
        await t.hub.db.query(
          "UPDATE config_entries SET sealed = $2 WHERE scope_id = $1 AND key = 'DB_PASSWORD'",
          [f.productionId, env.sealed],
        );
      }
      const back = await owner.config.revealSecret({
        target: { scope: ENV, id: f.productionId },
        key: "DB_PASSWORD",
      });
      expect(back.value).toBe(ENV_SECRET);
    });

    it("a rejected request carrying a secret does not echo it in the error", async () => {
      const err = await expectError(
        owner.config.setConfig({
          target: { scope: SVC, id: f.serviceId },
          key: "BAD KEY",
          value: `${MARKER}-rejected`,
          kind: ConfigKind.SECRET,
        }),
        "validation.failed",
        "key",
      );
      expect(err.message).not.toContain(MARKER);
      const nul = await expectError(
        owner.config.setConfig({
          target: { scope: SVC, id: f.serviceId },
          key: "GOOD_KEY",
          value: `${MARKER}\0-rejected`,
          kind: ConfigKind.SECRET,
        }),
        "validation.failed",
        "value",
      );
      expect(nul.message).not.toContain(MARKER);
    });

    // The scans run last, after every path above had its chance to leak.
    it("the plaintext appears nowhere in the database: no column of any row, no bytea", async () => {
      expect(await findInDatabase(t.hub.db, MARKER)).toEqual([]);
      // The scan is able to see a leak: a variable holding the marker is found.
      await owner.config.setConfig({
        target: { scope: SVC, id: f.serviceId },
        key: "CANARY",
        value: `${MARKER}-canary`,
        kind: ConfigKind.VARIABLE,
      });
      expect((await findInDatabase(t.hub.db, MARKER)).join("\n")).toContain("config_entries");
      await owner.config.unsetConfig({ target: { scope: SVC, id: f.serviceId }, key: "CANARY" });
      expect(await findInDatabase(t.hub.db, MARKER)).toEqual([]);
    });

    it("outbox events and audit rows name the secret keys but never hold their values", async () => {
      const { rows: events } = await t.hub.db.query<{ type: string; payload: unknown }>(
        "SELECT type, payload FROM outbox_events WHERE type = 'config.changed' ORDER BY id",
      );
      expect(events.length).toBeGreaterThanOrEqual(3);
      expect(JSON.stringify(events)).toContain("API_KEY");
      expect(JSON.stringify(events)).toContain("IMPORTED_TOKEN");
      const { rows: audit } = await t.hub.db.query<{ action: string; details: unknown }>(
        "SELECT action, details FROM audit_log WHERE action LIKE 'config.%' ORDER BY id",
      );
      expect(audit.map((r) => r.action)).toEqual(
        expect.arrayContaining(["config.set", "config.import", "config.reveal"]),
      );
      expect(JSON.stringify(events)).not.toContain(MARKER);
      expect(JSON.stringify(audit)).not.toContain(MARKER);
    });

    it("the plaintext appears nowhere in the hub's logs", () => {
      expect(t.logs.length).toBeGreaterThan(10);
      expect(JSON.stringify(t.logs)).not.toContain(MARKER);
    });
  });

  describe(`master key rotation [${engine}]`, () => {
    const OLD: MasterKey = TEST_MASTER_KEY;
    const NEW: MasterKey = { id: "test-key-2", key: Buffer.alloc(32, 7) };
    let store: HubOptions["store"];
    let cleanup: () => Promise<void>;
    const running: TestHub[] = [];

    beforeAll(async () => {
      if (engine === "postgres") {
        const database = await createTestDatabase("rotate");
        store = { kind: "postgres", url: database.url, pool: { max: 5 } };
        cleanup = () => database.drop();
      } else {
        const dir = mkdtempSync(join(tmpdir(), "flotilla-rotate-"));
        store = { kind: "embedded", dataDir: join(dir, "data") };
        cleanup = async () => rmSync(dir, { recursive: true, force: true });
      }
    });
    afterAll(async () => {
      for (const h of running) await h.stop().catch(() => {});
      await cleanup?.();
    });

    /** One hub at a time on the shared store (PGlite allows one process per directory). */
    async function hubWith(masterKey: MasterKey, previousMasterKeys: MasterKey[] = []) {
      for (const h of running.splice(0)) await h.stop();
      // "pglite" only tells startTestHub not to create a database of its own: `store` decides.
      const h = await startTestHub("pglite", { store, masterKey, previousMasterKeys });
      running.push(h);
      return h;
    }

    it("rotateKey under a new master key re-seals every secret (key id and box change) and every value still reveals, even without the old key", async () => {
      const first = await hubWith(OLD);
      const { token } = await bootstrapOwner(first.hub);
      const a1 = api(first.hub.url, token);
      const f = await createFixture(a1, "rotate");
      const secrets: Array<[ConfigScope, string, string, string]> = [
        [SVC, f.serviceId, "API_KEY", `${MARKER}-r1`],
        [ENV, f.productionId, "DB_PASSWORD", `${MARKER}-r2`],
        [SVC, f.serviceId, "OTHER", `${MARKER}-r3`],
      ];
      for (const [scope, id, key, value] of secrets)
        await a1.config.setConfig({ target: { scope, id }, key, value, kind: ConfigKind.SECRET });
      await a1.config.setConfig({
        target: { scope: SVC, id: f.serviceId },
        key: "PLAIN",
        value: "not-a-secret",
        kind: ConfigKind.VARIABLE,
      });
      const before = await Promise.all(
        secrets.map(([, id, key]) => sealedRow(first.hub.db, id, key)),
      );
      expect(before.map((r) => r.keyId)).toEqual([OLD.id, OLD.id, OLD.id]);

      const second = await hubWith(NEW, [OLD]);
      expect(await second.hub.config.rotateKey()).toBe(3);
      const after = await Promise.all(
        secrets.map(([, id, key]) => sealedRow(second.hub.db, id, key)),
      );
      expect(after.map((r) => r.keyId)).toEqual([NEW.id, NEW.id, NEW.id]);
      after.forEach((r, i) => {
        expect(r.sealed.equals(before[i]!.sealed)).toBe(false);
      });
      // Nothing is left under the old key, so a second run has nothing to do.
      expect(await second.hub.config.rotateKey()).toBe(0);

      // A hub that knows only the new key opens every value.
      const third = await hubWith(NEW);
      const a3 = api(third.hub.url, token);
      for (const [scope, id, key, value] of secrets) {
        const r = await a3.config.revealSecret({ target: { scope, id }, key });
        expect(r.value).toBe(value);
      }
      const plain = await a3.config.listConfig({ target: { scope: SVC, id: f.serviceId } });
      expect(plain.entries.find((e) => e.key === "PLAIN")!.value).toBe("not-a-secret");

      // And one that knows only the old key opens none: the rotation really replaced the seal.
      const fourth = await hubWith(OLD);
      const a4 = api(fourth.hub.url, token);
      const err = await rejection(
        a4.config.revealSecret({ target: { scope: SVC, id: f.serviceId }, key: "API_KEY" }),
      );
      expect(err.message).not.toContain(MARKER);
    });
  });
}
