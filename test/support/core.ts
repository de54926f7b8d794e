// Test support for the core-domain acceptance tests: Connect clients for every hub service,
// typed-error assertions, row counts, spec builders and extra members and tenants.
import { randomBytes } from "node:crypto";
import {
  type Client,
  Code,
  ConnectError,
  createClient,
  type Interceptor,
} from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { expect } from "vitest";
import { ConfigService } from "../../src/gen/flotilla/v1/config_pb.js";
import {
  IdentityService,
  OrganizationService,
  Role,
} from "../../src/gen/flotilla/v1/identity_pb.js";
import { ProjectService } from "../../src/gen/flotilla/v1/projects_pb.js";
import { Driver, ServicesService, Visibility } from "../../src/gen/flotilla/v1/services_pb.js";
import type { Hub } from "../../src/hub/index.js";
import type { Queryable } from "../../src/store/index.js";
import { PASSWORD, randomEmail } from "./hub.js";

export interface Api {
  identity: Client<typeof IdentityService>;
  orgs: Client<typeof OrganizationService>;
  projects: Client<typeof ProjectService>;
  services: Client<typeof ServicesService>;
  config: Client<typeof ConfigService>;
}

/** Clients for every hub service, signed in with `token`, sending `headers` on every call. */
export function api(
  baseUrl: string,
  token?: string,
  headers: () => Record<string, string> = () => ({}),
): Api {
  const add: Interceptor = (next) => async (req) => {
    if (token) req.header.set("authorization", `Bearer ${token}`);
    for (const [k, v] of Object.entries(headers())) req.header.set(k, v);
    return next(req);
  };
  const transport = createConnectTransport({ baseUrl, httpVersion: "1.1", interceptors: [add] });
  return {
    identity: createClient(IdentityService, transport),
    orgs: createClient(OrganizationService, transport),
    projects: createClient(ProjectService, transport),
    services: createClient(ServicesService, transport),
    config: createClient(ConfigService, transport),
  };
}

export const suffix = () => randomBytes(3).toString("hex");

/** The rejection of `p` as a ConnectError; fails the test when `p` resolves. */
export async function rejection(p: Promise<unknown>): Promise<ConnectError> {
  let value: unknown;
  try {
    value = await p;
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectError);
    return err as ConnectError;
  }
  const text = JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? String(v) : v));
  throw new Error(`expected a rejection, got ${text}`);
}

/** Asserts the typed error: Flotilla's stable code, the offending field (null: none), the Connect code. */
export async function expectError(
  p: Promise<unknown>,
  code: string,
  field?: string | null,
  connectCode?: Code,
): Promise<ConnectError> {
  const err = await rejection(p);
  expect(err.metadata.get("flotilla-error-code"), err.message).toBe(code);
  if (field !== undefined)
    expect(err.metadata.get("flotilla-error-field"), err.message).toBe(field);
  if (connectCode !== undefined) expect(Code[err.code]).toBe(Code[connectCode]);
  return err;
}

export const CORE_TABLES = [
  "projects",
  "environments",
  "services",
  "deployments",
  "config_entries",
  "config_scopes",
  "outbox_events",
  "audit_log",
] as const;

export async function countRows(db: Queryable): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const t of CORE_TABLES) {
    const { rows } = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${t}`);
    counts[t] = rows[0]!.n;
  }
  return counts;
}

/**
 * Row count and a digest of the content of each core table, so a rejected request that updated a
 * row (not only one that inserted) shows. The relay's published_at stamp is left out: it moves
 * on its own after every committed change.
 */
export async function tableState(
  db: Queryable,
): Promise<Record<string, { rows: number; digest: string }>> {
  const state: Record<string, { rows: number; digest: string }> = {};
  for (const t of CORE_TABLES) {
    const from =
      t === "outbox_events"
        ? "(SELECT id, organization_id, type, subject_id, payload, correlation_id, traceparent, occurred_at FROM outbox_events)"
        : t;
    const { rows } = await db.query<{ n: number; digest: string }>(
      `SELECT count(*)::int AS n, coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') AS digest
       FROM ${from} t`,
    );
    state[t] = { rows: rows[0]!.n, digest: rows[0]!.digest };
  }
  return state;
}

/** A valid exec spec; `over` replaces fields of its exec part. */
export function execSpec(over: { command?: string; args?: string[]; port?: number } = {}) {
  return {
    driver: Driver.EXEC,
    exec: {
      command: over.command ?? "/usr/bin/node",
      args: over.args ?? ["server.js"],
      workingDirectory: "/srv/app",
      port: over.port ?? 8080,
    },
    healthCheck: { type: "http", path: "/healthz" },
  };
}

export interface Fixture {
  projectId: string;
  productionId: string;
  serviceId: string;
}

/** A project (with its production environment) and one exec service in production. */
export async function createFixture(a: Api, label = "app"): Promise<Fixture> {
  const s = suffix();
  const { project, production } = await a.projects.createProject({
    name: `${label} ${s}`,
    slug: `${label}-${s}`,
  });
  const { service } = await a.services.createService({
    environmentId: production!.id,
    name: "Web",
    slug: "web",
    visibility: Visibility.PRIVATE,
    spec: execSpec(),
  });
  return { projectId: project!.id, productionId: production!.id, serviceId: service!.id };
}

/** Adds a member with `role` to the organization of `ownerToken`; returns the member's session token. */
export async function addMember(
  hub: Hub,
  ownerToken: string,
  role: Role,
): Promise<{ token: string; userId: string; email: string }> {
  const email = randomEmail(Role[role].toLowerCase());
  const added = await api(hub.url, ownerToken).orgs.addMember({
    email,
    role,
    initialPassword: PASSWORD,
  });
  const login = await api(hub.url).identity.login({ email, password: PASSWORD });
  return { token: login.sessionToken, userId: added.member!.user!.id, email };
}

export async function organizationIdOf(hub: Hub, token: string): Promise<string> {
  return (await api(hub.url, token).identity.whoAmI({})).organization!.id;
}

/**
 * A second tenant with its own owner: a new user, who creates an organization of their own and
 * signs in to it. Returns that owner's session token and the organization id.
 */
export async function secondTenant(
  hub: Hub,
  ownerToken: string,
): Promise<{ token: string; organizationId: string }> {
  // The user is created through the first organization (the only way to create a user after
  // setup), creates their own organization, then leaves the first one.
  const member = await addMember(hub, ownerToken, Role.VIEWER);
  const slug = `tenant-b-${suffix()}`;
  const created = await api(hub.url, member.token).orgs.createOrganization({
    name: "Tenant B",
    slug,
  });
  await api(hub.url, ownerToken).orgs.removeMember({ userId: member.userId });
  const login = await api(hub.url).identity.login({
    email: member.email,
    password: PASSWORD,
    organizationSlug: slug,
  });
  expect(login.organization!.id).toBe(created.organization!.id);
  return { token: login.sessionToken, organizationId: created.organization!.id };
}

/** Polls `fn` until it returns a truthy value or `ms` pass. */
export async function eventually<T>(
  fn: () => Promise<T>,
  ms = 10_000,
  what = "condition",
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
