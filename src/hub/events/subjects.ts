// NATS subject builders for events: `<root>.<tenant>.<domain>.<type>.<id>`, never concatenated at call sites.
import { FlotillaError } from "../../shared/index.js";

/** The default subject root; an installation sharing a NATS account with another picks its own. */
export const DEFAULT_SUBJECT_ROOT = "flotilla";

// A subject token may hold anything but whitespace, '.', '*' and '>' (the separators and
// wildcards); '%' is escaped too so the encoding is reversible.
const UNSAFE_TOKEN = /[\s.*>%]/gu;

/** One subject token from arbitrary text: unsafe characters percent-encoded, never empty. */
export function subjectToken(value: string): string {
  if (value === "") return "_";
  return value.replace(UNSAFE_TOKEN, (c) =>
    [...Buffer.from(c, "utf8")]
      .map((b) => `%${b.toString(16).toUpperCase().padStart(2, "0")}`)
      .join(""),
  );
}

const ROOT = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;

/** Checks a subject root (one or more dot-separated tokens of letters, digits, '-' and '_'). */
export function checkSubjectRoot(root: string): string {
  if (!ROOT.test(root) || root.length > 64)
    throw new FlotillaError(
      "config.invalid",
      `the NATS subject root ${JSON.stringify(root.slice(0, 80))} must be dot-separated tokens of letters, digits, '-' and '_' (at most 64 characters)`,
      { field: "nats_subject_root" },
    );
  return root;
}

export interface EventSubjectParts {
  tenant: string;
  /** domain.fact[.more], e.g. deployment.succeeded: the first part is the domain. */
  eventType: string;
  subjectId: string;
}

/**
 * The subject of one event. Event types with more than two parts (a.b.c) keep five tokens by
 * joining the fact parts with '-', which event types never contain, so wildcards stay positional.
 */
export function eventSubject(root: string, e: EventSubjectParts): string {
  const [domain, ...fact] = e.eventType.split(".");
  return [
    root,
    subjectToken(e.tenant),
    subjectToken(domain ?? ""),
    subjectToken(fact.join("-")),
    subjectToken(e.subjectId),
  ].join(".");
}

/** Every event of every tenant under the root: what the events stream captures. */
export function allEventsSubject(root: string): string {
  return `${root}.>`;
}

/** Every event of one domain (deployment, database, ...) of every tenant. */
export function domainEventsSubject(root: string, domain: string): string {
  return `${root}.*.${subjectToken(domain)}.>`;
}
