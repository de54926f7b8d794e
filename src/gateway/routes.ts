// The gateway's in-memory config: API deployments compiled into routes one at a time (an invalid
// one fails alone), and the route table rebuilt off the hot path, coalesced, swapped atomically.

import type { StatusReport } from "../shared/index.js";
import {
  type ApiKindName,
  checkDefinition,
  checkHttpUrl,
  type DeploymentContent,
  type LlmProviderDefinition,
  type LlmProxyDefinition,
  type Operation,
  type RestApiDefinition,
} from "../shared/index.js";
import type { StoredRow } from "./store.js";

export interface Upstream {
  /** scheme://host:port, the key of its connection pool. */
  origin: string;
  /** The upstream's base path ("" or /v1). */
  basePath: string;
  timeoutMs: number;
}

interface RouteBase {
  apiId: string;
  deploymentId: string;
  deployedAt: number;
  name: string;
  /** The path prefix: context path (and version). */
  prefix: string;
  hosts: string[] | null;
}

export interface RestRoute extends RouteBase {
  kind: "RestApi";
  upstream: Upstream;
  operations: Array<{ method: string; pattern: RegExp }> | null;
}

export interface LlmProviderRoute extends RouteBase {
  kind: "LlmProvider";
  upstream: Upstream;
  credential: string;
  models: Set<string>;
}

export interface LlmProxyRoute extends RouteBase {
  kind: "LlmProxy";
  upstream: Upstream;
  credential: string;
  models: Set<string>;
  keyHashes: Set<string>;
  /** Token bucket per consumer key: capacity and refill per millisecond. */
  bucket: { capacity: number; perMs: number };
}

/** A PUBLIC service's route: any path on its hostnames, to the endpoint its agent reports. */
export interface ServiceRoute extends RouteBase {
  kind: "ServiceRoute";
  upstream: Upstream;
}

export type Route = RestRoute | LlmProviderRoute | LlmProxyRoute | ServiceRoute;

const DEFAULT_TIMEOUT_MS = 30_000;

// 10,000 routes often share a handful of upstreams: parse each URL once.
const upstreamCache = new Map<string, Upstream>();

function upstreamOf(url: string, timeoutMs: number | undefined): Upstream {
  const key = `${timeoutMs ?? ""} ${url}`;
  const cached = upstreamCache.get(key);
  if (cached) return cached;
  if (upstreamCache.size > 10_000) upstreamCache.clear();
  const u = new URL(url);
  const upstream = {
    origin: u.origin,
    basePath: u.pathname === "/" ? "" : u.pathname.replace(/\/+$/, ""),
    timeoutMs: timeoutMs ?? DEFAULT_TIMEOUT_MS,
  };
  upstreamCache.set(key, upstream);
  return upstream;
}

function operationPattern(op: Operation): { method: string; pattern: RegExp } {
  const escaped = op.path
    .split("/")
    .map((seg) => {
      if (seg === "*") return ".*";
      if (/^\{[^/]+\}$/.test(seg)) return "[^/]+";
      return seg.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    })
    .join("/");
  return { method: op.method, pattern: new RegExp(`^${escaped === "" ? "/?" : escaped}$`) };
}

