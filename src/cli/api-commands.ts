// CLI commands over the hub's API: setup, login, logout, whoami, tokens, orgs, members, audit.
import { hostname } from "node:os";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { AuthMethod, Role } from "../gen/flotilla/v1/identity_pb.js";
import { FlotillaError } from "../shared/index.js";
import { type Api, CONNECTION, connect, when } from "./client.js";
import {
  type Credentials,
  loadCredentials,
  removeCredentials,
  saveCredentials,
} from "./credentials.js";
import {
  help,
  intOption,
  type OptionSpecs,
  type Parsed,
  parseOptions,
  stringOption,
} from "./options.js";
import { printJson, printTable } from "./output.js";
import { readSecret } from "./prompt.js";

const ROLE_NAMES: Record<number, string> = {
  [Role.OWNER]: "owner",
  [Role.ADMIN]: "admin",
  [Role.DEVELOPER]: "developer",
  [Role.VIEWER]: "viewer",
};

function roleFromName(name: string | undefined): Role {
  const entry = Object.entries(ROLE_NAMES).find(([, n]) => n === name);
  if (!entry)
    throw new FlotillaError(
      "config.invalid",
      `--role must be one of ${Object.values(ROLE_NAMES).join(", ")}`,
    );
  return Number(entry[0]) as Role;
}

async function password(values: Parsed["values"], prompt: string): Promise<string> {
  return stringOption(values, "password") ?? (await readSecret(prompt));
}

async function saveLogin(
  api: Api,
  sessionToken: string,
  email: string,
  json: boolean,
): Promise<number> {
  // Keep a revocable API token rather than the 12-hour session, named so `tokens list` shows where it lives.
  const session = connect({ hub: api.hub }, sessionToken);
  const created = await session.identity.createApiToken({
    name: `cli@${hostname()}`.slice(0, 100),
    ttlSeconds: BigInt(90 * 86_400),
  });
  const who = await session.identity.whoAmI({});
  const creds: Credentials = {
    hub: api.hub,
    token: created.secret,
    tokenId: created.token?.id ?? "",
    organization: who.organization?.slug ?? "",
    email,
  };
  const file = saveCredentials(creds);
  if (json)
    printJson({ hub: api.hub, organization: creds.organization, email, credentialsFile: file });
  else
    process.stdout.write(
      `Signed in to ${api.hub} as ${email} (organization ${creds.organization}); token saved in ${file}\n`,
    );
  return 0;
}

const SETUP: OptionSpecs = {
  ...CONNECTION,
  "setup-token": {
    type: "string",
    env: "FLOTILLA_SETUP_TOKEN",
    description: "The one-time token the hub printed",
  },
  email: { type: "string", description: "Owner's email" },
  password: {
    type: "string",
    env: "FLOTILLA_PASSWORD",
    description: "Owner's password (prompted, or read from stdin, when absent)",
  },
  name: { type: "string", description: "Owner's display name" },
  org: { type: "string", description: "Organization name (default: Default)" },
};

export async function setupCommand(argv: string[]): Promise<number> {
  const { values } = parseOptions(
    argv.map((a) => (a === "--token" ? "--setup-token" : a)),
    SETUP,
  );
  if (values.help)
    return help(
      "flotilla setup --hub URL --token SETUP_TOKEN --email EMAIL\n\nCreates the first owner and signs in.",
      SETUP,
    );
  const email = stringOption(values, "email");
  if (!email) throw new FlotillaError("config.invalid", "--email is required");
  const api = connect(values);
  const r = await api.identity.bootstrap({
    setupToken: stringOption(values, "setup-token") ?? "",
    email,
    password: await password(values, "New password (10+ characters): "),
    displayName: stringOption(values, "name") ?? "",
    organizationName: stringOption(values, "org") ?? "",
  });
  return saveLogin(api, r.sessionToken, email, Boolean(values.json));
}

const LOGIN: OptionSpecs = {
  ...CONNECTION,
  email: { type: "string", env: "FLOTILLA_EMAIL", description: "Your email" },
  password: {
    type: "string",
    env: "FLOTILLA_PASSWORD",
    description: "Password (prompted, or read from stdin, when absent)",
  },
  org: { type: "string", description: "Organization slug (default: the first you joined)" },
};

