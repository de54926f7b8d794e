// What every handler needs from its context: the authenticated principal, its Caller, timestamps.
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext } from "@connectrpc/connect";
import { type Caller, FlotillaError } from "../../shared/index.js";
import { actorOf, type Principal } from "../identity/index.js";
import { kPrincipal } from "./authz.js";

export function principal(ctx: HandlerContext): Principal {
  const p = ctx.values.get(kPrincipal);
  // The interceptor sets it for every non-public RPC; reaching here without one is a bug in the rules.
  if (!p) throw new FlotillaError("auth.unauthenticated", "sign in first");
  return p;
}

/** The caller of a domain operation: the principal's organization and the acting user or token. */
export function caller(ctx: HandlerContext): Caller {
  const p = principal(ctx);
  const actor = actorOf(p);
  return {
    organizationId: p.organization.id,
    actor: { type: actor.type === "token" ? "token" : "user", id: actor.id ?? p.user.id },
  };
}

export const ts = (d: Date | null | undefined) => (d ? timestampFromDate(new Date(d)) : undefined);
