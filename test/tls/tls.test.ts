// With TLS, one port serves the Connect protocol over HTTP/1.1 and gRPC over HTTP/2 (ALPN).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IdentityService } from "../../src/gen/flotilla/v1/identity_pb.js";
import { PASSWORD, startTestHub, type TestHub } from "../support/hub.js";
import { selfSignedCert } from "../support/tls.js";

describe("hub over TLS", () => {
  let dir: string;
  let cert: Buffer;
  let t: TestHub;
  let token: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "flotilla-tls-"));
    const pair = selfSignedCert(dir);
    cert = pair.cert;
    t = await startTestHub("pglite", { tls: { cert, key: pair.key } });
    const client = createClient(
      IdentityService,
      createConnectTransport({ baseUrl: t.hub.url, httpVersion: "1.1", nodeOptions: { ca: cert } }),
    );
    const r = await client.bootstrap({
      setupToken: t.hub.setupToken!,
      email: "tls-owner@example.com",
      password: PASSWORD,
    });
    token = r.sessionToken;
  });

  afterAll(async () => {
    await t?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const auth = () => ({ authorization: `Bearer ${token}` });

  it("serves gRPC on the same port as the Connect API, with no separate listener", () => {
    expect(t.hub.url).toMatch(/^https:/);
    expect(t.hub.grpcUrl).toBe(t.hub.url);
  });

  it("answers WhoAmI over Connect on HTTP/1.1", async () => {
    const client = createClient(
      IdentityService,
      createConnectTransport({ baseUrl: t.hub.url, httpVersion: "1.1", nodeOptions: { ca: cert } }),
    );
    const r = await client.whoAmI({}, { headers: auth() });
    expect(r.user?.email).toBe("tls-owner@example.com");
  });

  it("answers WhoAmI over gRPC on HTTP/2 at the same port", async () => {
    const client = createClient(
      IdentityService,
      createGrpcTransport({ baseUrl: t.hub.url, nodeOptions: { ca: cert } }),
    );
    const r = await client.whoAmI({}, { headers: auth() });
    expect(r.user?.email).toBe("tls-owner@example.com");
  });

  it("marks the session cookie Secure", async () => {
    const client = createClient(
      IdentityService,
      createConnectTransport({ baseUrl: t.hub.url, httpVersion: "1.1", nodeOptions: { ca: cert } }),
    );
    let setCookie = "";
    await client.login(
      { email: "tls-owner@example.com", password: PASSWORD },
      {
        onHeader: (h) => {
          setCookie = h.get("set-cookie") ?? "";
        },
      },
    );
    expect(setCookie).toMatch(/flotilla_session=.+; Path=\/; HttpOnly; SameSite=Lax; .*Secure/);
  });
});
