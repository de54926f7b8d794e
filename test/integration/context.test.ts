// The transport contract at the hub's edge, on PGlite and on PostgreSQL: an incoming traceparent
// and x-correlation-id reach every log line of the request, its audit row and the response
// headers; missing or invalid ones are replaced by generated ones; and a tenant header from a
// client never overrides the principal's tenant.
import { randomBytes, randomUUID } from "node:crypto";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IdentityService } from "../../src/gen/flotilla/v1/identity_pb.js";
import type { Db } from "../../src/store/index.js";
import { ENGINES } from "../support/engines.js";
import { bootstrapOwner, clients, PASSWORD, startTestHub, type TestHub } from "../support/hub.js";

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;
const CORRELATION_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const hex = (bytes: number) => randomBytes(bytes).toString("hex");
const traceIdOf = (traceparent: string | null) => TRACEPARENT.exec(traceparent ?? "")?.[1];

/** A valid traceparent (and its trace id) the hub has never seen. */
function freshTrace(): { traceparent: string; traceId: string } {
  const traceId = hex(16);
  return { traceparent: `00-${traceId}-${hex(8)}-01`, traceId };
}

interface AuditRow {
  organization_id: string | null;
  action: string;
  correlation_id: string;
  traceparent: string;
  request_id: string | null;
}

async function auditRows(db: Db, correlationId: string): Promise<AuditRow[]> {
  const { rows } = await db.query<AuditRow>(
    `SELECT organization_id, action, correlation_id, traceparent, request_id
     FROM audit_log WHERE correlation_id = $1`,
    [correlationId],
  );
  return rows;
}

interface Exchange {
  status: number;
  headers: Headers;
  body: Record<string, unknown>;
  /** The log lines the hub wrote while serving this request. */
  logs: Array<Record<string, unknown>>;
}

