// Bad input over the Connect JSON endpoint, on PGlite and on PostgreSQL: malformed bodies, wrong
// types, unknown enum values, oversized bodies and missing or invalid fields each answer 400 with
// Connect code invalid_argument (never 500), name the field where there is one, and write nothing.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role } from "../../src/gen/flotilla/v1/identity_pb.js";
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

const MAX_BODY_BYTES = 4096;
const TABLES = [
  "users",
  "organizations",
  "memberships",
  "api_tokens",
  "login_attempts",
  "setup_state",
  "audit_log",
];

async function rowCounts(db: Db): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const table of TABLES) {
    const { rows } = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`);
    counts[table] = rows[0]!.n;
  }
  return counts;
}

interface Answer {
  status: number;
  code: string | undefined;
  message: string;
  errorCode: string | null;
  errorField: string | null;
}

interface BadCase {
  rpc: string;
  body: string | ((ids: { memberId: string }) => string);
  /** The catalogue code the answer must carry, when the hub stamps one. */
  errorCode?: string;
  /** The offending field: in flotilla-error-field and at the start of the message. */
  field?: string;
  /** A fragment of the message (e.g. the field the runtime names). */
  mentions?: string;
}

const json = (value: unknown) => JSON.stringify(value);
const email = () => randomEmail("bad");

/** Keyed by what each case proves. Every one must answer 400 invalid_argument and write nothing. */
const CASES: Record<string, BadCase> = {
  "malformed JSON": { rpc: "IdentityService/Login", body: '{"email": "a@example.com",' },
  "an empty body": { rpc: "IdentityService/CreateApiToken", body: "" },
  "a JSON array instead of an object": { rpc: "OrganizationService/AddMember", body: "[]" },
  "JSON null instead of an object": { rpc: "IdentityService/Login", body: "null" },
  "a JSON string instead of an object": { rpc: "IdentityService/Login", body: '"login"' },
  "a number for a string (email)": {
    rpc: "IdentityService/Login",
    body: json({ email: 42, password: PASSWORD }),
    mentions: "email",
  },
  "an array for a string (token name)": {
    rpc: "IdentityService/CreateApiToken",
    body: json({ name: ["ci"] }),
    mentions: "name",
  },
  "an object for a string (user id)": {
    rpc: "OrganizationService/RemoveMember",
    body: json({ userId: { id: 1 } }),
    mentions: "user_id",
  },
  "a string for a boolean (everywhere)": {
    rpc: "IdentityService/Logout",
    body: json({ everywhere: "yes" }),
    mentions: "everywhere",
  },
  "a non-numeric string for an int64 (ttl_seconds)": {
    rpc: "IdentityService/CreateApiToken",
    body: json({ name: "ci", ttlSeconds: "soon" }),
    mentions: "ttl_seconds",
  },
  "an int32 out of range (limit)": {
    rpc: "OrganizationService/ListAuditEvents",
    body: json({ limit: 2 ** 32 }),
    mentions: "limit",
  },
  "an unknown enum name (AddMember role)": {
    rpc: "OrganizationService/AddMember",
    body: () => json({ email: email(), role: "ROLE_SUPERUSER", initialPassword: PASSWORD }),
    field: "role",
  },
  "an unknown enum number (AddMember role)": {
    rpc: "OrganizationService/AddMember",
    body: () => json({ email: email(), role: 99, initialPassword: PASSWORD }),
    field: "role",
  },
  "an unknown enum name for an existing member (UpdateMemberRole role)": {
    rpc: "OrganizationService/UpdateMemberRole",
    body: ({ memberId }) => json({ userId: memberId, role: "ROLE_ROOT" }),
    field: "role",
  },
  "the unspecified role (AddMember)": {
    rpc: "OrganizationService/AddMember",
    body: () => json({ email: email(), role: "ROLE_UNSPECIFIED", initialPassword: PASSWORD }),
    field: "role",
  },
  "a missing email (Login)": {
    rpc: "IdentityService/Login",
    body: json({ password: PASSWORD }),
    field: "email",
  },
  "a missing password (Login)": {
    rpc: "IdentityService/Login",
    body: json({ email: "someone@example.com" }),
    field: "password",
  },
  "an email that is no email (Login)": {
    rpc: "IdentityService/Login",
    body: json({ email: "not-an-email", password: PASSWORD }),
    field: "email",
  },
  "an overlong password (Login)": {
    rpc: "IdentityService/Login",
    body: json({ email: "someone@example.com", password: "p".repeat(300) }),
    field: "password",
  },
  "a missing setup token (Bootstrap)": {
    rpc: "IdentityService/Bootstrap",
    body: () => json({ email: email(), password: PASSWORD }),
    field: "setup_token",
  },
  "a short password (Bootstrap)": {
    rpc: "IdentityService/Bootstrap",
    body: () => json({ setupToken: "fst_x", email: email(), password: "short" }),
    field: "password",
  },
  "a missing email (AddMember)": {
    rpc: "OrganizationService/AddMember",
    body: json({ role: "ROLE_VIEWER", initialPassword: PASSWORD }),
    field: "email",
  },
  "a missing initial password for a new user (AddMember)": {
    rpc: "OrganizationService/AddMember",
    body: () => json({ email: email(), role: "ROLE_VIEWER" }),
    field: "initial_password",
  },
  "a short initial password (AddMember)": {
    rpc: "OrganizationService/AddMember",
    body: () => json({ email: email(), role: "ROLE_VIEWER", initialPassword: "short" }),
    field: "initial_password",
  },
  "an overlong display name (AddMember)": {
    rpc: "OrganizationService/AddMember",
    body: () =>
      json({
        email: email(),
        role: "ROLE_VIEWER",
        initialPassword: PASSWORD,
        displayName: "d".repeat(101),
      }),
    field: "display_name",
  },
  "a control character in a display name (AddMember)": {
    rpc: "OrganizationService/AddMember",
    body: () =>
      json({
        email: email(),
        role: "ROLE_VIEWER",
        initialPassword: PASSWORD,
        displayName: "bell\u0007",
      }),
    field: "display_name",
  },
  "a missing user id (UpdateMemberRole)": {
    rpc: "OrganizationService/UpdateMemberRole",
    body: json({ role: "ROLE_ADMIN" }),
    field: "user_id",
  },
  "a user id that is no UUID (RemoveMember)": {
    rpc: "OrganizationService/RemoveMember",
    body: json({ userId: "1 OR 1=1" }),
    field: "user_id",
  },
  "a missing token name (CreateApiToken)": {
    rpc: "IdentityService/CreateApiToken",
    body: json({}),
    field: "name",
  },
  "a token lifetime under a minute (CreateApiToken)": {
    rpc: "IdentityService/CreateApiToken",
    body: json({ name: "ci", ttlSeconds: "5" }),
    field: "ttl_seconds",
  },
  "a negative token lifetime (CreateApiToken)": {
    rpc: "IdentityService/CreateApiToken",
    body: json({ name: "ci", ttlSeconds: "-60" }),
    field: "ttl_seconds",
  },
  "a token id that is no UUID (RevokeApiToken)": {
    rpc: "IdentityService/RevokeApiToken",
    body: json({ id: "../../etc/passwd" }),
    field: "id",
  },
  "a missing organization name (CreateOrganization)": {
    rpc: "OrganizationService/CreateOrganization",
    body: json({}),
    field: "name",
  },
  "an invalid slug (CreateOrganization)": {
    rpc: "OrganizationService/CreateOrganization",
    body: json({ name: "Valid Name", slug: "Not A Slug!" }),
    field: "slug",
  },
  "a missing name (UpdateOrganization)": {
    rpc: "OrganizationService/UpdateOrganization",
    body: json({ name: "   " }),
    field: "name",
  },
  "a limit above 500 (ListAuditEvents)": {
    rpc: "OrganizationService/ListAuditEvents",
    body: json({ limit: 501 }),
    field: "limit",
  },
  "a before_id that is no UUID (ListAuditEvents)": {
    rpc: "OrganizationService/ListAuditEvents",
    body: json({ beforeId: "yesterday" }),
    field: "before_id",
  },
};

for (const engine of ENGINES) {
  describe(`bad input over Connect JSON [${engine}]`, () => {
    let t: TestHub;
    let token: string;
    let memberId: string;

    async function post(
      rpc: string,
      body: string | ReadableStream<Uint8Array>,
      headers: Record<string, string> = {},
    ): Promise<Answer> {
      const res = await fetch(`${t.hub.url}/flotilla.v1.${rpc}`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          authorization: `Bearer ${token}`,
          ...headers,
        },
        body,
        ...(typeof body === "string" ? {} : { duplex: "half" }),
      } as RequestInit);
      const text = await res.text();
      let parsed: { code?: string; message?: string } = {};
      try {
        parsed = JSON.parse(text);
      } catch {
        // not JSON: the assertions below show the status
      }
      return {
        status: res.status,
        code: parsed.code,
        message: parsed.message ?? text,
        errorCode: res.headers.get("flotilla-error-code"),
        errorField: res.headers.get("flotilla-error-field"),
      };
    }

    beforeAll(async () => {
      t = await startTestHub(engine, { maxBodyBytes: MAX_BODY_BYTES });
      token = (await bootstrapOwner(t.hub)).token;
      const added = await clients(t.hub.url, { token }).orgs.addMember({
        email: randomEmail("target"),
        role: Role.DEVELOPER,
        initialPassword: PASSWORD,
      });
      memberId = added.member!.user!.id;
    });
    afterAll(async () => {
      await t?.stop();
    });

    it.each(Object.entries(CASES))(
      "%s answers 400 invalid_argument and writes nothing",
      async (_, c) => {
        const before = await rowCounts(t.hub.db);
        const body = typeof c.body === "function" ? c.body({ memberId }) : c.body;
        const answer = await post(c.rpc, body);
        expect({ status: answer.status, code: answer.code }, answer.message).toEqual({
          status: 400,
          code: "invalid_argument",
        });
        if (c.field) {
          expect(answer.errorCode).toBe("validation.failed");
          expect(answer.errorField).toBe(c.field);
          expect(answer.message.startsWith(`${c.field}:`), answer.message).toBe(true);
        }
        if (c.errorCode) expect(answer.errorCode).toBe(c.errorCode);
        if (c.mentions) expect(answer.message).toContain(c.mentions);
        expect(await rowCounts(t.hub.db)).toEqual(before);
      },
    );

    it("an unknown enum value leaves the member's role as it was", async () => {
      await post("OrganizationService/UpdateMemberRole", json({ userId: memberId, role: 42 }));
      const { rows } = await t.hub.db.query<{ role: string }>(
        "SELECT role FROM memberships WHERE user_id = $1",
        [memberId],
      );
      expect(rows.map((r) => r.role)).toEqual(["developer"]);
    });

    it("a malformed binary (protobuf) body answers 400 invalid_argument and writes nothing", async () => {
      const before = await rowCounts(t.hub.db);
      const res = await fetch(`${t.hub.url}/flotilla.v1.IdentityService/Login`, {
        method: "POST",
        headers: { "content-type": "application/proto" },
        body: new Uint8Array([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]),
      });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { code: string }).code).toBe("invalid_argument");
      expect(await rowCounts(t.hub.db)).toEqual(before);
    });

    describe(`bodies over the limit (${MAX_BODY_BYTES} bytes)`, () => {
      const oversizedAddMember = () =>
        json({
          email: randomEmail("huge"),
          role: "ROLE_VIEWER",
          initialPassword: PASSWORD,
          padding: "x".repeat(MAX_BODY_BYTES * 2),
        });

      it("a body over the limit with a content-length answers 400 request.too_large and writes nothing", async () => {
        const before = await rowCounts(t.hub.db);
        const answer = await post("OrganizationService/AddMember", oversizedAddMember());
        expect(answer).toMatchObject({
          status: 400,
          code: "invalid_argument",
          errorCode: "request.too_large",
        });
        expect(answer.message).toContain(String(MAX_BODY_BYTES));
        expect(await rowCounts(t.hub.db)).toEqual(before);
      });

      it("a chunked body over the limit (no content-length) answers 400 request.too_large and writes nothing", async () => {
        const before = await rowCounts(t.hub.db);
        const bytes = new TextEncoder().encode(oversizedAddMember());
        const stream = new ReadableStream<Uint8Array>({
          start(controller) {
            for (let i = 0; i < bytes.length; i += 1024)
              controller.enqueue(bytes.slice(i, i + 1024));
            controller.close();
          },
        });
        const answer = await post("OrganizationService/AddMember", stream);
        expect(answer).toMatchObject({
          status: 400,
          code: "invalid_argument",
          errorCode: "request.too_large",
        });
        expect(await rowCounts(t.hub.db)).toEqual(before);
      });

      it("a body just under the limit is still served", async () => {
        const body = json({ padding: "x".repeat(MAX_BODY_BYTES - 100) });
        expect(Buffer.byteLength(body)).toBeLessThan(MAX_BODY_BYTES);
        const res = await fetch(`${t.hub.url}/flotilla.v1.IdentityService/WhoAmI`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
          body,
        });
        expect(res.status).toBe(200);
      });
    });

    it("no bad input reached an internal error: no 500 was logged", () => {
      const rpcLines = t.logs.filter((l) => l.msg === "rpc");
      expect(rpcLines.length).toBeGreaterThan(0);
      expect(rpcLines.filter((l) => l.code === "internal")).toEqual([]);
      expect(t.logs.filter((l) => Number(l.level) >= 50)).toEqual([]);
    });
  });
}