export async function loginCommand(argv: string[]): Promise<number> {
  const { values } = parseOptions(argv, LOGIN);
  if (values.help) return help("flotilla login --hub URL --email EMAIL [--org SLUG]", LOGIN);
  const email = stringOption(values, "email");
  if (!email) throw new FlotillaError("config.invalid", "--email is required");
  const api = connect(values);
  const r = await api.identity.login({
    email,
    password: await password(values, "Password: "),
    organizationSlug: stringOption(values, "org") ?? "",
  });
  return saveLogin(api, r.sessionToken, email, Boolean(values.json));
}

export async function logoutCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    everywhere: { type: "boolean", description: "End every session of your user" },
  };
  const { values } = parseOptions(argv, specs);
  if (values.help)
    return help(
      "flotilla logout [--everywhere]\n\nRevokes the stored token and forgets it.",
      specs,
    );
  const stored = loadCredentials();
  if (stored) {
    const api = connect(values);
    if (stored.tokenId) await api.identity.revokeApiToken({ id: stored.tokenId });
    if (values.everywhere) await api.identity.logout({ everywhere: true });
    removeCredentials();
  }
  process.stdout.write(stored ? "Signed out.\n" : "Not signed in.\n");
  return 0;
}

export async function whoamiCommand(argv: string[]): Promise<number> {
  const { values } = parseOptions(argv, CONNECTION);
  if (values.help) return help("flotilla whoami", CONNECTION);
  const api = connect(values);
  const r = await api.identity.whoAmI({});
  if (values.json) {
    printJson({
      hub: api.hub,
      user: { id: r.user?.id, email: r.user?.email, displayName: r.user?.displayName },
      organization: {
        id: r.organization?.id,
        slug: r.organization?.slug,
        name: r.organization?.name,
      },
      role: ROLE_NAMES[r.role],
      capabilities: r.capabilities,
      authMethod: r.authMethod === AuthMethod.API_TOKEN ? "api_token" : "session",
    });
  } else {
    process.stdout.write(
      `${r.user?.email} in ${r.organization?.name} (${r.organization?.slug}) as ${ROLE_NAMES[r.role]} at ${api.hub}\ncapabilities: ${r.capabilities.join(", ")}\n`,
    );
  }
  return 0;
}

export async function tokensCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    ttl: { type: "string", description: "Lifetime in days for create (default: never expires)" },
  };
  const { values, positionals } = parseOptions(argv, specs);
  const [sub, arg] = positionals;
  if (values.help || !sub)
    return help("flotilla tokens create NAME [--ttl DAYS] | list | revoke ID", specs);
  const api = connect(values);
  if (sub === "create") {
    if (!arg) throw new FlotillaError("config.invalid", "tokens create needs a NAME");
    const days = values.ttl === undefined ? 0 : Number(values.ttl);
    if (!Number.isInteger(days) || days < 0)
      throw new FlotillaError("config.invalid", "--ttl must be a whole number of days");
    const r = await api.identity.createApiToken({ name: arg, ttlSeconds: BigInt(days * 86_400) });
    if (values.json)
      printJson({
        id: r.token?.id,
        name: r.token?.name,
        secret: r.secret,
        expiresAt: when(r.token?.expiresAt) || null,
      });
    else
      process.stdout.write(
        `Token ${r.token?.id} created. Copy it now, it is not shown again:\n${r.secret}\n`,
      );
    return 0;
  }
  if (sub === "list") {
    const r = await api.identity.listApiTokens({});
    const rows = r.tokens.map((t) => ({
      id: t.id,
      name: t.name,
      prefix: t.prefix,
      created: when(t.createdAt),
      "last used": when(t.lastUsedAt),
      expires: when(t.expiresAt),
      revoked: when(t.revokedAt),
    }));
    if (values.json) printJson(rows);
    else printTable(rows, ["id", "name", "prefix", "created", "last used", "expires", "revoked"]);
    return 0;
  }
  if (sub === "revoke") {
    if (!arg) throw new FlotillaError("config.invalid", "tokens revoke needs an ID");
    const r = await api.identity.revokeApiToken({ id: arg });
    if (values.json) printJson({ id: r.token?.id, revokedAt: when(r.token?.revokedAt) });
    else process.stdout.write(`Token ${r.token?.id} revoked.\n`);
    return 0;
  }
  throw new FlotillaError(
    "config.invalid",
    `unknown tokens subcommand ${sub}; use create, list or revoke`,
  );
}

