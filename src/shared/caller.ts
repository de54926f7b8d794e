// The caller of a domain operation: organization and actor, built by the API layer from the principal.

export interface Caller {
  organizationId: string;
  actor: { type: "user" | "token"; id: string };
}

/** "user:<id>" or "token:<id>", for created_by columns. */
export function actorLabel(caller: Caller): string {
  return `${caller.actor.type}:${caller.actor.id}`;
}
