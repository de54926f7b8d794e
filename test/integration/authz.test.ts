// Authorization acceptance: deny by default, authentication on every non-public RPC, tenant
// isolation (cross-tenant access answers not-found), the x-tenant-id claim, and role checks.
// Every RPC of SERVICES is exercised generically through the builders in test/support/rpc-cases.ts.
import { randomBytes } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role } from "../../src/gen/flotilla/v1/identity_pb.js";
import { hasCapability, ROLES, type RoleName } from "../../src/hub/identity/index.js";
import { CAPABILITIES, RPC_RULES, SERVICES, SessionCodec } from "../../src/hub/index.js";
import type { Db } from "../../src/store/index.js";
import { ENGINES } from "../support/engines.js";
import {
  bootstrapOwner,
  clients,
  PASSWORD,
  randomEmail,
  startTestHub,
  type TestHub,
} from "../support/hub.js";
import {
  absentIds,
  callRpc,
  RPC_CASES,
  type RpcOutcome,
  seedTenant,
  servedRpcs,
  type TenantIds,
} from "../support/rpc-cases.js";

const SERVED = servedRpcs();
const NON_PUBLIC = SERVED.filter(({ key }) => RPC_RULES[key]?.access !== "public");
const OBJECT_SCOPED = SERVED.filter(({ key }) => RPC_CASES[key]?.objectScoped);

/**
 * The RPC's request for a tenant's ids. An RPC without a builder gets an empty request: enough
 * for checks the interceptor decides before any handler runs (authentication, tenant claim,
 * capability); the builder test above fails for it meanwhile.
 */
function requestFor(key: string, ids: TenantIds) {
  return RPC_CASES[key]?.request(ids) ?? {};
}

/** "key: outcome" for a readable failure listing. */
function describeOutcome(key: string, o: RpcOutcome): string {
  return o.ok ? `${key}: ok` : `${key}: ${Code[o.error.code]} ${o.errorCode ?? ""}`;
}

/** Everything of one organization a foreign caller must not be able to change. */
async function tenantState(db: Db, organizationId: string): Promise<Record<string, string[]>> {
  const q = async (sql: string) =>
    (await db.query<{ j: string }>(sql, [organizationId])).rows.map((r) => r.j);
  return {
    organization: await q("SELECT row_to_json(o)::text AS j FROM organizations o WHERE id = $1"),
    memberships: await q(
      "SELECT row_to_json(m)::text AS j FROM memberships m WHERE organization_id = $1 ORDER BY user_id",
    ),
    users: await q(
      `SELECT row_to_json(u)::text AS j FROM users u
       WHERE id IN (SELECT user_id FROM memberships WHERE organization_id = $1) ORDER BY id`,
    ),
    apiTokens: await q(
      "SELECT row_to_json(t)::text AS j FROM api_tokens t WHERE organization_id = $1 ORDER BY id",
    ),
    audit: await q(
      "SELECT row_to_json(a)::text AS j FROM audit_log a WHERE organization_id = $1 ORDER BY id",
    ),
  };
}

describe("every served RPC has an authorization rule and a request builder", () => {
  it("SERVICES serves RPCs at all (guards the sweeps below against an empty list)", () => {
    expect(SERVICES.length).toBeGreaterThanOrEqual(2);
    expect(SERVED.length).toBeGreaterThanOrEqual(17);
    expect(NON_PUBLIC.length).toBeGreaterThan(0);
    expect(OBJECT_SCOPED.length).toBeGreaterThan(0);
  });

  it("every method of every service in SERVICES has a rule in RPC_RULES", () => {
    const missing = SERVED.filter(({ key }) => !RPC_RULES[key]).map(({ key }) => key);
    expect(missing).toEqual([]);
  });

  it("RPC_RULES names no method that SERVICES does not serve", () => {
    const served = new Set(SERVED.map(({ key }) => key));
    expect(Object.keys(RPC_RULES).filter((key) => !served.has(key))).toEqual([]);
  });

  it("every capability a rule requires is a declared capability", () => {
    const unknown = Object.entries(RPC_RULES)
      .filter(([, rule]) => rule.access === "capability" && !(rule.capability in CAPABILITIES))
      .map(([key]) => key);
    expect(unknown).toEqual([]);
  });

  it("only GetSetupStatus, Bootstrap and Login are public", () => {
    const publicRpcs = Object.entries(RPC_RULES)
      .filter(([, rule]) => rule.access === "public")
      .map(([key]) => key)
      .sort();
    expect(publicRpcs).toEqual([
      "flotilla.v1.IdentityService/Bootstrap",
      "flotilla.v1.IdentityService/GetSetupStatus",
      "flotilla.v1.IdentityService/Login",
    ]);
  });

  it("every method of every service in SERVICES has a request builder in test/support/rpc-cases.ts", () => {
    const missing = SERVED.filter(({ key }) => !RPC_CASES[key]).map(({ key }) => key);
    expect(missing).toEqual([]);
  });

  it("rpc-cases.ts has no stale entry, and each entry's key names its own method", () => {
    const served = new Set(SERVED.map(({ key }) => key));
    expect(Object.keys(RPC_CASES).filter((key) => !served.has(key))).toEqual([]);
    const misnamed = Object.entries(RPC_CASES)
      .filter(([key, c]) => key !== `${c.method.parent.typeName}/${c.method.name}`)
      .map(([key]) => key);
    expect(misnamed).toEqual([]);
  });
});