export async function orgsCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    slug: { type: "string", description: "Slug for create" },
  };
  const { values, positionals } = parseOptions(argv, specs);
  const [sub = "list", arg] = positionals;
  if (values.help)
    return help("flotilla orgs [list] | create NAME [--slug SLUG] | rename NAME", specs);
  const api = connect(values);
  if (sub === "list") {
    const r = await api.identity.listMyOrganizations({});
    const rows = r.memberships.map((m) => ({
      id: m.organization?.id ?? "",
      slug: m.organization?.slug ?? "",
      name: m.organization?.name ?? "",
      role: ROLE_NAMES[m.role] ?? "",
    }));
    if (values.json) printJson(rows);
    else printTable(rows, ["slug", "name", "role", "id"]);
    return 0;
  }
  if (sub === "create" || sub === "rename") {
    if (!arg) throw new FlotillaError("config.invalid", `orgs ${sub} needs a NAME`);
    const r =
      sub === "create"
        ? await api.orgs.createOrganization({ name: arg, slug: stringOption(values, "slug") ?? "" })
        : await api.orgs.updateOrganization({ name: arg });
    const o = r.organization;
    if (values.json) printJson({ id: o?.id, slug: o?.slug, name: o?.name });
    else
      process.stdout.write(
        `Organization ${o?.slug} (${o?.name}) ${sub === "create" ? "created; sign in to it with flotilla login --org" : "renamed"}.\n`,
      );
    return 0;
  }
  throw new FlotillaError(
    "config.invalid",
    `unknown orgs subcommand ${sub}; use list, create or rename`,
  );
}

export async function membersCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    role: { type: "string", description: "owner, admin, developer or viewer" },
    name: { type: "string", description: "Display name of a new user" },
    password: {
      type: "string",
      env: "FLOTILLA_PASSWORD",
      description: "Initial password of a new user",
    },
  };
  const { values, positionals } = parseOptions(argv, specs);
  const [sub = "list", arg] = positionals;
  if (values.help)
    return help(
      "flotilla members [list] | add EMAIL --role ROLE [--password P] | set-role USER_ID --role ROLE | remove USER_ID",
      specs,
    );
  const api = connect(values);
  const show = (m: {
    user?: { id: string; email: string; displayName: string };
    role: Role;
    joinedAt?: Timestamp;
  }) => ({
    id: m.user?.id ?? "",
    email: m.user?.email ?? "",
    name: m.user?.displayName ?? "",
    role: ROLE_NAMES[m.role] ?? "",
    joined: when(m.joinedAt),
  });
  if (sub === "list") {
    const rows = (await api.orgs.listMembers({})).members.map(show);
    if (values.json) printJson(rows);
    else printTable(rows, ["email", "name", "role", "joined", "id"]);
    return 0;
  }
  if (!arg)
    throw new FlotillaError(
      "config.invalid",
      `members ${sub} needs ${sub === "add" ? "an EMAIL" : "a USER_ID"}`,
    );
  if (sub === "add" || sub === "set-role") {
    const role = roleFromName(stringOption(values, "role"));
    const r =
      sub === "add"
        ? await api.orgs.addMember({
            email: arg,
            role,
            displayName: stringOption(values, "name") ?? "",
            initialPassword: stringOption(values, "password") ?? "",
          })
        : await api.orgs.updateMemberRole({ userId: arg, role });
    const m = show(r.member!);
    if (values.json) printJson(m);
    else process.stdout.write(`${m.email} is ${m.role}.\n`);
    return 0;
  }
  if (sub === "remove") {
    await api.orgs.removeMember({ userId: arg });
    if (values.json) printJson({ removed: arg });
    else process.stdout.write(`Member ${arg} removed.\n`);
    return 0;
  }
  throw new FlotillaError(
    "config.invalid",
    `unknown members subcommand ${sub}; use list, add, set-role or remove`,
  );
}

export async function auditCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    limit: { type: "string", description: "How many events (default 50, at most 500)" },
  };
  const { values } = parseOptions(argv, specs);
  if (values.help) return help("flotilla audit [--limit N]", specs);
  const api = connect(values);
  const r = await api.orgs.listAuditEvents({
    limit: intOption(values, "limit", { min: 1, max: 500 }) ?? 0,
  });
  const rows = r.events.map((e) => ({
    time: when(e.createdAt),
    action: e.action,
    actor: `${e.actorType}${e.actorId ? `:${e.actorId}` : ""}`,
    target: e.targetType ? `${e.targetType}:${e.targetId}` : "",
    correlation: e.correlationId,
  }));
  if (values.json)
    printJson(
      r.events.map((e) => ({
        ...e,
        $typeName: undefined,
        createdAt: when(e.createdAt),
        details: JSON.parse(e.detailsJson || "{}"),
      })),
    );
  else printTable(rows, ["time", "action", "actor", "target", "correlation"]);
  return 0;
}
