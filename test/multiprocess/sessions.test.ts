// Sessions and API tokens across hub processes: a session minted on one replica works on every
// replica that shares FLOTILLA_SESSION_SECRET and on no other; API tokens (hashed rows) work on
// every replica of the database; "log out everywhere" and a token revoked on one replica end them on
// all, though every replica remembers resolved credentials for 60 s: the NOTIFY clears them.
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

/**
 * Another replica hears of a change by NOTIFY, a few milliseconds after the changing request has
 * answered; ask again for up to 5 s (a twelfth of the 60 s the replicas would otherwise trust it).
 */
async function refusedSoon(hub: FlotillaProcess, headers: Record<string, string>): Promise<void> {
  const deadline = Date.now() + 5_000;
  let r = await whoAmI(hub, headers);
  while (r.status === 200 && Date.now() < deadline) {
    await sleep(20);
    r = await whoAmI(hub, headers);
  }
  expectUnauthenticated(r);
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
      // Far longer than any wait below: a revocation seen elsewhere can only come from the NOTIFY.
      FLOTILLA_AUTH_CACHE_MS: "60000",
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

  it("an API token revoked on C is refused on A and B, which had just resolved it", async () => {
    const created = await connectJson(
      a.url,
      "CreateApiToken",
      { name: "revoked-elsewhere" },
      { authorization: `Bearer ${sessionToken}` },
    );
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    const bearer = { authorization: `Bearer ${created.body.secret as string}` };
    for (const hub of [a, b, c])
      expectSignedIn(await whoAmI(hub, bearer), hub, "AUTH_METHOD_API_TOKEN");
    const revoked = await connectJson(
      c.url,
      "RevokeApiToken",
      { id: (created.body.token as { id: string }).id },
      bearer,
    );
    expect(revoked.status, JSON.stringify(revoked.body)).toBe(200);
    expectUnauthenticated(await whoAmI(c, bearer));
    await refusedSoon(a, bearer);
    await refusedSoon(b, bearer);
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

    // B made the change: refused there at once. A remembered the session: refused once it hears.
    expectUnauthenticated(await whoAmI(b, { cookie }));
    expectUnauthenticated(await whoAmI(b, { authorization: `Bearer ${sessionToken}` }));
    await refusedSoon(a, { cookie });
    await refusedSoon(a, { authorization: `Bearer ${sessionToken}` });
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