for (const engine of ENGINES) {
  describe(`request context at the hub's edge [${engine}]`, () => {
    let t: TestHub;
    let token: string;
    let email: string;
    let orgId: string;
    let otherOrgId: string;

    /** One Connect JSON call; requests run one at a time, so the new log lines are this request's. */
    async function call(
      rpc: string,
      body: unknown,
      headers: Record<string, string> = {},
      auth = true,
    ): Promise<Exchange> {
      const from = t.logs.length;
      const res = await fetch(`${t.hub.url}/flotilla.v1.${rpc}`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          ...(auth ? { authorization: `Bearer ${token}` } : {}),
          ...headers,
        },
        body: JSON.stringify(body),
      });
      const parsed = (await res.json()) as Record<string, unknown>;
      return { status: res.status, headers: res.headers, body: parsed, logs: t.logs.slice(from) };
    }

    const createToken = (headers: Record<string, string>) =>
      call("IdentityService/CreateApiToken", { name: `ctx ${hex(3)}` }, headers);

    beforeAll(async () => {
      t = await startTestHub(engine);
      const owner = await bootstrapOwner(t.hub);
      token = owner.token;
      email = owner.email;
      const c = clients(t.hub.url, { token });
      orgId = (await c.identity.whoAmI({})).organization!.id;
      otherOrgId = (await c.orgs.createOrganization({ name: `Other ${hex(3)}` })).organization!.id;
    });
    afterAll(async () => {
      await t?.stop();
    });

    it("an incoming traceparent, x-correlation-id and x-request-id are in every log line of the request, the response headers and its audit row", async () => {
      const { traceparent, traceId } = freshTrace();
      const cid = `ctx-${hex(8)}`;
      const rid = `req-${hex(8)}`;
      const x = await createToken({
        traceparent,
        "x-correlation-id": cid,
        "x-request-id": rid,
      });
      expect(x.status).toBe(200);

      expect(x.logs.length).toBeGreaterThan(0);
      for (const line of x.logs) {
        expect(line).toMatchObject({
          correlation_id: cid,
          trace_id: traceId,
          request_id: rid,
          tenant: orgId,
        });
        expect(traceIdOf(line.traceparent as string)).toBe(traceId);
      }

      expect(x.headers.get("x-correlation-id")).toBe(cid);
      expect(x.headers.get("x-request-id")).toBe(rid);
      expect(traceIdOf(x.headers.get("traceparent"))).toBe(traceId);

      const audit = await auditRows(t.hub.db, cid);
      expect(audit).toHaveLength(1);
      expect(audit[0]).toMatchObject({
        organization_id: orgId,
        action: "identity.api_token.create",
        request_id: rid,
      });
      expect(traceIdOf(audit[0]!.traceparent)).toBe(traceId);
    });

    it("a refused request carries its context too: in its log lines and its error response headers", async () => {
      const cases: Array<[string, (h: Record<string, string>) => Promise<Exchange>, string]> = [
        [
          "validation failure",
          (h) => call("IdentityService/CreateApiToken", { name: "" }, h),
          "validation.failed",
        ],
        [
          "no credentials",
          (h) => call("IdentityService/WhoAmI", {}, h, false),
          "auth.unauthenticated",
        ],
      ];
      for (const [label, run, code] of cases) {
        const { traceparent, traceId } = freshTrace();
        const cid = `ctx-${hex(8)}`;
        const x = await run({ traceparent, "x-correlation-id": cid });
        expect(x.headers.get("flotilla-error-code"), label).toBe(code);
        expect(x.headers.get("x-correlation-id"), label).toBe(cid);
        expect(traceIdOf(x.headers.get("traceparent")), label).toBe(traceId);
        expect(x.logs.length, label).toBeGreaterThan(0);
        for (const line of x.logs) {
          expect(line.correlation_id, label).toBe(cid);
          expect(line.trace_id, label).toBe(traceId);
        }
      }
    });

    it("a request without context gets a generated traceparent, correlation id and request id, returned in the response headers and used in its logs and audit row", async () => {
      const x = await createToken({});
      expect(x.status).toBe(200);
      const traceparent = x.headers.get("traceparent");
      const cid = x.headers.get("x-correlation-id");
      const rid = x.headers.get("x-request-id");
      expect(traceparent).toMatch(TRACEPARENT);
      expect(traceIdOf(traceparent)).not.toBe("0".repeat(32));
      expect(TRACEPARENT.exec(traceparent!)?.[2]).not.toBe("0".repeat(16));
      expect(cid).toMatch(CORRELATION_ID);
      expect(rid).toMatch(CORRELATION_ID);

      expect(x.logs.length).toBeGreaterThan(0);
      for (const line of x.logs) {
        expect(line).toMatchObject({ correlation_id: cid, traceparent, request_id: rid });
      }
      const audit = await auditRows(t.hub.db, cid!);
      expect(audit).toHaveLength(1);
      expect(audit[0]).toMatchObject({ traceparent, request_id: rid });
    });

    it("two requests without context get different generated ids", async () => {
      const [a, b] = [await createToken({}), await createToken({})];
      expect(a.headers.get("x-correlation-id")).not.toBe(b.headers.get("x-correlation-id"));
      expect(traceIdOf(a.headers.get("traceparent"))).not.toBe(
        traceIdOf(b.headers.get("traceparent")),
      );
      expect(a.headers.get("x-request-id")).not.toBe(b.headers.get("x-request-id"));
    });

    const INVALID_TRACEPARENTS: Array<[string, string]> = [
      ["version ff", `ff-${hex(16)}-${hex(8)}-01`],
      ["an all-zero trace id", `00-${"0".repeat(32)}-${hex(8)}-01`],
      ["an all-zero parent id", `00-${hex(16)}-${"0".repeat(16)}-01`],
      ["uppercase hex", `00-${hex(16).toUpperCase()}-${hex(8)}-01`],
      ["a short trace id", `00-${hex(15)}-${hex(8)}-01`],
      ["version 00 with a trailing field", `00-${hex(16)}-${hex(8)}-01-extra`],
      ["garbage", "not-a-traceparent"],
    ];
    it.each(INVALID_TRACEPARENTS)(
      "an incoming traceparent with %s is replaced by a new valid one, in the response, logs and audit row",
      async (_, invalid) => {
        const cid = `ctx-${hex(8)}`;
        const x = await createToken({ traceparent: invalid, "x-correlation-id": cid });
        expect(x.status).toBe(200);
        const replaced = x.headers.get("traceparent");
        expect(replaced).toMatch(TRACEPARENT);
        expect(replaced).not.toBe(invalid);
        const invalidTraceId = invalid.split("-")[1]?.toLowerCase();
        expect(traceIdOf(replaced)).not.toBe(invalidTraceId);
        expect(traceIdOf(replaced)).not.toBe("0".repeat(32));
        for (const line of x.logs) expect(line.traceparent).toBe(replaced);
        expect((await auditRows(t.hub.db, cid))[0]?.traceparent).toBe(replaced);
      },
    );

    it("a valid traceparent of a later version (01, with extra fields) keeps its trace id", async () => {
      const traceId = hex(16);
      const x = await createToken({ traceparent: `01-${traceId}-${hex(8)}-01-future` });
      expect(traceIdOf(x.headers.get("traceparent"))).toBe(traceId);
      for (const line of x.logs) expect(line.trace_id).toBe(traceId);
    });

    const INVALID_CORRELATION_IDS: Array<[string, string]> = [
      ["longer than 128 characters", "c".repeat(129)],
      ["a space", "two words"],
      ["a semicolon", "a;b"],
      ["a quote", 'say"hi"'],
      ["markup", "<script>alert(1)</script>"],
    ];
    it.each(INVALID_CORRELATION_IDS)(
      "an incoming x-correlation-id with %s is replaced by a generated one, in the response, logs and audit row",
      async (_, invalid) => {
        const x = await createToken({ "x-correlation-id": invalid });
        expect(x.status).toBe(200);
        const cid = x.headers.get("x-correlation-id");
        expect(cid).toMatch(CORRELATION_ID);
        expect(cid).not.toBe(invalid);
        for (const line of x.logs) expect(line.correlation_id).toBe(cid);
        expect(await auditRows(t.hub.db, cid!)).toHaveLength(1);
        expect(JSON.stringify(t.logs)).not.toContain(invalid);
      },
    );

    it("an x-correlation-id of exactly 128 allowed characters is kept", async () => {
      const cid = `A.b_c:d-${"9".repeat(120)}`;
      expect(cid).toHaveLength(128);
      const x = await createToken({ "x-correlation-id": cid });
      expect(x.headers.get("x-correlation-id")).toBe(cid);
      expect(await auditRows(t.hub.db, cid)).toHaveLength(1);
    });

    describe("the tenant comes from the principal, never from the client", () => {
      it("an x-tenant-id naming another organization of the same user is refused with auth.tenant_mismatch and writes nothing", async () => {
        const cid = `ctx-${hex(8)}`;
        const before = await t.hub.db.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM api_tokens",
        );
        const x = await createToken({ "x-tenant-id": otherOrgId, "x-correlation-id": cid });
        expect(x.status).toBe(403);
        expect(x.body.code).toBe("permission_denied");
        expect(x.headers.get("flotilla-error-code")).toBe("auth.tenant_mismatch");
        const after = await t.hub.db.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM api_tokens",
        );
        expect(after.rows[0]!.n).toBe(before.rows[0]!.n);
        expect(await auditRows(t.hub.db, cid)).toEqual([]);
        for (const line of x.logs) expect(line.tenant).not.toBe(otherOrgId);
      });

      it("an x-tenant-id naming the caller's own organization is accepted; logs and audit carry that tenant", async () => {
        const cid = `ctx-${hex(8)}`;
        const x = await createToken({ "x-tenant-id": orgId, "x-correlation-id": cid });
        expect(x.status).toBe(200);
        for (const line of x.logs) expect(line.tenant).toBe(orgId);
        expect((await auditRows(t.hub.db, cid))[0]?.organization_id).toBe(orgId);
      });

      it.each([
        ["another organization of the user", () => otherOrgId],
        ["an organization that does not exist", () => randomUUID()],
      ])(
        "on Login (public), an x-tenant-id naming %s never becomes the tenant of the session, logs or audit row",
        async (_, claimed) => {
          const tenant = claimed();
          const cid = `ctx-${hex(8)}`;
          const x = await call(
            "IdentityService/Login",
            { email, password: PASSWORD },
            { "x-tenant-id": tenant, "x-correlation-id": cid },
            false,
          );
          expect(x.status).toBe(200);
          expect((x.body.organization as { id: string }).id).toBe(orgId);
          expect(x.logs.length).toBeGreaterThan(0);
          for (const line of x.logs) expect(line.tenant).not.toBe(tenant);
          const audit = await auditRows(t.hub.db, cid);
          expect(audit).toHaveLength(1);
          expect(audit[0]).toMatchObject({ action: "identity.login", organization_id: orgId });
          const me = await clients(t.hub.url, {
            token: x.body.sessionToken as string,
          }).identity.whoAmI({});
          expect(me.organization?.id).toBe(orgId);
        },
      );
    });

    it("over gRPC (h2c) an incoming traceparent and correlation id reach the response headers, logs and audit row", async () => {
      const sessionManager = new Http2SessionManager(t.hub.grpcUrl!);
      try {
        const grpc = createClient(
          IdentityService,
          createGrpcTransport({ baseUrl: t.hub.grpcUrl!, sessionManager }),
        );
        const { traceparent, traceId } = freshTrace();
        const cid = `ctx-grpc-${hex(8)}`;
        let responseHeaders = new Headers();
        const from = t.logs.length;
        await grpc.createApiToken(
          { name: "grpc ctx" },
          {
            headers: { authorization: `Bearer ${token}`, traceparent, "x-correlation-id": cid },
            onHeader: (h) => {
              responseHeaders = h;
            },
          },
        );
        expect(responseHeaders.get("x-correlation-id")).toBe(cid);
        expect(traceIdOf(responseHeaders.get("traceparent"))).toBe(traceId);
        const lines = t.logs.slice(from);
        expect(lines.length).toBeGreaterThan(0);
        for (const line of lines)
          expect(line).toMatchObject({ correlation_id: cid, trace_id: traceId });
        const audit = await auditRows(t.hub.db, cid);
        expect(audit).toHaveLength(1);
        expect(traceIdOf(audit[0]!.traceparent)).toBe(traceId);
      } finally {
        sessionManager.abort();
      }
    });
  });
}