/** Compiles one deployment's content into a route; throws with a reason a person can act on. */
export function compileRoute(row: StoredRow): Route {
  if (!row.content) throw new Error("content has not been fetched yet");
  let c: DeploymentContent;
  try {
    c = JSON.parse(row.content) as DeploymentContent;
  } catch {
    throw new Error("content is not valid JSON");
  }
  if (c.deploymentId !== row.deploymentId || c.apiId !== row.apiId)
    throw new Error("content belongs to another deployment");
  if (c.kind === "ServiceRoute") {
    const d = c.definition as { hosts?: unknown; upstreamUrl?: unknown };
    const hosts = Array.isArray(d.hosts)
      ? d.hosts.filter((h): h is string => typeof h === "string")
      : [];
    if (hosts.length === 0) throw new Error("a service route needs at least one hostname");
    return {
      apiId: row.apiId,
      deploymentId: row.deploymentId,
      deployedAt: row.deployedAt,
      name: c.name,
      hosts: hosts.map((h) => h.toLowerCase()),
      kind: "ServiceRoute",
      prefix: "",
      upstream: upstreamOf(checkHttpUrl("upstreamUrl", d.upstreamUrl), undefined),
    };
  }
  const kind = c.kind as ApiKindName;
  const def = checkDefinition(kind, c.definition);
  const base = {
    apiId: row.apiId,
    deploymentId: row.deploymentId,
    deployedAt: row.deployedAt,
    name: c.name,
    hosts: (def as { hosts?: string[] }).hosts ?? null,
  };
  if (kind === "RestApi") {
    const d = def as RestApiDefinition;
    const url = "url" in d.upstream ? d.upstream.url : c.resolvedUpstreamUrl;
    if (!url) throw new Error("the upstream service has no reported endpoint yet");
    return {
      ...base,
      kind,
      prefix: d.version ? `${d.contextPath}/${d.version}` : d.contextPath,
      upstream: upstreamOf(url, d.timeoutMs),
      operations: d.operations?.length ? d.operations.map(operationPattern) : null,
    };
  }
  if (kind === "LlmProvider") {
    const d = def as LlmProviderDefinition;
    if (!c.credential) throw new Error("the provider's credential is missing");
    return {
      ...base,
      kind,
      prefix: d.contextPath,
      upstream: upstreamOf(d.upstreamUrl, d.timeoutMs),
      credential: c.credential,
      models: new Set(d.models),
    };
  }
  const d = def as LlmProxyDefinition;
  if (!c.provider) throw new Error("the proxy's provider is missing or has no credential");
  const capacity = d.rateLimit.burst ?? d.rateLimit.requestsPerMinute;
  return {
    ...base,
    kind: "LlmProxy",
    prefix: d.contextPath,
    upstream: upstreamOf(c.provider.upstreamUrl, c.provider.timeoutMs),
    credential: c.provider.credential,
    models: new Set(c.provider.models),
    keyHashes: new Set(c.consumerKeyHashes ?? []),
    bucket: { capacity, perMs: d.rateLimit.requestsPerMinute / 60_000 },
  };
}

const fitsHost = (r: Route, host: string) => r.hosts === null || r.hosts.includes(host);

/**
 * Where `code` last occurs in `s`, or -1: String#lastIndexOf leaves optimized code for a C++
 * builtin (~300 instructions a call in the fast path's callgrind count), where this loop over a
 * host or a path of a few dozen characters is cheaper.
 */
export function lastIndexOfCode(s: string, code: number): number {
  let i = s.length - 1;
  while (i >= 0 && s.charCodeAt(i) !== code) i--;
  return i;
}

/** A Host header's host, lowercased, without its port (an IPv6 literal keeps its brackets). */
export function hostOf(hostHeader: string): string {
  const colon = lastIndexOfCode(hostHeader, 58); // ":"
  return (
    colon > 0 && !hostHeader.endsWith("]") ? hostHeader.slice(0, colon) : hostHeader
  ).toLowerCase();
}

/** Routes by path prefix (whole segments), then host: exact hosts before any-host routes. */
export class RouteTable {
  /**
   * A prefix most often has one route, held as is; an array only where several share it (a
   * table per 1,000 routes of a full sync: an array per entry was a third of its garbage).
   */
  private readonly byPrefix = new Map<string, Route | Route[]>();
  readonly size: number;
  /**
   * Routes no request can reach: an earlier route of the same prefix takes every host they
   * name (two APIs with one context path). Each maps to a route that takes its requests.
   */
  readonly shadowed = new Map<Route, Route>();

