// The hub serves unary Connect calls over HTTP/1.1 itself (src/hub/api/connect-fastify.ts) and
// hands everything else to Connect's handler. A call carrying connect-timeout-ms always takes
// Connect's handler, so each case here is sent twice, with and without it, and both answers must
// be the same: status, body and headers, successes and every kind of refusal alike.
import type { IncomingHttpHeaders } from "node:http";
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { requestText, sendRaw } from "../support/http.js";
import { bootstrapOwner, startTestHub, type TestHub } from "../support/hub.js";

const MAX_BODY_BYTES = 4096;
/**
 * Headers that differ between any two calls (time, per-request ids, the connection), and the
 * framing: Connect's handler re-sends the refusals it is corrected on (request.malformed,
 * request.too_large) chunked, where the direct path knows their length.
 */
const PER_REQUEST = new Set([
  "date",
  "traceparent",
  "x-request-id",
  "keep-alive",
  "connection",
  "content-length",
  "transfer-encoding",
]);

interface Case {
  rpc: string;
  contentType?: string;
  body: string | Buffer;
  headers?: Record<string, string>;
  /** The status the answer must have (both paths). */
  status: number;
  /** A catalogue code the answer must carry in flotilla-error-code. */
  errorCode?: string;
}

function comparable(headers: IncomingHttpHeaders): Record<string, unknown> {
  return Object.fromEntries(Object.entries(headers).filter(([k]) => !PER_REQUEST.has(k)));
}

