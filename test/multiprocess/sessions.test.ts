// Sessions and API tokens across hub processes: a session minted on one replica works on every
// replica that shares FLOTILLA_SESSION_SECRET and on no other; API tokens (hashed rows) work on
// every replica of the database; "log out everywhere" on one replica ends the session on all.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/pg.js";
import {
  connectJson,
  type FlotillaProcess,
  killAll,
  SECRET_A,
  SECRET_B,
  sleep,
  startFlotilla,
} from "./procs.js";

const OWNER_EMAIL = "owner@multiprocess.example.com";
const OWNER_PASSWORD = "correct-horse-battery-staple";

const whoAmI = (hub: FlotillaProcess, headers: Record<string, string>) =>
  connectJson(hub.url, "WhoAmI", {}, headers);

function expectSignedIn(
  r: Awaited<ReturnType<typeof whoAmI>>,
  hub: FlotillaProcess,
  method: string,
): void {
  expect(r.status, `${JSON.stringify(r.body)}\n${hub.describe()}`).toBe(200);
  expect((r.body.user as { email: string }).email).toBe(OWNER_EMAIL);
  expect(r.body.authMethod).toBe(method);
}

function expectUnauthenticated(r: Awaited<ReturnType<typeof whoAmI>>): void {
  expect(r.status, JSON.stringify(r.body)).toBe(401);
  expect(r.body.code).toBe("unauthenticated");
}

describe("sessions and tokens across hub replicas", () => {
  let database: TestDatabase;
  let a: FlotillaProcess; // secret A, created the owner at startup
  let b: FlotillaProcess; // secret A
  let c: FlotillaProcess; // secret B: same database, different secret
  let cookie: string;
  let sessionToken: string;

  beforeAll(async () => {
    database = await createTestDatabase("mp_sessions");
    const env = (secret: string) => ({
      FLOTILLA_DATABASE_URL: database.url,
      FLOTILLA_SESSION_SECRET: secret,
    });
    a = await startFlotilla("hub", {
      env: {
        ...env(SECRET_A),
        FLOTILLA_ADMIN_EMAIL: OWNER_EMAIL,
        FLOTILLA_ADMIN_PASSWORD: OWNER_PASSWORD,
      },
    });
    await a.waitReady(30_000);
    [b, c] = await Promise.all([
      startFlotilla("hub", { env: env(SECRET_A) }),
      startFlotilla("hub", { env: env(SECRET_B) }),
    ]);
    await Promise.all([b.waitReady(30_000), c.waitReady(30_000)]);
  }, 120_000);

  afterAll(async () => {
    await Promise.all([a, b, c].filter(Boolean).map((h) => h.stop(10_000)));
    await killAll();
    await database?.drop();
  });

  it("the replica started with FLOTILLA_ADMIN_EMAIL created the owner; the others print no setup token", () => {
    expect(a.stdout()).toContain(`Created the first owner ${OWNER_EMAIL}.`);
    for (const h of [b, c]) {
      expect(h.stdout(), h.describe()).not.toContain("setup");
      expect(h.stdout(), h.describe()).toContain("Sign in:");
    }
  });

  it("Login on A returns the session both as an HttpOnly cookie and as a bearer token", async () => {
    const r = await connectJson(a.url, "Login", { email: OWNER_EMAIL, password: OWNER_PASSWORD });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    sessionToken = r.body.sessionToken as string;
    expect(sessionToken).toMatch(/^[\w-]+\.[\w-]*\.[\w-]+\.[\w-]+\.[\w-]+$/); // a compact JWE
    const setCookie = r.headers.getSetCookie().find((v) => v.startsWith("flotilla_session="));
    expect(setCookie, JSON.stringify(r.headers.getSetCookie())).toBeDefined();
    expect(setCookie).toContain("HttpOnly");
    cookie = setCookie!.split(";")[0]!;
    expect(cookie).toBe(`flotilla_session=${sessionToken}`);
  });

  it("the session cookie from A works on A and B (same secret) and is refused on C (other secret)", async () => {
    expectSignedIn(await whoAmI(a, { cookie }), a, "AUTH_METHOD_SESSION");
    expectSignedIn(await whoAmI(b, { cookie }), b, "AUTH_METHOD_SESSION");
    expectUnauthenticated(await whoAmI(c, { cookie }));
  });

  it("the session as a bearer token works on A and B and is refused on C", async () => {
    const bearer = { authorization: `Bearer ${sessionToken}` };
    expectSignedIn(await whoAmI(a, bearer), a, "AUTH_METHOD_SESSION");
    expectSignedIn(await whoAmI(b, bearer), b, "AUTH_METHOD_SESSION");
    expectUnauthenticated(await whoAmI(c, bearer));
  });

  it("an API token created on A works on A, B and C, whatever their session secret", async () => {
    const created = await connectJson(
      a.url,
      "CreateApiToken",
      { name: "multiprocess" },
      { authorization: `Bearer ${sessionToken}` },
    );
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    const secret = created.body.secret as string;
    const tokenId = (created.body.token as { id: string }).id;
    for (const hub of [a, b, c]) {
      const r = await whoAmI(hub, { authorization: `Bearer ${secret}` });
      expectSignedIn(r, hub, "AUTH_METHOD_API_TOKEN");
      expect(r.body.apiTokenId).toBe(tokenId);
    }
  });

  it("Logout {everywhere: true} on B ends the session on A too, for cookie and bearer alike", async () => {
    const r = await connectJson(
      b.url,
      "Logout",
      { everywhere: true },
      { authorization: `Bearer ${sessionToken}` },
    );
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    // B also tells the browser to drop its cookie.
    expect(r.headers.getSetCookie().some((v) => v.startsWith("flotilla_session=;"))).toBe(true);

    for (const hub of [a, b]) {
      expectUnauthenticated(await whoAmI(hub, { cookie }));
      expectUnauthenticated(await whoAmI(hub, { authorization: `Bearer ${sessionToken}` }));
    }
  });

  it("after logging out everywhere, a new sign-in on A works on B", async () => {
    // Session issue times have one-second resolution and a session minted in the same second as
    // the logout counts as older, so sign in again only once that second has passed.
    await sleep(1_100);
    const login = await connectJson(a.url, "Login", {
      email: OWNER_EMAIL,
      password: OWNER_PASSWORD,
    });
    expect(login.status, JSON.stringify(login.body)).toBe(200);
    const fresh = login.body.sessionToken as string;
    expect(fresh).not.toBe(sessionToken);
    expectSignedIn(await whoAmI(b, { authorization: `Bearer ${fresh}` }), b, "AUTH_METHOD_SESSION");
  });

  it("no replica logged an error", () => {
    for (const h of [a, b, c]) expect(h.errorLogs(), h.describe()).toEqual([]);
  });
});