for (const engine of ENGINES) {
  describe(`authorization [${engine}]`, () => {
    let t: TestHub;
    let url: string;
    /** Tenant A, the victim: its owner, and one member per other role. */
    const tokens = {} as Record<RoleName, string>;
    let a: TenantIds;
    /** Tenant B, the attacker: owner of another organization only. */
    let ownerB: string;
    let ownerBApiToken: string;
    let b: TenantIds;
    /** A's owner signed in to a second organization it owns. */
    let ownerAInA2: string;
    let revokedToken: string;

    const login = async (email: string, organizationSlug = "") =>
      (await clients(url).identity.login({ email, password: PASSWORD, organizationSlug }))
        .sessionToken;
    const stateOfA = () => tenantState(t.hub.db, a.organizationId);

    beforeAll(async () => {
      // Failed logins from the sweeps (Login's builder uses an unknown email) must not lock us out.
      t = await startTestHub(engine, {
        loginLimits: { perEmail: 1000, perAddress: 100_000, windowSeconds: 900 },
      });
      url = t.hub.url;
      tokens.owner = (await bootstrapOwner(t.hub)).token;
      const ownerA = clients(url, { token: tokens.owner });
      for (const [role, proto] of [
        ["admin", Role.ADMIN],
        ["developer", Role.DEVELOPER],
        ["viewer", Role.VIEWER],
      ] as const) {
        const email = randomEmail(role);
        await ownerA.orgs.addMember({ email, role: proto, initialPassword: PASSWORD });
        tokens[role] = await login(email);
      }

      // B joins A, creates its own organization, signs in to it, and is removed from A.
      const emailB = randomEmail("owner-b");
      const added = await ownerA.orgs.addMember({
        email: emailB,
        role: Role.VIEWER,
        initialPassword: PASSWORD,
      });
      const beta = await clients(url, { token: await login(emailB) }).orgs.createOrganization({
        name: `Beta ${randomBytes(3).toString("hex")}`,
      });
      ownerB = await login(emailB, beta.organization!.slug);
      await ownerA.orgs.removeMember({ userId: added.member!.user!.id });
      ownerBApiToken = (
        await clients(url, { token: ownerB }).identity.createApiToken({ name: "b" })
      ).secret;

      // A's owner also owns a second organization, A2.
      const a2 = await ownerA.orgs.createOrganization({
        name: `A2 ${randomBytes(3).toString("hex")}`,
      });
      const ownerEmail = (await ownerA.identity.whoAmI({})).user!.email;
      ownerAInA2 = await login(ownerEmail, a2.organization!.slug);

      const revoked = await ownerA.identity.createApiToken({ name: "revoked" });
      await ownerA.identity.revokeApiToken({ id: revoked.token!.id });
      revokedToken = revoked.secret;

      a = await seedTenant(url, tokens.owner);
      b = await seedTenant(url, ownerB);
    });

    afterAll(async () => {
      await t?.stop();
    });

    it("precondition: B's owner belongs to B's organization only, and B is not A", async () => {
      const mine = await clients(url, { token: ownerB }).identity.listMyOrganizations({});
      expect(mine.memberships.map((m) => m.organization?.id)).toEqual([b.organizationId]);
      expect(b.organizationId).not.toBe(a.organizationId);
    });

    describe("authentication", () => {
      it("every non-public RPC without credentials answers Unauthenticated (auth.unauthenticated) and changes nothing", async () => {
        const before = await stateOfA();
        const wrong: string[] = [];
        for (const { key } of NON_PUBLIC) {
          const o = await callRpc(url, key, requestFor(key, a));
          if (
            o.ok ||
            o.error.code !== Code.Unauthenticated ||
            o.errorCode !== "auth.unauthenticated"
          )
            wrong.push(describeOutcome(key, o));
        }
        expect(wrong).toEqual([]);
        expect(await stateOfA()).toEqual(before);
      });

      const badCredentials: Array<[string, () => Promise<string> | string]> = [
        ["a malformed bearer token", () => "not-a-token"],
        ["a well-formed API token that was never issued", () => `flt_${"A".repeat(43)}`],
        ["a revoked API token", () => revokedToken],
        [
          "a session token sealed with another secret",
          async () =>
            (
              await new SessionCodec("another-secret-that-is-long-enough-0123456789").mint(
                a.ownerUserId,
                a.organizationId,
              )
            ).token,
        ],
      ];
      it.each(badCredentials)(
        "every non-public RPC with %s answers Unauthenticated",
        async (_, make) => {
          const token = await make();
          const before = await stateOfA();
          const wrong: string[] = [];
          for (const { key } of NON_PUBLIC) {
            const o = await callRpc(url, key, requestFor(key, a), { token });
            if (o.ok || o.error.code !== Code.Unauthenticated) wrong.push(describeOutcome(key, o));
          }
          expect(wrong).toEqual([]);
          expect(await stateOfA()).toEqual(before);
        },
      );

      it("public RPCs answer without credentials (never auth.unauthenticated)", async () => {
        const publicRpcs = SERVED.filter(({ key }) => RPC_RULES[key]?.access === "public");
        expect(publicRpcs.length).toBeGreaterThan(0);
        for (const { key } of publicRpcs) {
          const o = await callRpc(url, key, requestFor(key, a));
          expect(o.ok ? "ok" : o.errorCode, key).not.toBe("auth.unauthenticated");
        }
      });

      it("an RPC without a rule is refused even for an owner (deny by default)", async () => {
        const key = "flotilla.v1.IdentityService/WhoAmI";
        const rule = RPC_RULES[key]!;
        expect((await callRpc(url, key, {}, { token: tokens.owner })).ok).toBe(true);
        delete RPC_RULES[key];
        try {
          const o = await callRpc(url, key, {}, { token: tokens.owner });
          expect(o.ok).toBe(false);
          if (!o.ok) {
            expect(o.error.code).toBe(Code.PermissionDenied);
            expect(o.errorCode).toBe("auth.permission_denied");
            expect(o.error.rawMessage).toContain("no authorization rule");
          }
        } finally {
          RPC_RULES[key] = rule;
        }
      });
    });

    describe("tenant isolation", () => {
      const callers: Array<[string, () => string]> = [
        ["a session", () => ownerB],
        ["an API token", () => ownerBApiToken],
      ];
      it.each(callers)(
        "B's owner with %s calling every object-scoped RPC with A's ids gets NotFound, and A is unchanged",
        async (_, token) => {
          const before = await stateOfA();
          const wrong: string[] = [];
          for (const { key } of OBJECT_SCOPED) {
            const o = await callRpc(url, key, requestFor(key, a), { token: token() });
            if (o.ok || o.error.code !== Code.NotFound || o.errorCode !== "resource.not_found")
              wrong.push(describeOutcome(key, o));
          }
          expect(wrong).toEqual([]);
          expect(await stateOfA()).toEqual(before);
        },
      );

      it("the same object-scoped requests with B's own ids succeed for B (so NotFound above is isolation, not a bad request)", async () => {
        const wrong: string[] = [];
        for (const { key } of OBJECT_SCOPED) {
          const own = await seedTenant(url, ownerB);
          const o = await callRpc(url, key, requestFor(key, own), { token: ownerB });
          if (!o.ok && o.errorCode !== RPC_CASES[key]?.acceptedError)
            wrong.push(describeOutcome(key, o));
        }
        expect(wrong).toEqual([]);
      }, 240_000); // a whole tenant is seeded per RPC (some calls destroy what they name): ~60 seeds

      it("a user who owns both A and A2, signed in to A2, gets NotFound for A's objects", async () => {
        const before = await stateOfA();
        const wrong: string[] = [];
        for (const { key } of OBJECT_SCOPED) {
          const o = await callRpc(url, key, requestFor(key, a), { token: ownerAInA2 });
          if (o.ok || o.error.code !== Code.NotFound) wrong.push(describeOutcome(key, o));
        }
        expect(wrong).toEqual([]);
        expect(await stateOfA()).toEqual(before);
      });

      it("B's answers to every other RPC called with A's ids carry none of A's ids, and A is unchanged", async () => {
        const before = await stateOfA();
        const secretsOfA = [
          a.organizationId,
          a.organizationSlug,
          a.ownerUserId,
          a.memberUserId,
          a.apiTokenId,
        ];
        const wrong: string[] = [];
        for (const { key } of SERVED.filter(({ key }) => !RPC_CASES[key]?.objectScoped)) {
          const o = await callRpc(url, key, requestFor(key, a), { token: ownerB });
          if (!o.ok && o.errorCode === "auth.permission_denied")
            wrong.push(describeOutcome(key, o));
          if (o.ok) {
            const leaked = secretsOfA.filter((id) => o.json.includes(id));
            if (leaked.length > 0) wrong.push(`${key}: answer contains ${leaked.join(", ")}`);
          }
        }
        expect(wrong).toEqual([]);
        expect(await stateOfA()).toEqual(before);
      });

      it("ListAuditEvents and ListMembers of B never list A's rows", async () => {
        const b1 = clients(url, { token: ownerB });
        const events = await b1.orgs.listAuditEvents({ limit: 500 });
        const auditIdsOfA = (
          await t.hub.db.query<{ id: string }>(
            "SELECT id FROM audit_log WHERE organization_id = $1",
            [a.organizationId],
          )
        ).rows.map((r) => r.id);
        expect(auditIdsOfA.length).toBeGreaterThan(0);
        expect(events.events.length).toBeGreaterThan(0);
        expect(events.events.filter((e) => auditIdsOfA.includes(e.id))).toEqual([]);
        const members = await b1.orgs.listMembers({});
        const ids = members.members.map((m) => m.user?.id);
        expect(ids).not.toContain(a.ownerUserId);
        expect(ids).not.toContain(a.memberUserId);
      });
    });

    describe("the x-tenant-id header is a claim checked against the principal", () => {
      it("naming another organization is rejected with auth.tenant_mismatch on every non-public RPC, and A is unchanged", async () => {
        const before = await stateOfA();
        const wrong: string[] = [];
        const claims: Array<[string, string, TenantIds]> = [
          ["B claiming A", ownerB, a],
          ["A claiming B", tokens.owner, b],
          ["A's owner in A2 claiming A", ownerAInA2, a],
        ];
        for (const [who, token, claimed] of claims) {
          for (const { key } of NON_PUBLIC) {
            const o = await callRpc(url, key, requestFor(key, a), {
              token,
              headers: { "x-tenant-id": claimed.organizationId },
            });
            if (
              o.ok ||
              o.error.code !== Code.PermissionDenied ||
              o.errorCode !== "auth.tenant_mismatch"
            )
              wrong.push(`${who}: ${describeOutcome(key, o)}`);
          }
        }
        expect(wrong).toEqual([]);
        expect(await stateOfA()).toEqual(before);
      });

      it("naming an organization that does not exist, or a non-UUID, is rejected too", async () => {
        for (const claimed of [absentIds().organizationId, "not-an-organization"]) {
          const o = await callRpc(
            url,
            "flotilla.v1.IdentityService/WhoAmI",
            {},
            {
              token: ownerB,
              headers: { "x-tenant-id": claimed },
            },
          );
          expect(o.ok ? "ok" : o.errorCode, claimed).toBe("auth.tenant_mismatch");
        }
      });

      it("naming the caller's own organization is accepted", async () => {
        const o = await callRpc(
          url,
          "flotilla.v1.IdentityService/WhoAmI",
          {},
          {
            token: ownerB,
            headers: { "x-tenant-id": b.organizationId },
          },
        );
        expect(o.ok).toBe(true);
        if (o.ok) expect(JSON.parse(o.json).organization.id).toBe(b.organizationId);
      });
    });

    describe("roles", () => {
      const ALL: RoleName[] = ["owner", "admin", "developer", "viewer"];
      const MANAGERS: RoleName[] = ["owner", "admin"];
      /** Who may call what, written out so a loosened rule or role fails here. */
      const EXPECTED: Record<string, RoleName[]> = {
        "flotilla.v1.IdentityService/Logout": ALL,
        "flotilla.v1.IdentityService/WhoAmI": ALL,
        "flotilla.v1.IdentityService/ListMyOrganizations": ALL,
        "flotilla.v1.IdentityService/CreateApiToken": ALL,
        "flotilla.v1.IdentityService/ListApiTokens": ALL,
        "flotilla.v1.IdentityService/RevokeApiToken": ALL,
        "flotilla.v1.OrganizationService/CreateOrganization": ALL,
        "flotilla.v1.OrganizationService/GetOrganization": ALL,
        "flotilla.v1.OrganizationService/ListMembers": ALL,
        "flotilla.v1.OrganizationService/UpdateOrganization": ["owner"],
        "flotilla.v1.OrganizationService/AddMember": MANAGERS,
        "flotilla.v1.OrganizationService/UpdateMemberRole": MANAGERS,
        "flotilla.v1.OrganizationService/RemoveMember": MANAGERS,
        "flotilla.v1.OrganizationService/ListAuditEvents": MANAGERS,
      };

      it.each(ALL)(
        "the %s role may call exactly the identity RPCs written out for it",
        async (role) => {
          const wrong: string[] = [];
          for (const [key, allowed] of Object.entries(EXPECTED)) {
            // Ids of nothing: an allowed call passes authorization and then finds nothing to harm.
            const o = await callRpc(url, key, requestFor(key, absentIds()), {
              token: tokens[role],
            });
            const denied = !o.ok && o.error.code === Code.PermissionDenied;
            if (denied === allowed.includes(role)) wrong.push(describeOutcome(key, o));
            if (!o.ok && o.error.code === Code.Unauthenticated) wrong.push(describeOutcome(key, o));
          }
          expect(wrong).toEqual([]);
        },
      );

      it("every role lacking an RPC's capability gets PermissionDenied for it, even on its own tenant's objects, and nothing changes", async () => {
        const before = await stateOfA();
        const wrong: string[] = [];
        let checked = 0;
        for (const { key } of SERVED) {
          const rule = RPC_RULES[key];
          if (rule?.access !== "capability") continue;
          for (const role of ROLES.filter((r) => !hasCapability(r, rule.capability))) {
            checked++;
            const o = await callRpc(url, key, requestFor(key, a), { token: tokens[role] });
            if (o.ok || o.errorCode !== "auth.permission_denied")
              wrong.push(`${role}: ${describeOutcome(key, o)}`);
          }
        }
        expect(checked).toBeGreaterThan(0);
        expect(wrong).toEqual([]);
        expect(await stateOfA()).toEqual(before);
      });

      it("every role holding an RPC's capability passes authorization for it", async () => {
        const wrong: string[] = [];
        for (const { key } of NON_PUBLIC) {
          const rule = RPC_RULES[key];
          const roles =
            rule?.access === "capability"
              ? ROLES.filter((r) => hasCapability(r, rule.capability))
              : ROLES;
          for (const role of roles) {
            const o = await callRpc(url, key, requestFor(key, absentIds()), {
              token: tokens[role],
            });
            if (
              !o.ok &&
              (o.error.code === Code.PermissionDenied || o.error.code === Code.Unauthenticated)
            )
              wrong.push(`${role}: ${describeOutcome(key, o)}`);
          }
        }
        expect(wrong).toEqual([]);
      });

      it("an admin can neither grant the owner role, nor change an owner's role, nor remove an owner", async () => {
        const before = await stateOfA();
        const admin = clients(url, { token: tokens.admin }).orgs;
        const attempts = [
          () =>
            admin.addMember({
              email: randomEmail("would-be-owner"),
              role: Role.OWNER,
              initialPassword: PASSWORD,
            }),
          () => admin.updateMemberRole({ userId: a.memberUserId, role: Role.OWNER }),
          () => admin.updateMemberRole({ userId: a.ownerUserId, role: Role.VIEWER }),
          () => admin.removeMember({ userId: a.ownerUserId }),
        ];
        for (const [i, attempt] of attempts.entries()) {
          const err = await attempt().then(
            () => null,
            (e: unknown) => e as { code: Code },
          );
          expect(err?.code, `attempt ${i}`).toBe(Code.PermissionDenied);
        }
        expect(await stateOfA()).toEqual(before);
      });

      it("a viewer cannot promote itself", async () => {
        const viewer = clients(url, { token: tokens.viewer });
        const me = await viewer.identity.whoAmI({});
        for (const role of [Role.ADMIN, Role.OWNER]) {
          const err = await viewer.orgs.updateMemberRole({ userId: me.user!.id, role }).then(
            () => null,
            (e: unknown) => e as { code: Code },
          );
          expect(err?.code).toBe(Code.PermissionDenied);
        }
        expect((await viewer.identity.whoAmI({})).role).toBe(Role.VIEWER);
      });
    });
  });
}
