// Identity acceptance, on PGlite and on PostgreSQL: first-owner setup (setup token, admin option),
// login and its rate limit, who-am-I, organizations, API tokens, members and roles, the last-owner
// rule, and the audit trail every mutation leaves (without a secret in it or in the logs).
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthMethod, Role } from "../../src/gen/flotilla/v1/identity_pb.js";
import { hasCapability, type RoleName } from "../../src/hub/identity/index.js";
import { CAPABILITIES, type HubOptions } from "../../src/hub/index.js";
import type { Db } from "../../src/store/index.js";
import { ENGINES, type EngineName } from "../support/engines.js";
import {
  bootstrapOwner,
  clients,
  PASSWORD,
  randomEmail,
  refusal,
  startTestHub,
  type TestHub,
} from "../support/hub.js";
import { createTestDatabase } from "../support/pg.js";

const ERROR_CODE = "flotilla-error-code";
const TRACEPARENT = /^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
const newCid = () => `identity-test-${randomBytes(8).toString("hex")}`;
const sha256Hex = (text: string) => createHash("sha256").update(text).digest("hex");
const unique = () => randomBytes(3).toString("hex");

async function expectRefused(
  call: Promise<unknown>,
  code: Code,
  flotillaCode: string,
): Promise<ConnectError> {
  const err = await refusal(call);
  expect({ code: Code[err.code], flotilla: err.metadata.get(ERROR_CODE) }).toEqual({
    code: Code[code],
    flotilla: flotillaCode,
  });
  return err;
}

interface AuditRow {
  organization_id: string | null;
  actor_type: string;
  actor_id: string | null;
  action: string;
  target_type: string | null;
  target_id: string | null;
  correlation_id: string;
  traceparent: string;
  details: Record<string, unknown>;
}

async function auditRows(db: Db, correlationId: string): Promise<AuditRow[]> {
  const { rows } = await db.query<AuditRow>(
    `SELECT organization_id, actor_type, actor_id, action, target_type, target_id, correlation_id,
            traceparent, details
     FROM audit_log WHERE correlation_id = $1 ORDER BY id`,
    [correlationId],
  );
  return rows;
}