  constructor(routes: Iterable<Route>) {
    let n = 0;
    for (const r of routes) {
      const held = this.byPrefix.get(r.prefix);
      if (held === undefined) this.byPrefix.set(r.prefix, r);
      else if (Array.isArray(held)) held.push(r);
      else this.byPrefix.set(r.prefix, [held, r]);
      n++;
    }
    // Deterministic on every gateway: routes naming hosts first (the more specific), then by API
    // id. API ids are UUIDv7: of two routes alike, the API created first keeps serving, also
    // after it is redeployed (a deployment id is new at every deploy).
    for (const held of this.byPrefix.values())
      if (Array.isArray(held)) {
        held.sort(
          (a, b) =>
            Number(b.hosts !== null) - Number(a.hosts !== null) ||
            (a.apiId < b.apiId ? -1 : a.apiId > b.apiId ? 1 : 0),
        );
        this.findShadowed(held);
      }
    this.size = n;
  }

  /** Routes of one prefix, in match order: each whose hosts the earlier ones all take. */
  private findShadowed(held: Route[]): void {
    const taken = new Map<string, Route>();
    let anyHost: Route | undefined;
    for (const r of held) {
      const by =
        anyHost ?? (r.hosts?.every((h) => taken.has(h)) ? taken.get(r.hosts[0]!) : undefined);
      if (by) this.shadowed.set(r, by);
      if (r.hosts === null) anyHost ??= r;
      else for (const h of r.hosts) if (!taken.has(h)) taken.set(h, r);
    }
  }

  /** Longest matching prefix first; each probe is one map lookup (O(path segments)). */
  match(host: string, path: string): Route | undefined {
    let candidate = path;
    for (;;) {
      const held = this.byPrefix.get(candidate);
      if (held !== undefined) {
        if (!Array.isArray(held)) {
          if (fitsHost(held, host)) return held;
        } else for (const r of held) if (fitsHost(r, host)) return r;
      }
      if (candidate === "") return undefined;
      const cut = lastIndexOfCode(candidate, 47); // "/"
      // After "/x" comes "": host-only routes (public service routes) match any path.
      candidate = cut <= 0 ? "" : candidate.slice(0, cut);
    }
  }
}

/** What a status report names: the API, its deployment and that deployment's deployedAt. */
const reported = (r: Pick<Route, "apiId" | "deploymentId" | "deployedAt">) => ({
  apiId: r.apiId,
  deploymentId: r.deploymentId,
  deployedAt: r.deployedAt,
});

export interface ConfigStoreOptions {
  /** Told about each deployment's outcome (deployed, undeployed, failed with a reason). */
  report(r: StatusReport): void;
  /** Called after each swap, with the table's size. */
  onSwap?(size: number): void;
}

/**
 * Holds the compiled routes. Told only about rows that changed; each is compiled alone, so an
 * invalid definition fails alone. The table is rebuilt on setImmediate (off the request path),
 * once for any number of changes in the same turn, and swapped by one assignment.
 */
export class ConfigStore {
  private readonly routes = new Map<string, Route>();
  readonly failures = new Map<string, { deploymentId: string; reason: string }>();
  private current = new RouteTable([]);
  /** Routes the table cannot reach, as last reported: api id to deployment id. */
  private shadowedIds = new Map<string, string>();
  private scheduled = false;
  private waiters: Array<() => void> = [];
  swaps = 0;

  constructor(private readonly o: ConfigStoreOptions) {}

  get table(): RouteTable {
    return this.current;
  }

