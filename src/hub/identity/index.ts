// Public entry of the identity module: who is calling, in which organization, with which role.
export type { AuditEntry, AuditRecorder } from "./ports.js";
export { CAPABILITIES, type Capability, hasCapability, ROLES, type RoleName } from "./roles.js";
export {
  type ApiToken,
  actorOf,
  DEFAULT_LOGIN_LIMITS,
  DEFAULT_PRINCIPAL_CACHE_MS,
  IdentityService,
  type LoginLimits,
  type Member,
  type Organization,
  PRINCIPALS_CHANNEL,
  type Principal,
  require as requireCapability,
  type Session,
  type User,
} from "./service.js";
export {
  clearSessionCookie,
  deriveKey,
  readCookie,
  SESSION_COOKIE,
  SessionCodec,
  sessionCookie,
} from "./sessions.js";
export { API_TOKEN_PREFIX } from "./tokens.js";
