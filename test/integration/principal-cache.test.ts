// The hub's principal cache: it saves a database lookup per request, yet never trusts a credential
// past the credential's own expiry, and a change to who may do what takes effect at once.
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bootstrapOwner, clients, refusal, startTestHub, type TestHub } from "../support/hub.js";

describe("principal cache (60 s, far longer than any credential below lives)", () => {
  let t: TestHub;
  let owner: { token: string };

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

  it("refuses a session once it expires, though the cache would trust it for a minute", async () => {
    const c = clients(t.hub.url, { token: owner.token });
    await c.identity.whoAmI({});
    // Session expiry has one-second resolution: 2 s of life ends at most 3 s from now.
    await new Promise((r) => setTimeout(r, 3_100));
    const err = await refusal(c.identity.whoAmI({}));
    expect(err.code).toBe(Code.Unauthenticated);
  });
});
