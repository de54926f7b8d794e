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
  "projects.read": "See projects, environments, services, deployments and their events.",
  "projects.write": "Create, rename and delete projects and environments.",
  "services.write": "Create, change and delete services.",
  "deployments.create": "Deploy and roll back services.",
  "config.read": "See config variables' values and secrets' names.",
  "config.write": "Set, import and unset config variables and secrets.",
  "config.reveal": "Reveal a secret config value (audited).",
  "servers.read": "See servers and their dispatches.",
  "logs.read": "Read services' output (it may hold what an application prints).",
  "jobs.run": "Run one-off commands in a service's context, with its config.",
  "servers.manage": "Enrol servers (join tokens) and remove them.",
  "events.read": "See events the backbone's consumers quarantined (poison messages).",
  "events.replay": "Replay a quarantined event through its consumer.",
  "webhooks.read": "See webhook endpoints and their deliveries.",
  "webhooks.manage": "Add and remove webhook endpoints (receives the signing secret once).",
  "dataplanes.read": "See data planes, their private links and what the controller observed.",
  "dataplanes.manage": "Create data planes.",
  ModifyDataPlanePrivateNetworking: "Add, change and remove a data plane's private links.",
  "databases.manage":
    "Create managed databases, restore their backups (destructive) and set their backup schedules.",
} as const;
export type Capability = keyof typeof CAPABILITIES;

const VIEWER: Capability[] = [
  "org.read",
  "members.read",
  "tokens.self",
  "projects.read",
  "config.read",
  "servers.read",
  "dataplanes.read",
];
const DEVELOPER: Capability[] = [
  ...VIEWER,
  "projects.write",
  "services.write",
  "deployments.create",
  "config.write",
  "logs.read",
  "jobs.run",
  "events.read",
  "webhooks.read",
];
const ADMIN: Capability[] = [
  ...DEVELOPER,
  "members.manage",
  "audit.read",
  "config.reveal",
  "servers.manage",
  "events.replay",
  "webhooks.manage",
  "dataplanes.manage",
  "ModifyDataPlanePrivateNetworking",
  "databases.manage",
];
const OWNER: Capability[] = [...ADMIN, "org.update", "members.grant_owner"];

export const ROLE_CAPABILITIES: Record<RoleName, ReadonlySet<Capability>> = {
  owner: new Set(OWNER),
  admin: new Set(ADMIN),
  developer: new Set(DEVELOPER),
  viewer: new Set(VIEWER),
};

/** Each role's capabilities in sorted order, as WhoAmI lists them (sorted once, not per call). */
export const ROLE_CAPABILITY_LIST: Record<RoleName, readonly Capability[]> = {
  owner: [...ROLE_CAPABILITIES.owner].sort(),
  admin: [...ROLE_CAPABILITIES.admin].sort(),
  developer: [...ROLE_CAPABILITIES.developer].sort(),
  viewer: [...ROLE_CAPABILITIES.viewer].sort(),
};

export function hasCapability(role: RoleName, capability: Capability): boolean {
  return ROLE_CAPABILITIES[role].has(capability);
}
