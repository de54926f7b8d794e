// Identity: organizations, users, memberships, sessions, API tokens and first-owner setup.
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { FlotillaError, invalid, isUniqueViolation, notFound, uuidv7 } from "../../shared/index.js";
import type { Db, Queryable } from "../../store/index.js";
import { DUMMY_HASH_PROMISE, hashPassword, verifyPassword } from "./passwords.js";
import type { AuditEntry, AuditRecorder } from "./ports.js";
import {
  type Capability,
  hasCapability,
  ROLE_CAPABILITY_LIST,
  ROLES,
  type RoleName,
} from "./roles.js";
import type { SessionCodec } from "./sessions.js";
import { generateApiToken, hashApiToken, looksLikeApiToken } from "./tokens.js";
import * as check from "./validate.js";

export interface User {
  id: string;
  email: string;
  displayName: string;
  createdAt: Date;
}

export interface Organization {
  id: string;
  slug: string;
  name: string;
  createdAt: Date;
}

export interface Principal {
  user: User;
  organization: Organization;
  role: RoleName;
  method: "session" | "api_token";
  tokenId?: string;
}

export interface Member {
  user: User;
  role: RoleName;
  joinedAt: Date;
}

export interface ApiToken {
  id: string;
  name: string;
  prefix: string;
  createdAt: Date;
  lastUsedAt: Date | null;
  expiresAt: Date | null;
  revokedAt: Date | null;
}

export interface Session {
  token: string;
  expiresAt: Date;
}

export interface LoginLimits {
  /** Failed logins per email within the window before refusing. Default 10. */
  perEmail: number;
  /** Failed logins per remote address within the window. Default 50 (a NAT may front many people). */
  perAddress: number;
  /** Default 15 minutes. */
  windowSeconds: number;
}

export const DEFAULT_LOGIN_LIMITS: LoginLimits = {
  perEmail: 10,
  perAddress: 50,
  windowSeconds: 900,
};

// Writing last_used_at on every request would turn every read into a write; once a minute is
// precise enough to tell a live token from a stale one.
const LAST_USED_RESOLUTION_MS = 60_000;

interface PrincipalRow {
  user_id: string;
  email: string;
  display_name: string;
  user_created_at: Date;
  organization_id: string;
  slug: string;
  org_name: string;
  org_created_at: Date;
  role: RoleName;
}

const PRINCIPAL_COLUMNS = `
  u.id AS user_id, u.email, u.display_name, u.created_at AS user_created_at,
  o.id AS organization_id, o.slug, o.name AS org_name, o.created_at AS org_created_at, m.role`;

function toUser(r: {
  id?: string;
  user_id?: string;
  email: string;
  display_name: string;
  user_created_at?: Date;
  created_at?: Date;
}): User {
  return {
    id: (r.user_id ?? r.id)!,
    email: r.email,
    displayName: r.display_name,
    createdAt: (r.user_created_at ?? r.created_at)!,
  };
}

function toOrg(r: {
  id?: string;
  organization_id?: string;
  slug: string;
  org_name?: string;
  name?: string;
  org_created_at?: Date;
  created_at?: Date;
}): Organization {
  return {
    id: (r.organization_id ?? r.id)!,
    slug: r.slug,
    name: (r.org_name ?? r.name)!,
    createdAt: (r.org_created_at ?? r.created_at)!,
  };
}

function toPrincipal(r: PrincipalRow, method: Principal["method"], tokenId?: string): Principal {
  return {
    user: toUser(r),
    organization: toOrg(r),
    role: r.role,
    method,
    ...(tokenId ? { tokenId } : {}),
  };
}

interface TokenRow {
  id: string;
  name: string;
  prefix: string;
  created_at: Date;
  last_used_at: Date | null;
  expires_at: Date | null;
  revoked_at: Date | null;
}

