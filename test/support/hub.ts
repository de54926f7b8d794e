// Test support: a hub in this process on a fresh store, plus Connect clients for it.
import { randomBytes } from "node:crypto";
import { Writable } from "node:stream";
import { type Client, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { IdentityService, OrganizationService } from "../../src/gen/flotilla/v1/identity_pb.js";
import { type Hub, type HubOptions, startHub } from "../../src/hub/index.js";
import { createLogger } from "../../src/shared/index.js";
import { createTestDatabase, type TestDatabase } from "./pg.js";

export interface TestHub {
  hub: Hub;
  /** Every JSON log line the hub wrote. */
  logs: Array<Record<string, unknown>>;
  stop(): Promise<void>;
}

/** A fixed key so a test can open what a hub sealed; never a production key. */
export const TEST_MASTER_KEY = { id: "test-key", key: Buffer.alloc(32, 9) };

export const TEST_SESSION_SECRET = "test-session-secret-that-is-long-enough-0123456789";

export async function startTestHub(
  engine: "pglite" | "postgres",
  overrides: Partial<HubOptions> = {},
): Promise<TestHub> {
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const line of String(chunk).split("\n")) if (line) logs.push(JSON.parse(line));
      cb();
    },
  });
  const database: TestDatabase | undefined =
    engine === "postgres" ? await createTestDatabase("hub") : undefined;
  const store: HubOptions["store"] = database
    ? { kind: "postgres", url: database.url, pool: { max: 10 } }
    : { kind: "embedded", dataDir: "memory://" };
  const hub = await startHub({
    store,
    port: 0,
    grpcPort: 0,
    sessionSecret: TEST_SESSION_SECRET,
    masterKey: TEST_MASTER_KEY,
    logger: createLogger({ destination: sink, level: "debug" }),
    ...overrides,
  }).catch(async (err: unknown) => {
    // A hub that refused to start (the tests of refusals) leaves no database behind.
    await database?.drop();
    throw err;
  });
  return {
    hub,
    logs,
    async stop() {
      await hub.close();
      await database?.drop();
    },
  };
}

export interface Clients {
  identity: Client<typeof IdentityService>;
  orgs: Client<typeof OrganizationService>;
}

export function clients(
  baseUrl: string,
  options: { token?: string; headers?: Record<string, string> } = {},
): Clients {
  const add: Interceptor = (next) => async (req) => {
    if (options.token) req.header.set("authorization", `Bearer ${options.token}`);
    for (const [k, v] of Object.entries(options.headers ?? {})) req.header.set(k, v);
    return next(req);
  };
  const transport = createConnectTransport({ baseUrl, httpVersion: "1.1", interceptors: [add] });
  return {
    identity: createClient(IdentityService, transport),
    orgs: createClient(OrganizationService, transport),
  };
}

export const randomEmail = (label = "user") =>
  `${label}-${randomBytes(4).toString("hex")}@example.com`;
export const PASSWORD = "correct-horse-battery-staple";

/**
 * Creates an organization as the holder of `token` (a user who signs in with `email` and
 * PASSWORD), signs in to it, and returns that session's token.
 */
export async function signInToNewOrganization(
  url: string,
  token: string,
  email: string,
  name: string,
): Promise<string> {
  const created = await clients(url, { token }).orgs.createOrganization({ name });
  const login = await clients(url).identity.login({
    email,
    password: PASSWORD,
    organizationSlug: created.organization!.slug,
  });
  return login.sessionToken;
}

/** Bootstraps the first owner with the hub's setup token; returns the owner's session token. */
export async function bootstrapOwner(
  hub: Hub,
  email = randomEmail("owner"),
): Promise<{ token: string; email: string }> {
  if (!hub.setupToken) throw new Error("hub has no setup token");
  const r = await clients(hub.url).identity.bootstrap({
    setupToken: hub.setupToken,
    email,
    password: PASSWORD,
    organizationName: "Acme",
  });
  return { token: r.sessionToken, email };
}

/** The call's error; fails the test when the call succeeds. */
export async function refusal(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("expected the call to be refused, but it succeeded");
}
