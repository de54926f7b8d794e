// Roles and the named capabilities each grants; authorization checks capabilities, never roles.

export const ROLES = ["owner", "admin", "developer", "viewer"] as const;
export type RoleName = (typeof ROLES)[number];

export const CAPABILITIES = {
  "org.read": "See the organization and its members.",
  "org.update": "Rename the organization.",
  "members.read": "List members and their roles.",
  "members.manage": "Add, remove and change the role of members (granting owner needs owner).",
  "members.grant_owner": "Make another member an owner.",
  "audit.read": "Read the audit log.",
  "tokens.self": "Create, list and revoke one's own API tokens.",
  "config.reveal": "Reveal a secret config value (audited).",
} as const;
export type Capability = keyof typeof CAPABILITIES;

const VIEWER: Capability[] = ["org.read", "members.read", "tokens.self"];
const DEVELOPER: Capability[] = [...VIEWER];
const ADMIN: Capability[] = [...DEVELOPER, "members.manage", "audit.read", "config.reveal"];
const OWNER: Capability[] = [...ADMIN, "org.update", "members.grant_owner"];

export const ROLE_CAPABILITIES: Record<RoleName, ReadonlySet<Capability>> = {
  owner: new Set(OWNER),
  admin: new Set(ADMIN),
  developer: new Set(DEVELOPER),
  viewer: new Set(VIEWER),
};

export function hasCapability(role: RoleName, capability: Capability): boolean {
  return ROLE_CAPABILITIES[role].has(capability);
}