function toToken(r: TokenRow): ApiToken {
  return {
    id: r.id,
    name: r.name,
    prefix: r.prefix,
    createdAt: r.created_at,
    lastUsedAt: r.last_used_at,
    expiresAt: r.expires_at,
    revokedAt: r.revoked_at,
  };
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

export function actorOf(p: Principal): AuditEntry["actor"] {
  return p.method === "api_token"
    ? { type: "token", id: p.tokenId ?? null }
    : { type: "user", id: p.user.id };
}

export function require(p: Principal, capability: Capability): void {
  if (!hasCapability(p.role, capability)) {
    throw new FlotillaError(
      "auth.permission_denied",
      `your role (${p.role}) lacks the ${capability} capability`,
    );
  }
}

/**
 * How long a replica may trust a credential it resolved without asking the database again. Every
 * change to who may do what (revocation, role change, removal, "log out everywhere") clears the
 * cache of the replica that made it at once and NOTIFYs PRINCIPALS_CHANNEL, which clears every
 * other replica's within milliseconds; this TTL only bounds the rare case where that notification
 * is lost (a replica killed between commit and NOTIFY, a listener connection being re-opened).
 * Saves one principal query per request (bench/whoami: ~410 -> ~340 us of hub CPU per WhoAmI).
 * 0 turns the cache off (--auth-cache-ms 0).
 */
export const DEFAULT_PRINCIPAL_CACHE_MS = 5_000;
/** NOTIFY channel (no payload) that tells every replica to forget the principals it remembers. */
export const PRINCIPALS_CHANNEL = "flotilla_principals";
const PRINCIPAL_CACHE_SIZE = 10_000;

/** A credential resolved from the database, and when it stops being valid on its own. */
interface Resolved {
  principal: Principal;
  notAfter: number;
}

class PrincipalCache {
  private readonly entries = new Map<string, { principal: Principal; until: number }>();
  /** Bumped by every clear, so a lookup that raced a change is not remembered. */
  generation = 0;

  constructor(private readonly ttlMs: number) {}

  get enabled(): boolean {
    return this.ttlMs > 0;
  }

  get(credential: string): Principal | undefined {
    const e = this.entries.get(credential);
    if (!e) return undefined;
    if (e.until > Date.now()) return e.principal;
    this.entries.delete(credential);
    return undefined;
  }

  /** notAfter: when the credential itself expires; it is never trusted past that. */
  set(credential: string, principal: Principal, generation: number, notAfter: number): void {
    if (this.ttlMs <= 0 || generation !== this.generation) return;
    this.entries.set(credential, { principal, until: Math.min(Date.now() + this.ttlMs, notAfter) });
    if (this.entries.size > PRINCIPAL_CACHE_SIZE)
      this.entries.delete(this.entries.keys().next().value!);
  }

  clear(): void {
    this.generation++;
    this.entries.clear();
  }
}

export class IdentityService {
  private readonly principals: PrincipalCache;
  /** Lookups in flight by credential, with the cache generation each began in. */
  private readonly resolving = new Map<
    string,
    { generation: number; lookup: Promise<Principal | null> }
  >();

  constructor(
    private readonly db: Db,
    private readonly sessions: SessionCodec,
    private readonly audit: AuditRecorder,
    private readonly loginLimits: LoginLimits = DEFAULT_LOGIN_LIMITS,
    principalCacheMs = DEFAULT_PRINCIPAL_CACHE_MS,
  ) {
    this.principals = new PrincipalCache(principalCacheMs);
  }

  /**
   * Runs a change to who may do what, then forgets every remembered principal of this replica and
   * tells the others to (after the commit: a rolled-back change need not be heard).
   */
  private async mutate<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } finally {
      this.principals.clear();
      await this.db.query("SELECT pg_notify($1, '')", [PRINCIPALS_CHANNEL]).catch(() => {}); // the TTL bounds what a lost notification costs
    }
  }

  /** Forgets every remembered principal (another replica changed who may do what). */
  forgetPrincipals(): void {
    this.principals.clear();
  }

  // --- first-owner setup -------------------------------------------------------------------

  /** The first organization and its earliest owner: who `flotilla up`'s local server belongs to. */
  async firstOwner(): Promise<{ organizationId: string; userId: string } | null> {
    const { rows } = await this.db.query<{ organization_id: string; user_id: string }>(
      `SELECT m.organization_id, m.user_id FROM memberships m JOIN organizations o ON o.id = m.organization_id
       WHERE m.role = 'owner' ORDER BY o.created_at, m.created_at LIMIT 1`,
    );
    return rows[0] ? { organizationId: rows[0].organization_id, userId: rows[0].user_id } : null;
  }

  async setupRequired(): Promise<boolean> {
    const { rows } = await this.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM memberships WHERE role = 'owner'",
    );
    return rows[0]!.n === 0;
  }

  /**
   * Called at start. With no owner yet: creates one from the given credentials when provided,
   * otherwise mints a new one-time setup token (replacing any earlier one) and returns it.
   */
  async prepareSetup(admin?: {
    email: string;
    password: string;
  }): Promise<{ setupToken?: string; createdOwner?: string }> {
    if (!(await this.setupRequired())) return {};
    if (admin) {
      try {
        const { user } = await this.createFirstOwner(admin.email, admin.password, "", "Default");
        return { createdOwner: user.email };
      } catch (err) {
        // Another replica created the owner at the same moment: that is the outcome we wanted.
        if (err instanceof FlotillaError && err.code === "auth.setup_closed") return {};
        throw err;
      }
    }
    const token = `fst_${randomBytes(24).toString("base64url")}`;
    await this.db.query(
      `INSERT INTO setup_state (singleton, token_hash) VALUES (true, $1)
       ON CONFLICT (singleton) DO UPDATE SET token_hash = excluded.token_hash, created_at = now()
       WHERE setup_state.completed_at IS NULL`,
      [sha256(token)],
    );
    return { setupToken: token };
  }

  async bootstrap(input: {
    setupToken: string;
    email: string;
    password: string;
    displayName: string;
    organizationName: string;
  }) {
    const email = check.email("email", input.email);
    const password = check.password("password", input.password);
    const displayName = check.name("display_name", input.displayName, { required: false });
    const orgName = check.name("organization_name", input.organizationName || "Default");
    if (!input.setupToken) throw invalid("setup_token", "is required");
    const { rows } = await this.db.query<{ token_hash: Buffer; completed_at: Date | null }>(
      "SELECT token_hash, completed_at FROM setup_state WHERE singleton",
    );
    const state = rows[0];
    if (!state || state.completed_at || !(await this.setupRequired())) {
      throw new FlotillaError(
        "auth.setup_closed",
        "setup is already complete; sign in with Login (flotilla login)",
      );
    }
    const given = sha256(input.setupToken);
    if (!timingSafeEqual(given, Buffer.from(state.token_hash))) {
      throw new FlotillaError(
        "auth.setup_token_invalid",
        "the setup token is wrong; use the one the hub printed at its latest start",
      );
    }
    const created = await this.createFirstOwner(email, password, displayName, orgName);
    const session = await this.sessions.mint(created.user.id, created.organization.id);
    return { ...created, session };
  }

  private async createFirstOwner(
    emailText: string,
    passwordText: string,
    displayName: string,
    orgName: string,
  ) {
    const email = check.email("email", emailText);
    const passwordHash = await hashPassword(check.password("password", passwordText));
    return this.db.tx(async (tx) => {
      // Serialize concurrent bootstraps: only the first to commit makes an owner.
      await tx.query("LOCK TABLE memberships IN SHARE ROW EXCLUSIVE MODE");
      const { rows } = await tx.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM memberships WHERE role = 'owner'",
      );
      if (rows[0]!.n > 0)
        throw new FlotillaError(
          "auth.setup_closed",
          "setup is already complete; sign in with Login (flotilla login)",
        );
      const user = await this.insertUser(tx, email, displayName, passwordHash, null);
      const organization = await this.insertOrganization(tx, orgName, check.slugFrom(orgName));
      await tx.query(
        "INSERT INTO memberships (organization_id, user_id, role) VALUES ($1, $2, 'owner')",
        [organization.id, user.id],
      );
      await tx.query("UPDATE setup_state SET completed_at = now() WHERE singleton");
      await this.audit(tx, {
        organizationId: organization.id,
        actor: { type: "anonymous", id: null },
        action: "identity.bootstrap",
        target: { type: "user", id: user.id },
        details: { email: user.email, organization: organization.slug },
      });
      return { user, organization };
    });
  }

  private async insertUser(
    tx: Queryable,
    email: string,
    displayName: string,
    passwordHash: string,
    createdByOrganizationId: string | null,
  ): Promise<User> {
    try {
      const { rows } = await tx.query<{
        id: string;
        email: string;
        display_name: string;
        created_at: Date;
      }>(
        `INSERT INTO users (id, email, display_name, password_hash, created_by_organization_id)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING id, email, display_name, created_at`,
        [uuidv7(), email, displayName, passwordHash, createdByOrganizationId],
      );
      return toUser(rows[0]!);
    } catch (err) {
      if (isUniqueViolation(err)) {
        throw new FlotillaError(
          "resource.already_exists",
          `a user with email ${email} already exists`,
          { field: "email" },
        );
      }
      throw err;
    }
  }

  private async insertOrganization(
    tx: Queryable,
    name: string,
    slug: string,
  ): Promise<Organization> {
    try {
      const { rows } = await tx.query<{ id: string; slug: string; name: string; created_at: Date }>(
        "INSERT INTO organizations (id, slug, name) VALUES ($1, $2, $3) RETURNING id, slug, name, created_at",
        [uuidv7(), slug, name],
      );
      return toOrg(rows[0]!);
    } catch (err) {
      if (isUniqueViolation(err)) {
        throw new FlotillaError(
          "resource.already_exists",
          `an organization with slug ${slug} already exists`,
          { field: "slug" },
        );
      }
      throw err;
    }
  }

  // --- login and authentication ------------------------------------------------------------

  async login(input: {
    email: string;
    password: string;
    organizationSlug: string;
    remoteAddr: string;
  }) {
    const email = check.email("email", input.email);
    if (!input.password) throw invalid("password", "is required");
    if (input.password.length > 256) throw invalid("password", "must be at most 256 characters");
    const emailKey = email.toLowerCase();
    const remoteAddr = input.remoteAddr.slice(0, 64);
    // The attempt is a failed row before its password is checked, and its count includes it and
    // every attempt recorded before the count: of a burst of concurrent guesses, the last to
    // count among those let through saw all of them, so no more than the limit are checked.
    // (Recorded after checking, 40 guesses sent at once were all checked.)
    const { rows: attempts } = await this.db.query<{ id: string }>(
      "INSERT INTO login_attempts (email_key, remote_addr, succeeded) VALUES ($1, $2, false) RETURNING id",
      [emailKey, remoteAddr],
    );
    const attemptId = attempts[0]!.id;
    const { rows: counts } = await this.db.query<{ by_email: number; by_addr: number }>(
      `SELECT
         count(*) FILTER (WHERE email_key = $1)::int AS by_email,
         count(*) FILTER (WHERE remote_addr = $2)::int AS by_addr
       FROM login_attempts
       WHERE NOT succeeded AND attempted_at > now() - make_interval(secs => $3)
         AND (email_key = $1 OR remote_addr = $2)`,
      [emailKey, remoteAddr, this.loginLimits.windowSeconds],
    );
    const c = counts[0]!;
    // Counts include this attempt: the limit is reached when earlier failures number perEmail.
    if (c.by_email > this.loginLimits.perEmail || c.by_addr > this.loginLimits.perAddress) {
      // A refused attempt is not a failure: it does not extend the wait.
      await this.db.query("DELETE FROM login_attempts WHERE id = $1", [attemptId]);
      throw new FlotillaError(
        "auth.rate_limited",
        `too many failed sign-ins; try again in ${Math.ceil(this.loginLimits.windowSeconds / 60)} minutes`,
      );
    }
    const { rows } = await this.db.query<{
      id: string;
      password_hash: string;
      disabled_at: Date | null;
    }>("SELECT id, password_hash, disabled_at FROM users WHERE lower(email) = $1", [emailKey]);
    const user = rows[0];
    const ok = await verifyPassword(
      input.password,
      user?.password_hash ?? (await DUMMY_HASH_PROMISE),
    );
    const succeeded = Boolean(user && ok && !user.disabled_at);
    if (succeeded)
      await this.db.query("UPDATE login_attempts SET succeeded = true WHERE id = $1", [attemptId]);
    // Keep the table small: one attempt in a hundred sweeps rows older than a day.
    if (Math.random() < 0.01) {
      await this.db.query(
        "DELETE FROM login_attempts WHERE attempted_at < now() - interval '1 day'",
      );
    }
    if (!succeeded || !user)
      throw new FlotillaError("auth.invalid_credentials", "wrong email or password");

    const memberships = await this.db.query<PrincipalRow>(
      `SELECT ${PRINCIPAL_COLUMNS}
       FROM memberships m JOIN users u ON u.id = m.user_id JOIN organizations o ON o.id = m.organization_id
       WHERE m.user_id = $1 ORDER BY m.created_at, o.slug`,
      [user.id],
    );
    if (memberships.rows.length === 0) {
      throw new FlotillaError(
        "auth.permission_denied",
        "your account belongs to no organization; ask an admin to add you",
      );
    }
    const row = input.organizationSlug
      ? memberships.rows.find((r) => r.slug === input.organizationSlug)
      : memberships.rows[0];
    if (!row) throw notFound(`organization ${input.organizationSlug}`);
    const principal = toPrincipal(row, "session");
    const session = await this.sessions.mint(principal.user.id, principal.organization.id);
    await this.db.tx((tx) =>
      this.audit(tx, {
        organizationId: principal.organization.id,
        actor: { type: "user", id: principal.user.id },
        action: "identity.login",
        target: { type: "user", id: principal.user.id },
      }),
    );
    return { principal, session };
  }

  /** Resolves a bearer credential (API token or session token) to a principal, or null. */
  async authenticate(credential: string): Promise<Principal | null> {
    const known = this.principals.get(credential);
    if (known) return known;
    const generation = this.principals.generation;
    // Calls that miss together share one lookup: when a busy credential's entry lapses, 64
    // connections would otherwise each decrypt it and query (a stall every TTL, the p99 of
    // bench/whoami at a steady load). Only a lookup begun since the last change to who may do
    // what is joined: a call after a revocation never takes an answer read before it.
    // With the cache off (--auth-cache-ms 0), every call reads for itself.
    const inFlight = this.principals.enabled ? this.resolving.get(credential) : undefined;
    if (inFlight?.generation === generation) return inFlight.lookup;
    const lookup = this.resolve(credential, generation).finally(() => {
      if (this.resolving.get(credential)?.lookup === lookup) this.resolving.delete(credential);
    });
    this.resolving.set(credential, { generation, lookup });
    return lookup;
  }

  private async resolve(credential: string, generation: number): Promise<Principal | null> {
    const resolved = looksLikeApiToken(credential)
      ? await this.resolveApiToken(credential)
      : await this.resolveSession(credential);
    if (!resolved) return null;
    this.principals.set(credential, resolved.principal, generation, resolved.notAfter);
    return resolved.principal;
  }

  private async resolveSession(token: string): Promise<Resolved | null> {
    const claims = await this.sessions.open(token);
    if (!claims) return null;
    const { rows } = await this.db.query<PrincipalRow & { sessions_valid_after: Date }>(
      `SELECT ${PRINCIPAL_COLUMNS}, u.sessions_valid_after
       FROM memberships m JOIN users u ON u.id = m.user_id JOIN organizations o ON o.id = m.organization_id
       WHERE m.user_id = $1 AND m.organization_id = $2 AND u.disabled_at IS NULL`,
      [claims.userId, claims.organizationId],
    );
    const row = rows[0];
    // Token timestamps have one-second resolution; a session minted in the same second as a
    // "log out everywhere" counts as older.
    if (!row || claims.issuedAt.getTime() <= new Date(row.sessions_valid_after).getTime())
      return null;
    return { principal: toPrincipal(row, "session"), notAfter: claims.expiresAt.getTime() };
  }

  private async resolveApiToken(secret: string): Promise<Resolved | null> {
    const { rows } = await this.db.query<
      PrincipalRow & {
        token_id: string;
        last_used_at: Date | null;
        expires_at: Date | null;
        revoked_at: Date | null;
      }
    >(
      `SELECT ${PRINCIPAL_COLUMNS}, t.id AS token_id, t.last_used_at, t.expires_at, t.revoked_at
       FROM api_tokens t
       JOIN memberships m ON m.organization_id = t.organization_id AND m.user_id = t.user_id
       JOIN users u ON u.id = m.user_id JOIN organizations o ON o.id = m.organization_id
       WHERE t.token_hash = $1 AND u.disabled_at IS NULL`,
      [hashApiToken(secret)],
    );
    const row = rows[0];
    const now = Date.now();
    if (!row || row.revoked_at || (row.expires_at && row.expires_at.getTime() <= now)) return null;
    if (!row.last_used_at || now - row.last_used_at.getTime() > LAST_USED_RESOLUTION_MS) {
      await this.db.query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1", [
        row.token_id,
      ]);
    }
    return {
      principal: toPrincipal(row, "api_token", row.token_id),
      notAfter: row.expires_at ? row.expires_at.getTime() : Number.POSITIVE_INFINITY,
    };
  }

  async logout(p: Principal, everywhere: boolean): Promise<void> {
    return this.mutate(async () => {
      if (!everywhere) return; // the caller clears the cookie; a stateless session needs nothing more
      await this.db.tx(async (tx) => {
        await tx.query("UPDATE users SET sessions_valid_after = now() WHERE id = $1", [p.user.id]);
        await this.audit(tx, {
          organizationId: p.organization.id,
          actor: actorOf(p),
          action: "identity.logout_everywhere",
          target: { type: "user", id: p.user.id },
        });
      });
    });
  }

  capabilitiesOf(p: Principal): string[] {
    return ROLE_CAPABILITY_LIST[p.role].slice();
  }

  async listMyOrganizations(
    p: Principal,
  ): Promise<Array<{ organization: Organization; role: RoleName }>> {
    const { rows } = await this.db.query<PrincipalRow>(
      `SELECT ${PRINCIPAL_COLUMNS}
       FROM memberships m JOIN users u ON u.id = m.user_id JOIN organizations o ON o.id = m.organization_id
       WHERE m.user_id = $1 ORDER BY o.slug`,
      [p.user.id],
    );
    return rows.map((r) => ({ organization: toOrg(r), role: r.role }));
  }

  // --- API tokens ----------------------------------------------------------------------------

  async createApiToken(
    p: Principal,
    nameText: string,
    ttlSeconds: number,
  ): Promise<{ token: ApiToken; secret: string }> {
    require(p, "tokens.self");
    const name = check.name("name", nameText);
    // 0 means no expiry; otherwise between a minute and ten years.
    if (
      !Number.isInteger(ttlSeconds) ||
      ttlSeconds < 0 ||
      (ttlSeconds > 0 && ttlSeconds < 60) ||
      ttlSeconds > 315_360_000
    ) {
      throw invalid("ttl_seconds", "must be 0 (never expires) or between 60 and 315360000");
    }
    const generated = generateApiToken();
    return this.db.tx(async (tx) => {
      const { rows } = await tx.query<TokenRow>(
        `INSERT INTO api_tokens (id, organization_id, user_id, name, token_hash, prefix, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $7::int > 0 THEN now() + make_interval(secs => $7::int) END)
         RETURNING id, name, prefix, created_at, last_used_at, expires_at, revoked_at`,
        [
          uuidv7(),
          p.organization.id,
          p.user.id,
          name,
          generated.hash,
          generated.prefix,
          ttlSeconds,
        ],
      );
      const token = toToken(rows[0]!);
      await this.audit(tx, {
        organizationId: p.organization.id,
        actor: actorOf(p),
        action: "identity.api_token.create",
        target: { type: "api_token", id: token.id },
        details: { name, prefix: token.prefix, expires_at: token.expiresAt?.toISOString() ?? null },
      });
      return { token, secret: generated.secret };
    });
  }

  async listApiTokens(p: Principal): Promise<ApiToken[]> {
    require(p, "tokens.self");
    const { rows } = await this.db.query<TokenRow>(
      `SELECT id, name, prefix, created_at, last_used_at, expires_at, revoked_at FROM api_tokens
       WHERE organization_id = $1 AND user_id = $2 ORDER BY created_at DESC`,
      [p.organization.id, p.user.id],
    );
    return rows.map(toToken);
  }

  async revokeApiToken(p: Principal, idText: string): Promise<ApiToken> {
    return this.mutate(async () => {
      require(p, "tokens.self");
      const id = check.id("id", idText);
      return this.db.tx(async (tx) => {
        // Own tokens, or anyone's in this organization with members.manage. Revoking twice is a no-op.
        const { rows } = await tx.query<TokenRow>(
          `UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
         WHERE id = $1 AND organization_id = $2 AND (user_id = $3 OR $4)
         RETURNING id, name, prefix, created_at, last_used_at, expires_at, revoked_at`,
          [id, p.organization.id, p.user.id, hasCapability(p.role, "members.manage")],
        );
        if (!rows[0]) throw notFound(`API token ${id}`);
        const token = toToken(rows[0]);
        await this.audit(tx, {
          organizationId: p.organization.id,
          actor: actorOf(p),
          action: "identity.api_token.revoke",
          target: { type: "api_token", id },
          details: { name: token.name, prefix: token.prefix },
        });
        return token;
      });
    });
  }

  // --- organizations and members ----------------------------------------------------------------

  async createOrganization(
    p: Principal,
    nameText: string,
    slugText: string,
  ): Promise<Organization> {
    const name = check.name("name", nameText);
    const slug = slugText ? check.slug("slug", slugText) : check.slugFrom(name);
    return this.db.tx(async (tx) => {
      const organization = await this.insertOrganization(tx, name, slug);
      await tx.query(
        "INSERT INTO memberships (organization_id, user_id, role) VALUES ($1, $2, 'owner')",
        [organization.id, p.user.id],
      );
      await this.audit(tx, {
        organizationId: organization.id,
        actor: actorOf(p),
        action: "identity.organization.create",
        target: { type: "organization", id: organization.id },
        details: { slug, name },
      });
      return organization;
    });
  }

  async getOrganization(p: Principal): Promise<Organization> {
    require(p, "org.read");
    const { rows } = await this.db.query<{
      id: string;
      slug: string;
      name: string;
      created_at: Date;
    }>("SELECT id, slug, name, created_at FROM organizations WHERE id = $1", [p.organization.id]);
    if (!rows[0]) throw notFound("organization");
    return toOrg(rows[0]);
  }

  async updateOrganization(p: Principal, nameText: string): Promise<Organization> {
    return this.mutate(async () => {
      require(p, "org.update");
      const name = check.name("name", nameText);
      return this.db.tx(async (tx) => {
        const { rows } = await tx.query<{
          id: string;
          slug: string;
          name: string;
          created_at: Date;
        }>(
          "UPDATE organizations SET name = $2 WHERE id = $1 RETURNING id, slug, name, created_at",
          [p.organization.id, name],
        );
        if (!rows[0]) throw notFound("organization");
        await this.audit(tx, {
          organizationId: p.organization.id,
          actor: actorOf(p),
          action: "identity.organization.update",
          target: { type: "organization", id: p.organization.id },
          details: { name },
        });
        return toOrg(rows[0]);
      });
    });
  }

  async listMembers(p: Principal): Promise<Member[]> {
    require(p, "members.read");
    const { rows } = await this.db.query<{
      id: string;
      email: string;
      display_name: string;
      created_at: Date;
      role: RoleName;
      joined_at: Date;
    }>(
      `SELECT u.id, u.email, u.display_name, u.created_at, m.role, m.created_at AS joined_at
       FROM memberships m JOIN users u ON u.id = m.user_id
       WHERE m.organization_id = $1 ORDER BY m.created_at, u.email`,
      [p.organization.id],
    );
    return rows.map((r) => ({ user: toUser(r), role: r.role, joinedAt: r.joined_at }));
  }

  async addMember(
    p: Principal,
    input: {
      email: string;
      role: RoleName | undefined;
      displayName: string;
      initialPassword: string;
    },
  ): Promise<Member> {
    return this.mutate(async () => {
      require(p, "members.manage");
      const email = check.email("email", input.email);
      const role = this.checkGrantable(p, input.role);
      const displayName = check.name("display_name", input.displayName, { required: false });
      const existing = await this.db.query<{ id: string; created_by: string | null }>(
        "SELECT id, created_by_organization_id AS created_by FROM users WHERE lower(email) = lower($1)",
        [email],
      );
      const account = existing.rows[0];
      if (account) {
        // Another organization's owner made this account and knows its password: adding it
        // would let them sign in here as this member.
        if (account.created_by !== null && account.created_by !== p.organization.id) {
          throw new FlotillaError(
            "membership.account_held_elsewhere",
            `email: ${email} has an account made by another organization, which set its password; it cannot join this one. Ask for another email address`,
            { field: "email" },
          );
        }
        // The caller means to make an account; saying nothing would leave them believing their
        // password signs it in.
        if (input.initialPassword) {
          throw invalid(
            "initial_password",
            "must be empty: this email already has an account, which keeps its own password",
          );
        }
      }
      const passwordHash = account
        ? null
        : input.initialPassword
          ? await hashPassword(check.password("initial_password", input.initialPassword))
          : null;
      if (!account && !passwordHash) {
        throw invalid("initial_password", "is required when the email belongs to no user yet");
      }
      return this.db.tx(async (tx) => {
        const user = account
          ? await this.userById(tx, account.id)
          : await this.insertUser(tx, email, displayName, passwordHash!, p.organization.id);
        let joinedAt: Date;
        try {
          const { rows } = await tx.query<{ created_at: Date }>(
            "INSERT INTO memberships (organization_id, user_id, role) VALUES ($1, $2, $3) RETURNING created_at",
            [p.organization.id, user.id, role],
          );
          joinedAt = rows[0]!.created_at;
        } catch (err) {
          if (isUniqueViolation(err)) {
            throw new FlotillaError("resource.already_exists", `${email} is already a member`, {
              field: "email",
            });
          }
          throw err;
        }
        await this.audit(tx, {
          organizationId: p.organization.id,
          actor: actorOf(p),
          action: "identity.member.add",
          target: { type: "user", id: user.id },
          details: { email: user.email, role, created_user: !existing.rows[0] },
        });
        return { user, role, joinedAt };
      });
    });
  }

  async updateMemberRole(
    p: Principal,
    userIdText: string,
    roleInput: RoleName | undefined,
  ): Promise<Member> {
    return this.mutate(async () => {
      require(p, "members.manage");
      const userId = check.id("user_id", userIdText);
      const role = this.checkGrantable(p, roleInput);
      return this.db.tx(async (tx) => {
        const current = await this.lockMembership(tx, p.organization.id, userId);
        // Only an owner may change an owner's role.
        if (current.role === "owner" && !hasCapability(p.role, "members.grant_owner")) {
          throw new FlotillaError(
            "auth.permission_denied",
            "only an owner can change an owner's role",
          );
        }
        if (current.role === "owner" && role !== "owner")
          await this.assertAnotherOwner(tx, p.organization.id);
        const { rows } = await tx.query<{ created_at: Date }>(
          "UPDATE memberships SET role = $3 WHERE organization_id = $1 AND user_id = $2 RETURNING created_at",
          [p.organization.id, userId, role],
        );
        await this.audit(tx, {
          organizationId: p.organization.id,
          actor: actorOf(p),
          action: "identity.member.update_role",
          target: { type: "user", id: userId },
          details: { from: current.role, to: role },
        });
        return { user: await this.userById(tx, userId), role, joinedAt: rows[0]!.created_at };
      });
    });
  }

  async removeMember(p: Principal, userIdText: string): Promise<void> {
    return this.mutate(async () => {
      require(p, "members.manage");
      const userId = check.id("user_id", userIdText);
      await this.db.tx(async (tx) => {
        const current = await this.lockMembership(tx, p.organization.id, userId);
        if (current.role === "owner") {
          if (!hasCapability(p.role, "members.grant_owner")) {
            throw new FlotillaError("auth.permission_denied", "only an owner can remove an owner");
          }
          await this.assertAnotherOwner(tx, p.organization.id);
        }
        await tx.query("DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2", [
          p.organization.id,
          userId,
        ]);
        await this.audit(tx, {
          organizationId: p.organization.id,
          actor: actorOf(p),
          action: "identity.member.remove",
          target: { type: "user", id: userId },
          details: { role: current.role },
        });
      });
    });
  }

  private checkGrantable(p: Principal, role: RoleName | undefined): RoleName {
    if (!role || !ROLES.includes(role)) throw invalid("role", `must be one of ${ROLES.join(", ")}`);
    if (role === "owner" && !hasCapability(p.role, "members.grant_owner")) {
      throw new FlotillaError("auth.permission_denied", "only an owner can grant the owner role");
    }
    return role;
  }

  private async lockMembership(
    tx: Queryable,
    organizationId: string,
    userId: string,
  ): Promise<{ role: RoleName }> {
    // Locking the organization row serializes role changes, so two concurrent demotions cannot
    // both see "another owner exists" and leave none.
    await tx.query("SELECT id FROM organizations WHERE id = $1 FOR UPDATE", [organizationId]);
    const { rows } = await tx.query<{ role: RoleName }>(
      "SELECT role FROM memberships WHERE organization_id = $1 AND user_id = $2",
      [organizationId, userId],
    );
    if (!rows[0]) throw notFound(`member ${userId}`);
    return rows[0];
  }

  private async assertAnotherOwner(tx: Queryable, organizationId: string): Promise<void> {
    const { rows } = await tx.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM memberships WHERE organization_id = $1 AND role = 'owner'",
      [organizationId],
    );
    if (rows[0]!.n <= 1) {
      throw new FlotillaError(
        "membership.last_owner",
        "the organization must keep at least one owner; promote another member first",
      );
    }
  }

  private async userById(tx: Queryable, id: string): Promise<User> {
    const { rows } = await tx.query<{
      id: string;
      email: string;
      display_name: string;
      created_at: Date;
    }>("SELECT id, email, display_name, created_at FROM users WHERE id = $1", [id]);
    if (!rows[0]) throw notFound(`user ${id}`);
    return toUser(rows[0]);
  }
}
