// Connect handlers for IdentityService and OrganizationService: proto in, domain call, proto out.
import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import {
  AuthMethod,
  IdentityService as IdentityRpc,
  OrganizationService as OrganizationRpc,
  Role,
} from "../../gen/flotilla/v1/identity_pb.js";
import type { Db } from "../../store/index.js";
import { listAudit } from "../audit/index.js";
import {
  type ApiToken,
  clearSessionCookie,
  type IdentityService,
  type Member,
  type Organization,
  type RoleName,
  type Session,
  sessionCookie,
  type User,
} from "../identity/index.js";
import { kRemoteAddr } from "./authz.js";
import { principal, ts } from "./handler-context.js";

const ROLE_TO_PROTO: Record<RoleName, Role> = {
  owner: Role.OWNER,
  admin: Role.ADMIN,
  developer: Role.DEVELOPER,
  viewer: Role.VIEWER,
};
const PROTO_TO_ROLE = new Map<Role, RoleName>(
  Object.entries(ROLE_TO_PROTO).map(([k, v]) => [v, k as RoleName]),
);

const user = (u: User) => ({
  id: u.id,
  email: u.email,
  displayName: u.displayName,
  createdAt: ts(u.createdAt),
});
const org = (o: Organization) => ({
  id: o.id,
  slug: o.slug,
  name: o.name,
  createdAt: ts(o.createdAt),
});
const member = (m: Member) => ({
  user: user(m.user),
  role: ROLE_TO_PROTO[m.role],
  joinedAt: ts(m.joinedAt),
});
const token = (t: ApiToken) => ({
  id: t.id,
  name: t.name,
  prefix: t.prefix,
  createdAt: ts(t.createdAt),
  lastUsedAt: ts(t.lastUsedAt),
  expiresAt: ts(t.expiresAt),
  revokedAt: ts(t.revokedAt),
});

export interface IdentityRouteOptions {
  db: Db;
  identity: IdentityService;
  /** Mark cookies Secure (the hub is served over TLS). */
  secureCookies: boolean;
}

export function identityRoutes(
  router: ConnectRouter,
  { db, identity, secureCookies }: IdentityRouteOptions,
): void {
  const setSession = (ctx: HandlerContext, s: Session) =>
    ctx.responseHeader.append("set-cookie", sessionCookie(s.token, s.expiresAt, secureCookies));

  router.service(IdentityRpc, {
    async getSetupStatus() {
      return { setupRequired: await identity.setupRequired() };
    },
    async bootstrap(req, ctx) {
      const r = await identity.bootstrap({
        setupToken: req.setupToken,
        email: req.email,
        password: req.password,
        displayName: req.displayName,
        organizationName: req.organizationName,
      });
      setSession(ctx, r.session);
      return {
        user: user(r.user),
        organization: org(r.organization),
        sessionToken: r.session.token,
        expiresAt: ts(r.session.expiresAt),
      };
    },
    async login(req, ctx) {
      const r = await identity.login({
        email: req.email,
        password: req.password,
        organizationSlug: req.organizationSlug,
        remoteAddr: ctx.values.get(kRemoteAddr),
      });
      setSession(ctx, r.session);
      return {
        user: user(r.principal.user),
        organization: org(r.principal.organization),
        role: ROLE_TO_PROTO[r.principal.role],
        sessionToken: r.session.token,
        expiresAt: ts(r.session.expiresAt),
      };
    },
    async logout(req, ctx) {
      await identity.logout(principal(ctx), req.everywhere);
      ctx.responseHeader.append("set-cookie", clearSessionCookie(secureCookies));
      return {};
    },
    async whoAmI(_req, ctx) {
      const p = principal(ctx);
      return {
        user: user(p.user),
        organization: org(p.organization),
        role: ROLE_TO_PROTO[p.role],
        capabilities: identity.capabilitiesOf(p),
        authMethod: p.method === "api_token" ? AuthMethod.API_TOKEN : AuthMethod.SESSION,
        apiTokenId: p.tokenId ?? "",
      };
    },
    async listMyOrganizations(_req, ctx) {
      const list = await identity.listMyOrganizations(principal(ctx));
      return {
        memberships: list.map((m) => ({
          organization: org(m.organization),
          role: ROLE_TO_PROTO[m.role],
        })),
      };
    },
    async createApiToken(req, ctx) {
      const r = await identity.createApiToken(principal(ctx), req.name, Number(req.ttlSeconds));
      return { token: token(r.token), secret: r.secret };
    },
    async listApiTokens(_req, ctx) {
      return { tokens: (await identity.listApiTokens(principal(ctx))).map(token) };
    },
    async revokeApiToken(req, ctx) {
      return { token: token(await identity.revokeApiToken(principal(ctx), req.id)) };
    },
  });

  router.service(OrganizationRpc, {
    async createOrganization(req, ctx) {
      return {
        organization: org(await identity.createOrganization(principal(ctx), req.name, req.slug)),
      };
    },
    async getOrganization(_req, ctx) {
      return { organization: org(await identity.getOrganization(principal(ctx))) };
    },
    async updateOrganization(req, ctx) {
      return { organization: org(await identity.updateOrganization(principal(ctx), req.name)) };
    },
    async listMembers(_req, ctx) {
      return { members: (await identity.listMembers(principal(ctx))).map(member) };
    },
    async addMember(req, ctx) {
      const m = await identity.addMember(principal(ctx), {
        email: req.email,
        role: PROTO_TO_ROLE.get(req.role),
        displayName: req.displayName,
        initialPassword: req.initialPassword,
      });
      return { member: member(m) };
    },
    async updateMemberRole(req, ctx) {
      return {
        member: member(
          await identity.updateMemberRole(principal(ctx), req.userId, PROTO_TO_ROLE.get(req.role)),
        ),
      };
    },
    async removeMember(req, ctx) {
      await identity.removeMember(principal(ctx), req.userId);
      return {};
    },
    async listAuditEvents(req, ctx) {
      const events = await listAudit(db, principal(ctx).organization.id, {
        limit: req.limit,
        beforeId: req.beforeId,
      });
      return {
        events: events.map((e) => ({
          id: e.id,
          actorType: e.actorType,
          actorId: e.actorId ?? "",
          action: e.action,
          targetType: e.targetType ?? "",
          targetId: e.targetId ?? "",
          correlationId: e.correlationId,
          traceparent: e.traceparent,
          detailsJson: JSON.stringify(e.details),
          createdAt: ts(e.createdAt),
        })),
      };
    },
  });
}