describe("unary Connect calls served directly answer exactly as Connect's handler does", () => {
  let t: TestHub;
  let token: string;

  beforeAll(async () => {
    t = await startTestHub("postgres", { maxBodyBytes: MAX_BODY_BYTES });
    token = (await bootstrapOwner(t.hub)).token;
  }, 60_000);

  afterAll(async () => {
    await t?.stop();
  });

  const cases = (): Record<string, Case> => ({
    "WhoAmI in JSON": {
      rpc: "IdentityService/WhoAmI",
      body: "{}",
      headers: { authorization: `Bearer ${token}` },
      status: 200,
    },
    "WhoAmI in binary protobuf": {
      rpc: "IdentityService/WhoAmI",
      contentType: "application/proto",
      body: Buffer.alloc(0),
      headers: { authorization: `Bearer ${token}` },
      status: 200,
    },
    "WhoAmI with a charset in the content type": {
      rpc: "IdentityService/WhoAmI",
      contentType: "application/json; charset=utf-8",
      body: "{}",
      headers: { authorization: `Bearer ${token}` },
      status: 200,
    },
    "a call without credentials (an error with metadata)": {
      rpc: "IdentityService/WhoAmI",
      body: "{}",
      status: 401,
    },
    "malformed JSON": { rpc: "IdentityService/Login", body: "{", status: 400 },
    "an empty JSON body": { rpc: "IdentityService/Login", body: "", status: 400 },
    "a field of the wrong type": {
      rpc: "IdentityService/Login",
      body: JSON.stringify({ email: 5, password: "x" }),
      status: 400,
    },
    "an undecodable binary body": {
      rpc: "IdentityService/Login",
      contentType: "application/proto",
      body: Buffer.from([0xff, 0xff, 0xff, 0xff]),
      status: 400,
      errorCode: "request.malformed",
    },
    "a body over the limit": {
      rpc: "IdentityService/Login",
      body: JSON.stringify({ email: "a@example.com", password: "x".repeat(MAX_BODY_BYTES) }),
      status: 400,
      errorCode: "request.too_large",
    },
    "a validation error naming its field": {
      rpc: "IdentityService/Login",
      body: JSON.stringify({ email: "not-an-email", password: "x" }),
      status: 400,
    },
  });

  async function call(c: Case, viaConnect: boolean) {
    return requestText(`${t.hub.url}/flotilla.v1.${c.rpc}`, {
      method: "POST",
      headers: {
        "content-type": c.contentType ?? "application/json",
        "x-correlation-id": "same-correlation-for-both",
        ...(c.headers ?? {}),
        ...(viaConnect ? { "connect-timeout-ms": "600000" } : {}),
      },
      body: c.body,
    });
  }

  it("for successes, decode failures, size limits, validation and authentication errors", async () => {
    for (const [name, c] of Object.entries(cases())) {
      const direct = await call(c, false);
      const connect = await call(c, true);
      expect(direct.status, name).toBe(c.status);
      if (c.errorCode) expect(direct.headers["flotilla-error-code"], name).toBe(c.errorCode);
      expect(direct.text, name).toBe(connect.text);
      expect(comparable(direct.headers), name).toEqual(comparable(connect.headers));
    }
  });

  it("reads repeated request headers as Connect's handler does: the first Authorization, every Cookie line", async () => {
    const { port } = new URL(t.hub.url);
    const whoAmI = async (headerLines: string[], viaConnect: boolean) => {
      const lines = [
        "POST /flotilla.v1.IdentityService/WhoAmI HTTP/1.1",
        "host: 127.0.0.1",
        "content-type: application/json",
        "content-length: 2",
        "connection: close",
        ...headerLines,
        ...(viaConnect ? ["connect-timeout-ms: 600000"] : []),
      ];
      const answer = await sendRaw(Number(port), `${lines.join("\r\n")}\r\n\r\n{}`);
      return { status: answer.slice(9, 12), body: answer.slice(answer.indexOf("\r\n\r\n") + 4) };
    };
    const cases: Array<[string, string[], string]> = [
      [
        "a valid Authorization, then junk",
        [`authorization: Bearer ${token}`, "authorization: x"],
        "200",
      ],
      [
        "junk, then a valid Authorization",
        ["authorization: x", `authorization: Bearer ${token}`],
        "401",
      ],
      [
        "the session cookie on a second Cookie line",
        ["cookie: a=1", `cookie: flotilla_session=${token}`],
        "200",
      ],
      ["another cookie only", ["Cookie: flotilla_sessionx=1"], "401"],
    ];
    for (const [name, headerLines, status] of cases) {
      const direct = await whoAmI(headerLines, false);
      const connect = await whoAmI(headerLines, true);
      expect(direct.status, name).toBe(status);
      expect(connect.status, name).toBe(status);
      expect(direct.body, name).toBe(connect.body);
    }
  });

  it("counts every call by method and code, times it, and logs one rpc line with its context", async () => {
    const metric = async (name: string) => {
      const text = (await requestText(`${t.hub.url}/metrics`)).text;
      const line = text.split("\n").find((l) => l.startsWith(name));
      return line ? Number(line.split(" ").pop()) : 0;
    };
    const ok =
      'flotilla_rpc_requests_total{service="flotilla.v1.IdentityService",method="WhoAmI",code="ok"}';
    const refused =
      'flotilla_rpc_requests_total{service="flotilla.v1.IdentityService",method="WhoAmI",code="auth.unauthenticated"}';
    const timed =
      'flotilla_rpc_duration_seconds_count{service="flotilla.v1.IdentityService",method="WhoAmI"}';
    const before = {
      ok: await metric(ok),
      refused: await metric(refused),
      timed: await metric(timed),
    };
    const c = cases();
    for (let i = 0; i < 3; i++) await call(c["WhoAmI in JSON"]!, false);
    await call(c["a call without credentials (an error with metadata)"]!, false);
    expect(await metric(ok)).toBe(before.ok + 3);
    expect(await metric(refused)).toBe(before.refused + 1);
    expect(await metric(timed)).toBe(before.timed + 4);
    const lines = t.logs.filter(
      (l) =>
        l.msg === "rpc" &&
        l.rpc === "flotilla.v1.IdentityService/WhoAmI" &&
        l.correlation_id === "same-correlation-for-both",
    );
    expect(lines.some((l) => l.code === "ok" && typeof l.ms === "number" && l.tenant)).toBe(true);
    expect(lines.some((l) => l.code === "auth.unauthenticated")).toBe(true);
  });

  it("a chunked body that grows past the limit is refused and its connection closed, though the upload never ends", async () => {
    const { port } = new URL(t.hub.url);
    const socket = connect(Number(port), "127.0.0.1");
    let answer = "";
    socket.setEncoding("latin1");
    socket.on("data", (d: string) => {
      answer += d;
    });
    const closed = new Promise<void>((r) => socket.once("close", () => r()));
    const chunk = "x".repeat(MAX_BODY_BYTES + 1);
    socket.write(
      `POST /flotilla.v1.IdentityService/Login HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n${chunk.length.toString(16)}\r\n${chunk}\r\n`,
    );
    // No last chunk: the upload would go on for ever.
    await closed;
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect(answer.toLowerCase()).toContain("flotilla-error-code: request.too_large");
    expect(answer.toLowerCase()).toContain("connection: close");
  });

  it("a compressed request body, which only Connect's handler negotiates, is refused as before", async () => {
    const c: Case = {
      rpc: "IdentityService/WhoAmI",
      body: "{}",
      headers: { authorization: `Bearer ${token}`, "content-encoding": "gzip" },
      status: 0,
    };
    const answer = await call(c, false);
    expect(answer.status).toBe(501);
    expect(JSON.parse(answer.text).code).toBe("unimplemented");
  });
});