async function count(db: Db, table: string, where = "true"): Promise<number> {
  const { rows } = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM ${table} WHERE ${where}`,
  );
  return rows[0]!.n;
}

/** The whole audit log and every captured log line as text, for secret scans. */
async function everythingWritten(db: Db, logs: Array<Record<string, unknown>>): Promise<string> {
  const { rows } = await db.query<{ j: string }>(
    "SELECT row_to_json(a)::text AS j FROM audit_log a ORDER BY id",
  );
  return [...rows.map((r) => r.j), ...logs.map((l) => JSON.stringify(l))].join("\n");
}

/** A store that outlives one hub, so a test can restart the hub on it. */
async function persistentStore(
  engine: EngineName,
): Promise<{ store: HubOptions["store"]; cleanup(): Promise<void> }> {
  if (engine === "pglite") {
    const dir = mkdtempSync(join(tmpdir(), "flotilla-identity-"));
    return {
      store: { kind: "embedded", dataDir: join(dir, "data") },
      cleanup: async () => rmSync(dir, { recursive: true, force: true }),
    };
  }
  const database = await createTestDatabase("identity_restart");
  return {
    store: { kind: "postgres", url: database.url, pool: { max: 5 } },
    cleanup: () => database.drop(),
  };
}

/**
 * A test hub on the given store. The store option decides the engine; the "pglite" label only
 * keeps startTestHub from creating (and later dropping) a database of its own.
 */
const startOn = (store: HubOptions["store"], overrides: Partial<HubOptions> = {}) =>
  startTestHub("pglite", { store, ...overrides });

const capabilitiesOf = (role: RoleName) =>
  (Object.keys(CAPABILITIES) as Array<keyof typeof CAPABILITIES>)
    .filter((c) => hasCapability(role, c))
    .sort();

for (const engine of ENGINES) {
  describe(`first-owner setup with the one-time setup token [${engine}]`, () => {
    let store: Awaited<ReturnType<typeof persistentStore>>;
    const hubs: TestHub[] = [];
    const current = () => hubs[hubs.length - 1]!;
    const restart = async () => {
      await current().stop();
      hubs.push(await startOn(store.store));
      return current();
    };

    beforeAll(async () => {
      store = await persistentStore(engine);
      hubs.push(await startOn(store.store));
    });
    afterAll(async () => {
      for (const h of hubs) await h.stop();
      await store?.cleanup();
    });

    it("a hub without an owner reports setup required and stores only a hash of its setup token", async () => {
      const { hub } = current();
      expect(hub.setupToken).toMatch(/^fst_[A-Za-z0-9_-]{32}$/);
      expect((await clients(hub.url).identity.getSetupStatus({})).setupRequired).toBe(true);
      const { rows } = await hub.db.query<{ hash: string; j: string }>(
        "SELECT encode(token_hash, 'hex') AS hash, row_to_json(s)::text AS j FROM setup_state s",
      );
      expect(rows).toHaveLength(1);
      expect(rows[0]!.hash).toBe(sha256Hex(hub.setupToken!));
      expect(rows[0]!.j).not.toContain(hub.setupToken!.slice(4));
    });

    it("Bootstrap with a wrong setup token answers auth.setup_token_invalid and creates nothing", async () => {
      const { hub } = current();
      await expectRefused(
        clients(hub.url).identity.bootstrap({
          setupToken: `fst_${"x".repeat(32)}`,
          email: randomEmail("intruder"),
          password: PASSWORD,
        }),
        Code.PermissionDenied,
        "auth.setup_token_invalid",
      );
      for (const table of ["users", "organizations", "memberships", "audit_log"])
        expect(await count(hub.db, table), table).toBe(0);
      expect((await clients(hub.url).identity.getSetupStatus({})).setupRequired).toBe(true);
    });

    it("a restart before setup replaces the token; of two concurrent Bootstraps with the new one exactly one creates the owner, audited, with no secret written", async () => {
      const oldToken = current().hub.setupToken!;
      const { hub, logs } = await restart();
      const newToken = hub.setupToken!;
      expect(newToken).toMatch(/^fst_/);
      expect(newToken).not.toBe(oldToken);
      await expectRefused(
        clients(hub.url).identity.bootstrap({
          setupToken: oldToken,
          email: randomEmail("late"),
          password: PASSWORD,
        }),
        Code.PermissionDenied,
        "auth.setup_token_invalid",
      );

      const attempts = [newCid(), newCid()].map(async (cid) => {
        const email = randomEmail("first");
        const c = clients(hub.url, { headers: { "x-correlation-id": cid } });
        const r = await c.identity.bootstrap({
          setupToken: newToken,
          email,
          password: PASSWORD,
          displayName: "First Owner",
          organizationName: "Acme Setup",
        });
        return { cid, r };
      });
      const settled = await Promise.allSettled(attempts);
      const won = settled.filter((s) => s.status === "fulfilled");
      const lost = settled.filter((s) => s.status === "rejected");
      expect(won).toHaveLength(1);
      expect(lost).toHaveLength(1);
      expect(
        ConnectError.from((lost[0] as PromiseRejectedResult).reason).metadata.get(ERROR_CODE),
      ).toBe("auth.setup_closed");
      const { cid, r } = (won[0] as PromiseFulfilledResult<Awaited<(typeof attempts)[0]>>).value;
      expect(await count(hub.db, "users")).toBe(1);
      expect(await count(hub.db, "memberships", "role = 'owner'")).toBe(1);

      const me = await clients(hub.url, { token: r.sessionToken }).identity.whoAmI({});
      expect(me.role).toBe(Role.OWNER);
      expect(me.user?.id).toBe(r.user!.id);
      expect(me.organization).toMatchObject({ id: r.organization!.id, name: "Acme Setup" });
      expect(me.organization?.slug).toBe("acme-setup");

      const audit = await auditRows(hub.db, cid);
      expect(audit).toHaveLength(1);
      expect(audit[0]).toMatchObject({
        organization_id: r.organization!.id,
        actor_type: "anonymous",
        actor_id: null,
        action: "identity.bootstrap",
        target_type: "user",
        target_id: r.user!.id,
        correlation_id: cid,
      });
      expect(audit[0]!.traceparent).toMatch(TRACEPARENT);

      const written = await everythingWritten(hub.db, logs);
      expect(written).toContain(cid); // the scan reads this request's rows and lines
      for (const secret of [oldToken, newToken, PASSWORD, r.sessionToken])
        expect(written).not.toContain(secret);
      const { rows } = await hub.db.query<{ password_hash: string }>(
        "SELECT password_hash FROM users",
      );
      expect(rows[0]!.password_hash).toMatch(/^scrypt\$/);
      expect(rows[0]!.password_hash).not.toContain(PASSWORD);
    });

    it("the setup token is one-time: after setup Bootstrap answers auth.setup_closed, and a restart mints no new token", async () => {
      const token = current().hub.setupToken!;
      await expectRefused(
        clients(current().hub.url).identity.bootstrap({
          setupToken: token,
          email: randomEmail("again"),
          password: PASSWORD,
        }),
        Code.FailedPrecondition,
        "auth.setup_closed",
      );
      const { hub } = await restart();
      expect(hub.setupToken).toBeUndefined();
      expect((await clients(hub.url).identity.getSetupStatus({})).setupRequired).toBe(false);
      await expectRefused(
        clients(hub.url).identity.bootstrap({
          setupToken: token,
          email: randomEmail("again"),
          password: PASSWORD,
        }),
        Code.FailedPrecondition,
        "auth.setup_closed",
      );
      expect(await count(hub.db, "users")).toBe(1);
    });
  });

  describe(`first owner from the admin option [${engine}]`, () => {
    const ADMIN = { email: `admin-${unique()}@example.com`, password: "admin-password-0123" };
    let store: Awaited<ReturnType<typeof persistentStore>>;
    const hubs: TestHub[] = [];

    beforeAll(async () => {
      store = await persistentStore(engine);
      hubs.push(await startOn(store.store, { admin: ADMIN }));
    });
    afterAll(async () => {
      for (const h of hubs) await h.stop();
      await store?.cleanup();
    });

    it("the hub creates the owner at start, mints no setup token, closes Bootstrap and audits the creation", async () => {
      const { hub, logs } = hubs[0]!;
      expect(hub.createdOwner).toBe(ADMIN.email);
      expect(hub.setupToken).toBeUndefined();
      const c = clients(hub.url);
      expect((await c.identity.getSetupStatus({})).setupRequired).toBe(false);
      const login = await c.identity.login(ADMIN);
      expect(login.role).toBe(Role.OWNER);
      expect(login.user?.email).toBe(ADMIN.email);
      await expectRefused(
        c.identity.bootstrap({
          setupToken: `fst_${"y".repeat(32)}`,
          email: randomEmail(),
          password: PASSWORD,
        }),
        Code.FailedPrecondition,
        "auth.setup_closed",
      );
      const { rows } = await hub.db.query<AuditRow>(
        "SELECT * FROM audit_log WHERE action = 'identity.bootstrap'",
      );
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({
        organization_id: login.organization!.id,
        actor_type: "anonymous",
        target_type: "user",
        target_id: login.user!.id,
      });
      const written = await everythingWritten(hub.db, logs);
      expect(written).toContain(ADMIN.email);
      expect(written).not.toContain(ADMIN.password);
    });

    it("a restart with the admin option, even naming another email, creates no second user or owner", async () => {
      await hubs[hubs.length - 1]!.stop();
      const other = {
        email: `other-admin-${unique()}@example.com`,
        password: "other-password-0123",
      };
      hubs.push(await startOn(store.store, { admin: other }));
      const { hub } = hubs[hubs.length - 1]!;
      expect(hub.createdOwner).toBeUndefined();
      expect(hub.setupToken).toBeUndefined();
      expect(await count(hub.db, "users")).toBe(1);
      expect(await count(hub.db, "memberships", "role = 'owner'")).toBe(1);
      await expectRefused(
        clients(hub.url).identity.login(other),
        Code.Unauthenticated,
        "auth.invalid_credentials",
      );
      expect((await clients(hub.url).identity.login(ADMIN)).role).toBe(Role.OWNER);
    });
  });

  describe(`sign-in, organizations, API tokens, members and audit [${engine}]`, () => {
    let t: TestHub;
    let url: string;
    let db: Db;
    let owner: { token: string; email: string };
    let ownerId: string;
    let orgId: string;
    /** Clients signed in with `token`, sending x-correlation-id `cid`. */
    const as = (token: string, cid = newCid()) =>
      clients(url, { token, headers: { "x-correlation-id": cid } });
    const login = async (email: string, password = PASSWORD, organizationSlug = "") =>
      (await clients(url).identity.login({ email, password, organizationSlug })).sessionToken;
    /** Adds a member to the owner's organization; returns its id, email and a session. */
    const addMember = async (role: Role, token = owner.token) => {
      const email = randomEmail("member");
      const r = await as(token).orgs.addMember({ email, role, initialPassword: PASSWORD });
      return { id: r.member!.user!.id, email, token: await login(email) };
    };

    beforeAll(async () => {
      t = await startTestHub(engine, {
        loginLimits: { perEmail: 3, perAddress: 10_000, windowSeconds: 900 },
      });
      url = t.hub.url;
      db = t.hub.db;
      owner = await bootstrapOwner(t.hub);
      const me = await clients(url, { token: owner.token }).identity.whoAmI({});
      ownerId = me.user!.id;
      orgId = me.organization!.id;
    });
    afterAll(async () => {
      await t?.stop();
    });

    describe("login", () => {
      it("the right password returns a session that works as a bearer token and as the HttpOnly cookie", async () => {
        const res = await fetch(`${url}/flotilla.v1.IdentityService/Login`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ email: owner.email, password: PASSWORD }),
        });
        expect(res.status).toBe(200);
        const body = (await res.json()) as { sessionToken: string; role: string };
        expect(body.role).toBe("ROLE_OWNER");
        const cookie = res.headers.getSetCookie().find((c) => c.startsWith("flotilla_session="));
        expect(cookie).toBeDefined();
        expect(cookie).toContain("HttpOnly");
        expect(cookie).toContain("SameSite=Lax");
        const bearer = await clients(url, { token: body.sessionToken }).identity.whoAmI({});
        expect(bearer.user?.email).toBe(owner.email);
        const viaCookie = await clients(url, {
          headers: { cookie: cookie!.split(";")[0]! },
        }).identity.whoAmI({});
        expect(viaCookie.user?.id).toBe(bearer.user?.id);
        expect(viaCookie.authMethod).toBe(AuthMethod.SESSION);
      });

      it("the email matches case-insensitively", async () => {
        const token = await login(owner.email.toUpperCase());
        expect((await clients(url, { token }).identity.whoAmI({})).user?.id).toBe(ownerId);
      });

      it("a wrong password and an unknown email get the same error: auth.invalid_credentials with the same message", async () => {
        const member = await addMember(Role.VIEWER);
        const wrong = await expectRefused(
          clients(url).identity.login({ email: member.email, password: "wrong-password-123" }),
          Code.Unauthenticated,
          "auth.invalid_credentials",
        );
        const unknown = await expectRefused(
          clients(url).identity.login({ email: randomEmail("ghost"), password: PASSWORD }),
          Code.Unauthenticated,
          "auth.invalid_credentials",
        );
        expect(unknown.rawMessage).toBe(wrong.rawMessage);
        expect(wrong.rawMessage).not.toContain(member.email);
      });

      it("after the configured number of failures an email is refused with auth.rate_limited, even with the right password, while other emails still sign in", async () => {
        const member = await addMember(Role.DEVELOPER);
        for (let i = 0; i < 3; i++) {
          await expectRefused(
            clients(url).identity.login({ email: member.email, password: `wrong-password-${i}` }),
            Code.Unauthenticated,
            "auth.invalid_credentials",
          );
        }
        const limited = await expectRefused(
          clients(url).identity.login({ email: member.email, password: PASSWORD }),
          Code.ResourceExhausted,
          "auth.rate_limited",
        );
        expect(limited.rawMessage).toContain("too many failed sign-ins");
        // The limit is per email: the owner still signs in.
        expect(await login(owner.email)).not.toBe("");
        // Sessions issued before the lockout keep working.
        expect((await clients(url, { token: member.token }).identity.whoAmI({})).user?.id).toBe(
          member.id,
        );
      });

      it("of a burst of 24 concurrent guesses, no more than the limit (3) have their password checked", async () => {
        const member = await addMember(Role.VIEWER);
        const codeOf = (err: unknown) =>
          err instanceof ConnectError ? err.metadata.get("flotilla-error-code") : String(err);
        const answers = await Promise.all(
          Array.from({ length: 24 }, (_, i) =>
            clients(url)
              .identity.login({
                email: member.email,
                password: i === 23 ? PASSWORD : `wrong-password-${i}`,
              })
              .then(
                () => "signed in",
                (err) => codeOf(err),
              ),
          ),
        );
        const tally = (code: string) => answers.filter((a) => a === code).length;
        // perEmail is 3. The right password is one of 24: it signs in only if it is among the
        // at most 3 attempts let through, so at least 21 are refused before any check.
        expect(tally("auth.rate_limited")).toBeGreaterThanOrEqual(21);
        expect(tally("auth.invalid_credentials") + tally("signed in")).toBeLessThanOrEqual(3);
        expect(
          tally("auth.rate_limited") + tally("auth.invalid_credentials") + tally("signed in"),
        ).toBe(24);
        // Refused attempts are not failures: only the checked wrong ones are recorded.
        expect(
          await count(
            db,
            "login_attempts",
            `NOT succeeded AND email_key = '${member.email.toLowerCase()}'`,
          ),
        ).toBe(tally("auth.invalid_credentials"));
      });

      it("an unknown email is rate limited the same way (the limit reveals no account)", async () => {
        const ghost = randomEmail("ghost");
        for (let i = 0; i < 3; i++) {
          await expectRefused(
            clients(url).identity.login({ email: ghost, password: PASSWORD }),
            Code.Unauthenticated,
            "auth.invalid_credentials",
          );
        }
        await expectRefused(
          clients(url).identity.login({ email: ghost, password: PASSWORD }),
          Code.ResourceExhausted,
          "auth.rate_limited",
        );
      });

      it("Logout everywhere refuses every earlier session of the user; a later login works", async () => {
        const member = await addMember(Role.VIEWER);
        const second = await login(member.email);
        await as(member.token).identity.logout({ everywhere: true });
        for (const token of [member.token, second]) {
          await expectRefused(
            clients(url, { token }).identity.whoAmI({}),
            Code.Unauthenticated,
            "auth.unauthenticated",
          );
        }
        // Sessions carry one-second timestamps: one minted in the logout's second counts as older.
        await new Promise((r) => setTimeout(r, 1100));
        const fresh = await login(member.email);
        expect((await clients(url, { token: fresh }).identity.whoAmI({})).user?.id).toBe(member.id);
      });
    });

    describe("who am I and my organizations", () => {
      it("WhoAmI with a session names the user, organization, role, the role's capabilities and the session method", async () => {
        const me = await clients(url, { token: owner.token }).identity.whoAmI({});
        expect(me.user).toMatchObject({ id: ownerId, email: owner.email });
        expect(me.organization?.id).toBe(orgId);
        expect(me.role).toBe(Role.OWNER);
        expect(me.capabilities).toEqual(capabilitiesOf("owner"));
        expect(me.capabilities).toContain("members.grant_owner");
        expect(me.authMethod).toBe(AuthMethod.SESSION);
        expect(me.apiTokenId).toBe("");

        const dev = await addMember(Role.DEVELOPER);
        const devMe = await clients(url, { token: dev.token }).identity.whoAmI({});
        expect(devMe.role).toBe(Role.DEVELOPER);
        expect(devMe.capabilities).toEqual(capabilitiesOf("developer"));
        expect(devMe.capabilities).not.toContain("members.manage");
      });

      it("WhoAmI with an API token names the token and the api-token method", async () => {
        const created = await as(owner.token).identity.createApiToken({ name: "whoami" });
        const me = await clients(url, { token: created.secret }).identity.whoAmI({});
        expect(me.user?.id).toBe(ownerId);
        expect(me.organization?.id).toBe(orgId);
        expect(me.authMethod).toBe(AuthMethod.API_TOKEN);
        expect(me.apiTokenId).toBe(created.token!.id);
      });

      it("ListMyOrganizations lists every organization of the user with its role there; Login picks one by slug", async () => {
        const member = await addMember(Role.VIEWER);
        const other = await as(member.token).orgs.createOrganization({ name: `Side ${unique()}` });
        const mine = await clients(url, { token: member.token }).identity.listMyOrganizations({});
        const byId = Object.fromEntries(mine.memberships.map((m) => [m.organization!.id, m.role]));
        expect(byId).toEqual({ [orgId]: Role.VIEWER, [other.organization!.id]: Role.OWNER });

        const inOther = await login(member.email, PASSWORD, other.organization!.slug);
        const me = await clients(url, { token: inOther }).identity.whoAmI({});
        expect(me.organization?.id).toBe(other.organization!.id);
        expect(me.role).toBe(Role.OWNER);

        const ownerOnly = await clients(url, { token: owner.token }).identity.listMyOrganizations(
          {},
        );
        expect(ownerOnly.memberships.map((m) => m.organization?.id)).not.toContain(
          other.organization!.id,
        );
        await expectRefused(
          clients(url).identity.login({
            email: owner.email,
            password: PASSWORD,
            organizationSlug: other.organization!.slug,
          }),
          Code.NotFound,
          "resource.not_found",
        );
      });
    });

    describe("API tokens", () => {
      it("CreateApiToken shows the secret once: listings never carry it and the table stores only its SHA-256", async () => {
        const created = await as(owner.token).identity.createApiToken({ name: "ci" });
        const { secret } = created;
        expect(secret).toMatch(/^flt_[A-Za-z0-9_-]{43}$/);
        expect(created.token?.prefix).toBe(secret.slice(0, 10));
        const listed = await clients(url, { token: owner.token }).identity.listApiTokens({});
        const mine = listed.tokens.find((tk) => tk.id === created.token!.id);
        expect(mine?.name).toBe("ci");
        expect(
          JSON.stringify(listed, (_k, v) => (typeof v === "bigint" ? String(v) : v)),
        ).not.toContain(secret.slice(10));

        const { rows } = await db.query<{ hash: string; j: string }>(
          "SELECT encode(token_hash, 'hex') AS hash, row_to_json(t)::text AS j FROM api_tokens t WHERE id = $1",
          [created.token!.id],
        );
        expect(rows[0]!.hash).toBe(sha256Hex(secret));
        const whole = await db.query<{ j: string }>(
          "SELECT row_to_json(t)::text AS j FROM api_tokens t",
        );
        expect(whole.rows.map((r) => r.j).join("\n")).not.toContain(secret.slice(10));
      });

      it("last_used_at is set on first use and moves forward once it is older than a minute", async () => {
        const created = await as(owner.token).identity.createApiToken({ name: "usage" });
        const lastUsed = async () =>
          (
            await db.query<{ t: Date | null }>(
              "SELECT last_used_at AS t FROM api_tokens WHERE id = $1",
              [created.token!.id],
            )
          ).rows[0]!.t;
        expect(await lastUsed()).toBeNull();
        await clients(url, { token: created.secret }).identity.whoAmI({});
        const first = await lastUsed();
        expect(first).toBeInstanceOf(Date);

        await db.query(
          "UPDATE api_tokens SET last_used_at = now() - interval '2 minutes' WHERE id = $1",
          [created.token!.id],
        );
        // The edit stands for two minutes passing; the hub would trust the token it resolved
        // for its cache's 5 s, so let it forget, as those minutes would have.
        t.hub.identity.forgetPrincipals();
        const aged = (await lastUsed())!;
        await clients(url, { token: created.secret }).identity.whoAmI({});
        const moved = (await lastUsed())!;
        expect(moved.getTime()).toBeGreaterThan(aged.getTime());
        const listed = await clients(url, { token: owner.token }).identity.listApiTokens({});
        expect(listed.tokens.find((tk) => tk.id === created.token!.id)?.lastUsedAt).toBeDefined();
      });

      it("a revoked token is Unauthenticated at once; revoking again changes nothing", async () => {
        const created = await as(owner.token).identity.createApiToken({ name: "to-revoke" });
        const c = clients(url, { token: created.secret });
        expect((await c.identity.whoAmI({})).apiTokenId).toBe(created.token!.id);
        const revoked = await as(owner.token).identity.revokeApiToken({ id: created.token!.id });
        expect(revoked.token?.revokedAt).toBeDefined();
        await expectRefused(c.identity.whoAmI({}), Code.Unauthenticated, "auth.unauthenticated");
        const again = await as(owner.token).identity.revokeApiToken({ id: created.token!.id });
        expect(again.token?.revokedAt).toEqual(revoked.token?.revokedAt);
        await expectRefused(c.identity.whoAmI({}), Code.Unauthenticated, "auth.unauthenticated");
      });

      it("an expired token is Unauthenticated", async () => {
        const created = await as(owner.token).identity.createApiToken({
          name: "short",
          ttlSeconds: 60n,
        });
        expect(created.token?.expiresAt).toBeDefined();
        const c = clients(url, { token: created.secret });
        await c.identity.whoAmI({});
        await db.query(
          "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1",
          [created.token!.id],
        );
        // The edit stands for the minute passing; the hub never trusts a cached token past its
        // expiry, which the cache read as a minute away, so let it forget what it resolved.
        t.hub.identity.forgetPrincipals();
        await expectRefused(c.identity.whoAmI({}), Code.Unauthenticated, "auth.unauthenticated");
      });

      it("a developer cannot revoke another member's token (NotFound), an admin can", async () => {
        const dev = await addMember(Role.DEVELOPER);
        const admin = await addMember(Role.ADMIN);
        const ownerToken = await as(owner.token).identity.createApiToken({ name: "owner's" });
        await expectRefused(
          as(dev.token).identity.revokeApiToken({ id: ownerToken.token!.id }),
          Code.NotFound,
          "resource.not_found",
        );
        expect(
          (await clients(url, { token: ownerToken.secret }).identity.whoAmI({})).user?.id,
        ).toBe(ownerId);
        const devToken = await as(dev.token).identity.createApiToken({ name: "dev's" });
        await as(admin.token).identity.revokeApiToken({ id: devToken.token!.id });
        await expectRefused(
          clients(url, { token: devToken.secret }).identity.whoAmI({}),
          Code.Unauthenticated,
          "auth.unauthenticated",
        );
      });
    });

    describe("members", () => {
      it("AddMember creates the user with the initial password, who then signs in with the granted role", async () => {
        const email = randomEmail("new");
        const added = await as(owner.token).orgs.addMember({
          email,
          role: Role.DEVELOPER,
          displayName: "New Person",
          initialPassword: "initial-password-1",
        });
        expect(added.member?.role).toBe(Role.DEVELOPER);
        expect(added.member?.user).toMatchObject({ email, displayName: "New Person" });
        const listed = await clients(url, { token: owner.token }).orgs.listMembers({});
        expect(listed.members.find((m) => m.user?.id === added.member!.user!.id)?.role).toBe(
          Role.DEVELOPER,
        );
        const session = await login(email, "initial-password-1");
        expect((await clients(url, { token: session }).identity.whoAmI({})).role).toBe(
          Role.DEVELOPER,
        );
      });

      it("AddMember of an existing member answers resource.already_exists", async () => {
        const member = await addMember(Role.VIEWER);
        await expectRefused(
          as(owner.token).orgs.addMember({ email: member.email, role: Role.ADMIN }),
          Code.AlreadyExists,
          "resource.already_exists",
        );
      });

      it("an account another organization made (and so set the password of) cannot join: membership.account_held_elsewhere, and nothing changes", async () => {
        // Organization B's owner makes an account under a newcomer's email before A adds it.
        const outsider = await addMember(Role.VIEWER);
        const other = await as(outsider.token).orgs.createOrganization({
          name: `Other ${unique()}`,
        });
        const inOther = await login(outsider.email, PASSWORD, other.organization!.slug);
        const newcomer = randomEmail("newcomer");
        await as(inOther).orgs.addMember({
          email: newcomer,
          role: Role.VIEWER,
          initialPassword: "chosen-by-other-org",
        });
        const before = await count(db, "memberships");
        for (const initialPassword of ["", "chosen-by-this-org"]) {
          const refused = await expectRefused(
            as(owner.token).orgs.addMember({ email: newcomer, role: Role.ADMIN, initialPassword }),
            Code.FailedPrecondition,
            "membership.account_held_elsewhere",
          );
          expect(refused.rawMessage).toMatch(/^email: /);
        }
        expect(await count(db, "memberships")).toBe(before);
        await expectRefused(
          clients(url).identity.login({
            email: newcomer,
            password: "chosen-by-other-org",
            organizationSlug: (await as(owner.token).orgs.getOrganization({})).organization!.slug,
          }),
          Code.NotFound,
          "resource.not_found",
        );
      });

      it("an account whose holder chose its password (first-owner setup) joins another organization without one; an initial_password for it is refused", async () => {
        const member = await addMember(Role.VIEWER);
        const theirs = await as(member.token).orgs.createOrganization({
          name: `Theirs ${unique()}`,
        });
        const slug = theirs.organization!.slug;
        const inTheirs = await login(member.email, PASSWORD, slug);
        await expectRefused(
          as(inTheirs).orgs.addMember({
            email: owner.email,
            role: Role.DEVELOPER,
            initialPassword: "ignored-password-1",
          }),
          Code.InvalidArgument,
          "validation.failed",
        );
        const added = await as(inTheirs).orgs.addMember({
          email: owner.email,
          role: Role.DEVELOPER,
        });
        expect(added.member?.user?.id).toBe(ownerId);
        expect(await login(owner.email, PASSWORD, slug)).not.toBe("");
      });

      it("an account this organization made joins it again after its removal", async () => {
        const member = await addMember(Role.VIEWER);
        await as(owner.token).orgs.removeMember({ userId: member.id });
        const again = await as(owner.token).orgs.addMember({
          email: member.email,
          role: Role.VIEWER,
        });
        expect(again.member?.user?.id).toBe(member.id);
        expect(await login(member.email)).not.toBe("");
      });

      it("UpdateMemberRole takes effect on the member's next request", async () => {
        const member = await addMember(Role.DEVELOPER);
        const c = clients(url, { token: member.token });
        await expectRefused(
          c.orgs.listAuditEvents({}),
          Code.PermissionDenied,
          "auth.permission_denied",
        );
        const up = await as(owner.token).orgs.updateMemberRole({
          userId: member.id,
          role: Role.ADMIN,
        });
        expect(up.member?.role).toBe(Role.ADMIN);
        expect((await c.orgs.listAuditEvents({})).events.length).toBeGreaterThan(0);
        await as(owner.token).orgs.updateMemberRole({ userId: member.id, role: Role.VIEWER });
        expect((await c.identity.whoAmI({})).role).toBe(Role.VIEWER);
        await expectRefused(
          c.orgs.addMember({ email: randomEmail(), role: Role.VIEWER, initialPassword: PASSWORD }),
          Code.PermissionDenied,
          "auth.permission_denied",
        );
      });

      it("RemoveMember ends the member's access at once: their session and API tokens are refused", async () => {
        const member = await addMember(Role.DEVELOPER);
        const token = await as(member.token).identity.createApiToken({ name: "leaving" });
        await as(owner.token).orgs.removeMember({ userId: member.id });
        for (const credential of [member.token, token.secret]) {
          await expectRefused(
            clients(url, { token: credential }).identity.whoAmI({}),
            Code.Unauthenticated,
            "auth.unauthenticated",
          );
        }
        const listed = await clients(url, { token: owner.token }).orgs.listMembers({});
        expect(listed.members.map((m) => m.user?.id)).not.toContain(member.id);
        await expectRefused(
          as(owner.token).orgs.removeMember({ userId: member.id }),
          Code.NotFound,
          "resource.not_found",
        );
      });

      it("the last owner can neither demote nor remove itself (membership.last_owner), and nothing changes; with a second owner it can step down", async () => {
        const solo = await as(owner.token).orgs.createOrganization({ name: `Solo ${unique()}` });
        const soloId = solo.organization!.id;
        const inSolo = await login(owner.email, PASSWORD, solo.organization!.slug);
        const roleInSolo = async () =>
          (
            await db.query<{ role: string }>(
              "SELECT role FROM memberships WHERE organization_id = $1 AND user_id = $2",
              [soloId, ownerId],
            )
          ).rows[0]?.role;
        for (const [label, call] of [
          [
            "demote",
            (cid: string) =>
              as(inSolo, cid).orgs.updateMemberRole({ userId: ownerId, role: Role.ADMIN }),
          ],
          ["remove", (cid: string) => as(inSolo, cid).orgs.removeMember({ userId: ownerId })],
        ] as const) {
          const cid = newCid();
          const err = await expectRefused(
            call(cid),
            Code.FailedPrecondition,
            "membership.last_owner",
          );
          expect(err.rawMessage, label).toContain("at least one owner");
          expect(await auditRows(db, cid), label).toEqual([]);
          expect(await roleInSolo(), label).toBe("owner");
        }
        const second = await addMember(Role.VIEWER, inSolo);
        await as(inSolo).orgs.updateMemberRole({ userId: second.id, role: Role.OWNER });
        const stepped = await as(inSolo).orgs.updateMemberRole({
          userId: ownerId,
          role: Role.ADMIN,
        });
        expect(stepped.member?.role).toBe(Role.ADMIN);
        expect(
          await count(db, "memberships", `organization_id = '${soloId}' AND role = 'owner'`),
        ).toBe(1);
      });

      it("two owners demoting each other at the same moment leave exactly one owner", async () => {
        const duo = await as(owner.token).orgs.createOrganization({ name: `Duo ${unique()}` });
        const duoId = duo.organization!.id;
        const slug = duo.organization!.slug;
        const inDuo = await login(owner.email, PASSWORD, slug);
        const email = randomEmail("co-owner");
        const co = await as(inDuo).orgs.addMember({
          email,
          role: Role.OWNER,
          initialPassword: PASSWORD,
        });
        const coInDuo = await login(email, PASSWORD, slug);
        const results = await Promise.allSettled([
          as(inDuo).orgs.updateMemberRole({ userId: co.member!.user!.id, role: Role.ADMIN }),
          as(coInDuo).orgs.updateMemberRole({ userId: ownerId, role: Role.ADMIN }),
        ]);
        expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
        const failed = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
        expect(ConnectError.from(failed.reason).code).not.toBe(Code.Internal);
        expect(
          await count(db, "memberships", `organization_id = '${duoId}' AND role = 'owner'`),
        ).toBe(1);
      });
    });

    describe("audit", () => {
      interface Expected {
        organization_id: string;
        actor_type: string;
        actor_id: string | null;
        action: string;
        target_type: string;
        target_id: string;
      }
      const byUser = (id: string) => ({ actor_type: "user", actor_id: id });
      const MUTATIONS: Array<[string, (cid: string) => Promise<Expected>]> = [
        [
          "Login",
          async (cid) => {
            await clients(url, { headers: { "x-correlation-id": cid } }).identity.login({
              email: owner.email,
              password: PASSWORD,
            });
            return {
              organization_id: orgId,
              ...byUser(ownerId),
              action: "identity.login",
              target_type: "user",
              target_id: ownerId,
            };
          },
        ],
        [
          "Logout everywhere",
          async (cid) => {
            const m = await addMember(Role.VIEWER);
            await as(m.token, cid).identity.logout({ everywhere: true });
            return {
              organization_id: orgId,
              ...byUser(m.id),
              action: "identity.logout_everywhere",
              target_type: "user",
              target_id: m.id,
            };
          },
        ],
        [
          "CreateApiToken",
          async (cid) => {
            const r = await as(owner.token, cid).identity.createApiToken({ name: "audited" });
            return {
              organization_id: orgId,
              ...byUser(ownerId),
              action: "identity.api_token.create",
              target_type: "api_token",
              target_id: r.token!.id,
            };
          },
        ],
        [
          "RevokeApiToken",
          async (cid) => {
            const r = await as(owner.token).identity.createApiToken({ name: "audited-revoke" });
            await as(owner.token, cid).identity.revokeApiToken({ id: r.token!.id });
            return {
              organization_id: orgId,
              ...byUser(ownerId),
              action: "identity.api_token.revoke",
              target_type: "api_token",
              target_id: r.token!.id,
            };
          },
        ],
        [
          "CreateOrganization",
          async (cid) => {
            const r = await as(owner.token, cid).orgs.createOrganization({
              name: `Audited ${unique()}`,
            });
            return {
              organization_id: r.organization!.id,
              ...byUser(ownerId),
              action: "identity.organization.create",
              target_type: "organization",
              target_id: r.organization!.id,
            };
          },
        ],
        [
          "UpdateOrganization",
          async (cid) => {
            await as(owner.token, cid).orgs.updateOrganization({ name: `Acme ${unique()}` });
            return {
              organization_id: orgId,
              ...byUser(ownerId),
              action: "identity.organization.update",
              target_type: "organization",
              target_id: orgId,
            };
          },
        ],
        [
          "AddMember",
          async (cid) => {
            const r = await as(owner.token, cid).orgs.addMember({
              email: randomEmail("audited"),
              role: Role.VIEWER,
              initialPassword: PASSWORD,
            });
            return {
              organization_id: orgId,
              ...byUser(ownerId),
              action: "identity.member.add",
              target_type: "user",
              target_id: r.member!.user!.id,
            };
          },
        ],
        [
          "UpdateMemberRole",
          async (cid) => {
            const m = await addMember(Role.VIEWER);
            await as(owner.token, cid).orgs.updateMemberRole({ userId: m.id, role: Role.ADMIN });
            return {
              organization_id: orgId,
              ...byUser(ownerId),
              action: "identity.member.update_role",
              target_type: "user",
              target_id: m.id,
            };
          },
        ],
        [
          "RemoveMember",
          async (cid) => {
            const m = await addMember(Role.VIEWER);
            await as(owner.token, cid).orgs.removeMember({ userId: m.id });
            return {
              organization_id: orgId,
              ...byUser(ownerId),
              action: "identity.member.remove",
              target_type: "user",
              target_id: m.id,
            };
          },
        ],
        [
          "AddMember with an API token (the token is the actor)",
          async (cid) => {
            const tk = await as(owner.token).identity.createApiToken({ name: "actor" });
            const r = await as(tk.secret, cid).orgs.addMember({
              email: randomEmail("by-token"),
              role: Role.VIEWER,
              initialPassword: PASSWORD,
            });
            return {
              organization_id: orgId,
              actor_type: "token",
              actor_id: tk.token!.id,
              action: "identity.member.add",
              target_type: "user",
              target_id: r.member!.user!.id,
            };
          },
        ],
      ];

      it.each(MUTATIONS)(
        "%s writes one audit row with actor, action, target, tenant and the request's correlation id",
        async (_, run) => {
          const cid = newCid();
          const expected = await run(cid);
          const rows = await auditRows(db, cid);
          expect(rows).toHaveLength(1);
          expect(rows[0]).toMatchObject({ ...expected, correlation_id: cid });
          expect(rows[0]!.traceparent).toMatch(TRACEPARENT);
        },
      );

      it("the role change and removal rows record the roles involved", async () => {
        const m = await addMember(Role.DEVELOPER);
        const cid1 = newCid();
        await as(owner.token, cid1).orgs.updateMemberRole({ userId: m.id, role: Role.ADMIN });
        expect((await auditRows(db, cid1))[0]?.details).toEqual({ from: "developer", to: "admin" });
        const cid2 = newCid();
        await as(owner.token, cid2).orgs.removeMember({ userId: m.id });
        expect((await auditRows(db, cid2))[0]?.details).toEqual({ role: "admin" });
      });

      it("a refused mutation writes no audit row", async () => {
        const viewer = await addMember(Role.VIEWER);
        const refused: Array<(cid: string) => Promise<unknown>> = [
          (cid) =>
            as(viewer.token, cid).orgs.addMember({
              email: randomEmail(),
              role: Role.VIEWER,
              initialPassword: PASSWORD,
            }),
          (cid) => as(owner.token, cid).orgs.addMember({ email: viewer.email, role: Role.ADMIN }),
          (cid) => as(owner.token, cid).identity.createApiToken({ name: "" }),
          (cid) => as(owner.token, cid).identity.revokeApiToken({ id: randomUUID() }),
          (cid) =>
            clients(url, { headers: { "x-correlation-id": cid } }).identity.login({
              email: viewer.email,
              password: "wrong-password-xyz",
            }),
        ];
        for (const call of refused) {
          const cid = newCid();
          await refusal(call(cid));
          expect(await auditRows(db, cid)).toEqual([]);
        }
      });

      it("ListAuditEvents returns the organization's rows newest first, with correlation ids, and pages with beforeId", async () => {
        const cid = newCid();
        const r = await as(owner.token, cid).identity.createApiToken({ name: "listed" });
        const c = clients(url, { token: owner.token });
        const page = await c.orgs.listAuditEvents({ limit: 3 });
        expect(page.events).toHaveLength(3);
        expect(page.events[0]).toMatchObject({
          action: "identity.api_token.create",
          actorType: "user",
          actorId: ownerId,
          targetType: "api_token",
          targetId: r.token!.id,
          correlationId: cid,
        });
        const ids = page.events.map((e) => e.id);
        expect([...ids].sort().reverse()).toEqual(ids);
        const next = await c.orgs.listAuditEvents({ limit: 3, beforeId: ids[2]! });
        expect(next.events.length).toBeGreaterThan(0);
        for (const e of next.events) expect(e.id < ids[2]!).toBe(true);
      });

      it("no password, API token secret, session token or initial password appears in any audit row or log line", async () => {
        const initialPassword = `initial-${randomBytes(8).toString("hex")}`;
        const wrongPassword = `wrong-${randomBytes(8).toString("hex")}`;
        const cid = newCid();
        const email = randomEmail("secretive");
        await as(owner.token, cid).orgs.addMember({
          email,
          role: Role.DEVELOPER,
          initialPassword,
        });
        const session = await login(email, initialPassword);
        await refusal(clients(url).identity.login({ email, password: wrongPassword }));
        const tk = await as(session).identity.createApiToken({ name: "secret-scan" });
        await clients(url, { token: tk.secret }).identity.whoAmI({});
        await as(tk.secret).identity.revokeApiToken({ id: tk.token!.id });

        const written = await everythingWritten(db, t.logs);
        expect(written).toContain(cid);
        expect(written).toContain(email);
        for (const secret of [
          PASSWORD,
          initialPassword,
          wrongPassword,
          session,
          owner.token,
          tk.secret,
          tk.secret.slice(10),
        ])
          expect(written).not.toContain(secret);
      });
    });
  });

  describe(`login rate limiting by address [${engine}]`, () => {
    let t: TestHub;
    beforeAll(async () => {
      t = await startTestHub(engine, {
        loginLimits: { perEmail: 100, perAddress: 3, windowSeconds: 900 },
      });
    });
    afterAll(async () => {
      await t?.stop();
    });

    it("after the configured number of failures from one address, every login from it is refused with auth.rate_limited", async () => {
      const owner = await bootstrapOwner(t.hub);
      const c = clients(t.hub.url).identity;
      for (let i = 0; i < 3; i++) {
        await expectRefused(
          c.login({ email: randomEmail(`spray${i}`), password: PASSWORD }),
          Code.Unauthenticated,
          "auth.invalid_credentials",
        );
      }
      await expectRefused(
        c.login({ email: owner.email, password: PASSWORD }),
        Code.ResourceExhausted,
        "auth.rate_limited",
      );
      expect(await count(t.hub.db, "login_attempts", "NOT succeeded")).toBe(3);
    });
  });
}
