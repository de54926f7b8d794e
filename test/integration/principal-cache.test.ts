// The hub's principal cache: it saves a database lookup per request, yet never trusts a credential
// past the credential's own expiry, and a change to who may do what takes effect at once.
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  bootstrapOwner,
  clients,
  PASSWORD,
  refusal,
  startTestHub,
  type TestHub,
} from "../support/hub.js";

describe("principal cache (60 s, far longer than any credential below lives)", () => {
  let t: TestHub;
  let owner: { token: string; email: string };

  /**
   * Every principal lookup the hub runs from here on is counted, and held after it has read
   * (so its answer predates whatever the test does meanwhile) until `release` is called.
   */
  function holdLookups(): { count(): number; release(): void; restore(): void } {
    let lookups = 0;
    let release = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const query = t.hub.db.query.bind(t.hub.db);
    t.hub.db.query = (async (sql: string, params?: unknown[]) => {
      const result = await query(sql, params);
      if (sql.includes("FROM memberships m JOIN users u")) {
        lookups++;
        await gate;
      }
      return result;
    }) as typeof t.hub.db.query;
    return {
      count: () => lookups,
      release,
      restore: () => {
        t.hub.db.query = query;
      },
    };
  }

  const signIn = async () =>
    (await clients(t.hub.url).identity.login({ email: owner.email, password: PASSWORD }))
      .sessionToken;

  beforeAll(async () => {
    t = await startTestHub("pglite", { authCacheMs: 60_000, sessionTtlSeconds: 2 });
    owner = await bootstrapOwner(t.hub);
  });
  afterAll(async () => {
    await t?.stop();
  });

  it("answers a remembered session without asking the database", async () => {
    const c = clients(t.hub.url, { token: owner.token });
    await c.identity.whoAmI({});
    // Every statement the hub runs from here on is seen (and still run).
    const statements: string[] = [];
    const query = t.hub.db.query.bind(t.hub.db);
    t.hub.db.query = (async (sql: string, params?: unknown[]) => {
      statements.push(sql);
      return query(sql, params);
    }) as typeof t.hub.db.query;
    try {
      expect((await c.identity.whoAmI({})).role).toBeDefined();
      expect(statements.filter((s) => s.includes("FROM memberships"))).toEqual([]);
    } finally {
      t.hub.db.query = query;
    }
  });

  it("calls that miss together share one lookup", async () => {
    const token = await signIn();
    const c = clients(t.hub.url, { token });
    const held = holdLookups();
    try {
      const calls = Array.from({ length: 20 }, () => c.identity.whoAmI({}));
      await new Promise((r) => setTimeout(r, 300));
      held.release();
      const answers = await Promise.all(calls);
      expect(answers.every((a) => a.role === answers[0]!.role)).toBe(true);
      expect(held.count()).toBe(1);
    } finally {
      held.restore();
    }
  });

  it("refuses a session once it expires, though the cache would trust it for a minute", async () => {
    const c = clients(t.hub.url, { token: owner.token });
    await c.identity.whoAmI({});
    // Session expiry has one-second resolution: 2 s of life ends at most 3 s from now.
    await new Promise((r) => setTimeout(r, 3_100));
    const err = await refusal(c.identity.whoAmI({}));
    expect(err.code).toBe(Code.Unauthenticated);
  });

  // Last: it ends every session of the owner.
  it("a call after a revocation does not take the answer of a lookup begun before it", async () => {
    const token = await signIn();
    const other = await signIn();
    const held = holdLookups();
    try {
      // Read before the revocation, and held: this call was concurrent with it, and passes.
      const before = clients(t.hub.url, { token }).identity.whoAmI({});
      while (held.count() === 0) await new Promise((r) => setTimeout(r, 5));
      held.restore();
      await clients(t.hub.url, { token: other }).identity.logout({ everywhere: true });
      const err = await refusal(clients(t.hub.url, { token }).identity.whoAmI({}));
      expect(err.code).toBe(Code.Unauthenticated);
      held.release();
      expect((await before).role).toBeDefined();
    } finally {
      held.release();
      held.restore();
    }
  });
});
