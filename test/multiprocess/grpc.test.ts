// One hub process answers the same RPC over gRPC on its cleartext HTTP/2 port and over the
// Connect protocol (JSON and binary) on its HTTP/1.1 port, with the same principal on each.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  Http2SessionManager,
} from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthMethod, IdentityService, Role } from "../../src/gen/flotilla/v1/identity_pb.js";
import { createTestDatabase, type TestDatabase } from "../support/pg.js";
import { type FlotillaProcess, killAll, SECRET_A, startFlotilla } from "./procs.js";

const OWNER_EMAIL = "grpc-owner@multiprocess.example.com";
const OWNER_PASSWORD = "correct-horse-battery-staple";

const bearer =
  (token: string | undefined): Interceptor =>
  (next) =>
  async (req) => {
    if (token) req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };

describe("one hub process over gRPC (h2c) and Connect (HTTP/1.1, JSON and binary)", () => {
  let database: TestDatabase;
  let hub: FlotillaProcess;
  const sessions: Http2SessionManager[] = [];
  let sessionToken: string;
  let apiToken: string;

  type Wire = "grpc" | "connect-json" | "connect-binary";
  const WIRES: Wire[] = ["grpc", "connect-json", "connect-binary"];

  function client(wire: Wire, token?: string) {
    const interceptors = [bearer(token)];
    if (wire === "grpc") {
      // An explicit session manager so afterAll can close the HTTP/2 connection.
      const sessionManager = new Http2SessionManager(hub.grpcUrl);
      sessions.push(sessionManager);
      return createClient(
        IdentityService,
        createGrpcTransport({ baseUrl: hub.grpcUrl, sessionManager, interceptors }),
      );
    }
    return createClient(
      IdentityService,
      createConnectTransport({
        baseUrl: hub.url,
        httpVersion: "1.1",
        useBinaryFormat: wire === "connect-binary",
        interceptors,
      }),
    );
  }

  beforeAll(async () => {
    database = await createTestDatabase("mp_grpc");
    hub = await startFlotilla("hub", {
      env: {
        FLOTILLA_DATABASE_URL: database.url,
        FLOTILLA_SESSION_SECRET: SECRET_A,
        FLOTILLA_ADMIN_EMAIL: OWNER_EMAIL,
        FLOTILLA_ADMIN_PASSWORD: OWNER_PASSWORD,
      },
    });
    await hub.waitReady(30_000);
  }, 120_000);

  afterAll(async () => {
    for (const s of sessions) s.abort();
    await hub?.stop(10_000);
    await killAll();
    await database?.drop();
  });

  it("Login over gRPC returns a session, and CreateApiToken over gRPC an API token", async () => {
    const login = await client("grpc").login({ email: OWNER_EMAIL, password: OWNER_PASSWORD });
    expect(login.user?.email).toBe(OWNER_EMAIL);
    expect(login.role).toBe(Role.OWNER);
    sessionToken = login.sessionToken;
    expect(sessionToken).not.toBe("");

    const created = await client("grpc", sessionToken).createApiToken({ name: "grpc" });
    apiToken = created.secret;
    expect(apiToken).not.toBe("");
  }, 90_000);

  it("WhoAmI with a session bearer token returns the same principal on every wire", async () => {
    const answers = await Promise.all(WIRES.map((w) => client(w, sessionToken).whoAmI({})));
    const [first] = answers;
    expect(first!.user?.email).toBe(OWNER_EMAIL);
    expect(first!.authMethod).toBe(AuthMethod.SESSION);
    for (const [i, a] of answers.entries()) {
      expect({ wire: WIRES[i], user: a.user?.id, org: a.organization?.id, role: a.role }).toEqual({
        wire: WIRES[i],
        user: first!.user?.id,
        org: first!.organization?.id,
        role: Role.OWNER,
      });
      expect(a.capabilities).toEqual(first!.capabilities);
      expect(a.authMethod).toBe(AuthMethod.SESSION);
    }
  }, 90_000);

  it("WhoAmI with an API token returns the same principal and token id on every wire", async () => {
    const answers = await Promise.all(WIRES.map((w) => client(w, apiToken).whoAmI({})));
    const [first] = answers;
    expect(first!.user?.email).toBe(OWNER_EMAIL);
    expect(first!.apiTokenId).not.toBe("");
    for (const a of answers) {
      expect(a.user?.id).toBe(first!.user?.id);
      expect(a.organization?.id).toBe(first!.organization?.id);
      expect(a.authMethod).toBe(AuthMethod.API_TOKEN);
      expect(a.apiTokenId).toBe(first!.apiTokenId);
    }
  }, 90_000);

  it("WhoAmI without credentials is Unauthenticated on every wire", async () => {
    for (const wire of WIRES) {
      const err = await client(wire)
        .whoAmI({})
        .then(
          () => undefined,
          (e: unknown) => ConnectError.from(e),
        );
      expect(err?.code, `${wire}: ${err?.message}`).toBe(Code.Unauthenticated);
    }
  }, 90_000);

  it("the hub logged no error", () => {
    expect(hub.errorLogs(), hub.describe()).toEqual([]);
  });
});
