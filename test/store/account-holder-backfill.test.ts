// Migration 0019 on the embedded engine: accounts made before it are given the organization
// whose AddMember made them (the audit log's identity.member.add with created_user), and the
// first owner's account, made by setup, stays held by nobody.
import { afterEach, describe, expect, it } from "vitest";
import { uuidv7 } from "../../src/shared/index.js";
import { type Db, loadMigrations, migrate, openPglite } from "../../src/store/index.js";

const BEFORE = loadMigrations().filter((m) => m.version <= 18);

describe("account holder backfill (0019)", () => {
  const open: Db[] = [];
  afterEach(async () => {
    for (const db of open.splice(0)) await db.close();
  });

  it("an account AddMember made is held by that organization; one it only added, or setup made, is not", async () => {
    const db = await openPglite("memory://");
    open.push(db);
    await migrate(db, BEFORE);
    const [first, second] = [uuidv7(), uuidv7()];
    await db.query(
      "INSERT INTO organizations (id, slug, name) VALUES ($1, 'first', 'First'), ($2, 'second', 'Second')",
      [first, second],
    );
    const user = async (email: string) => {
      const id = uuidv7();
      await db.query("INSERT INTO users (id, email, password_hash) VALUES ($1, $2, 'scrypt$x')", [
        id,
        email,
      ]);
      return id;
    };
    const [owner, made, joined] = [
      await user("owner@example.com"),
      await user("made@example.com"),
      await user("joined@example.com"),
    ];
    const added = (org: string, target: string, createdUser: boolean) =>
      db.query(
        `INSERT INTO audit_log (id, organization_id, actor_type, actor_id, action, target_type, target_id, correlation_id, traceparent, details)
         VALUES ($1, $2, 'user', $3, 'identity.member.add', 'user', $4, 'c', 't', $5)`,
        [uuidv7(), org, owner, target, JSON.stringify({ created_user: createdUser })],
      );
    await added(second, made, true);
    // `joined` was made by the first organization, and later added to the second as it was.
    await added(first, joined, true);
    await added(second, joined, false);

    await migrate(db, loadMigrations());
    const { rows } = await db.query<{ id: string; held_by: string | null }>(
      "SELECT id, created_by_organization_id AS held_by FROM users",
    );
    const heldBy = new Map(rows.map((r) => [r.id, r.held_by]));
    expect(heldBy.get(owner)).toBeNull();
    expect(heldBy.get(made)).toBe(second);
    expect(heldBy.get(joined)).toBe(first);
  });
});