  /** Applies changed rows (and removals by api id); the table follows on the next turn. */
  apply(changed: StoredRow[], removed: string[] = []): void {
    for (const row of changed) {
      // Whether it is reachable is told again after the swap (its report below says deployed).
      this.shadowedIds.delete(row.apiId);
      if (row.state !== "DEPLOYED") {
        this.routes.delete(row.apiId);
        this.failures.delete(row.apiId);
        this.o.report({
          ...reported(row),
          status: "undeployed",
        });
        continue;
      }
      if (!row.content) continue; // Content follows; the row changes again when it arrives.
      try {
        this.routes.set(row.apiId, compileRoute(row));
        this.failures.delete(row.apiId);
        this.o.report({
          ...reported(row),
          status: "deployed",
        });
      } catch (err) {
        // The previous version of this API stops too: serving stale config for it would hide the failure.
        this.routes.delete(row.apiId);
        const reason = (err as Error).message.slice(0, 500);
        this.failures.set(row.apiId, { deploymentId: row.deploymentId, reason });
        this.o.report({
          ...reported(row),
          status: "failed",
          reason,
        });
      }
    }
    for (const apiId of removed) {
      this.routes.delete(apiId);
      this.failures.delete(apiId);
    }
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.swap();
      this.o.onSwap?.(this.current.size);
      const w = this.waiters;
      this.waiters = [];
      for (const fn of w) fn();
    });
  }

  /** Resolves after the next swap (tests and the benchmark measure change-to-effect with it). */
  settled(): Promise<void> {
    if (!this.scheduled) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Builds the table now (startup: serve the stored config before anything else). */
  rebuildNow(): void {
    this.swap();
  }

  /**
   * Builds and swaps the table, and reports the routes it cannot reach as failed (with the API
   * that takes their requests), and those reachable again as deployed.
   */
  private swap(): void {
    this.current = new RouteTable(this.routes.values());
    this.swaps++;
    const now = new Map<string, Route>();
    for (const [route, by] of this.current.shadowed) {
      now.set(route.apiId, route);
      if (this.shadowedIds.get(route.apiId) === route.deploymentId) continue;
      const hosts = route.hosts ? ` on ${route.hosts.join(", ")}` : "";
      const reason = `its path ${route.prefix || "/"}${hosts} is served by API ${by.name} (${by.apiId}), created first; give one of them another context path or hosts`;
      this.failures.set(route.apiId, { deploymentId: route.deploymentId, reason });
      this.o.report({ ...reported(route), status: "failed", reason });
    }
    for (const [apiId, deploymentId] of this.shadowedIds) {
      const route = this.routes.get(apiId);
      if (now.has(apiId) || route?.deploymentId !== deploymentId) continue;
      this.failures.delete(apiId);
      this.o.report({ ...reported(route), status: "deployed" });
    }
    this.shadowedIds = new Map([...now].map(([apiId, r]) => [apiId, r.deploymentId]));
  }

  get routeCount(): number {
    return this.routes.size;
  }
}

// Not a path from "/" (an absolute-form target: the upstream would take its authority over the
// Host the gateway sends, RFC 9112 3.2.2); "." or ".." as a whole segment, or ended by ";" (a
// path parameter: Tomcat and Spring read "..;" as ".."); "#" (never part of a request target:
// the upstream may cut there); an encoded dot, slash or backslash; a backslash.
const UNSAFE_PATH = /^[^/]|(^|\/)\.{1,2}(\/|;|$)|#|%2e|%2f|%5c|\\/i;

/**
 * Whether a request path could mean something else to the upstream than to the route table: an
 * upstream that resolves dot segments or decodes separators would serve `/orders/../admin` as
 * `/admin`, past the route's prefix and its operations. Clients that follow RFC 3986 remove dot
 * segments before sending, so such paths are refused rather than normalized; so is a target that
 * is not a path (absolute form, `*`).
 */
export function isUnsafePath(path: string): boolean {
  return UNSAFE_PATH.test(path);
}

/**
 * The request target sent upstream: the route's base path, the rest of the client's path after
 * the route's prefix, the query. Without a base path a rest like `//evil.example/x` would start
 * with two slashes, which a URL parser on the upstream (`new URL(target, base)`, urlsplit) reads
 * as a network-path reference naming another host: its leading slashes become one.
 */
export function upstreamTarget(basePath: string, rest: string, query: string): string {
  const path = `${basePath}${rest}`;
  return `${path.charCodeAt(1) === 47 ? `/${path.replace(/^\/+/, "")}` : path}${query}`;
}

// A host (RFC 3986 reg-name or IPv4, or an IPv6 literal in brackets) and an optional port.
const HOST_HEADER = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::\d{0,5})?$/;

/**
 * Whether a Host header is a host and an optional port, nothing else: `a.example:1@evil.com` or
 * `a.example:80 evil.com` would match `a.example`'s routes and reach the upstream as its
 * x-forwarded-host, from which it may build links.
 */
export function isHostHeader(value: string): boolean {
  return HOST_HEADER.test(value);
}
