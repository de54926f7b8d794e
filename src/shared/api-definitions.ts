// API definitions (RestApi, LlmProvider, LlmProxy): their shapes and checks, shared by the hub
// (on create) and the gateway (on apply), so both sides agree on what is valid.
import { invalid } from "./errors.js";
import { hostKey, upstreamRefusal } from "./net-address.js";

export const API_KINDS = ["RestApi", "LlmProvider", "LlmProxy"] as const;
export type ApiKindName = (typeof API_KINDS)[number];

export interface Operation {
  method: string;
  /** Relative to the context path; `{name}` matches one segment, a trailing `*` the rest. */
  path: string;
}

export interface RestApiDefinition {
  contextPath: string;
  version?: string;
  /** Hostnames this API answers on; empty: any host. */
  hosts?: string[];
  /** An absolute http(s) URL, or a service of the same organization (resolved by the hub). */
  upstream: { url: string } | { service: string };
  /** Empty: every method and path under the context path. */
  operations?: Operation[];
  /** Upstream response-headers timeout. Default 30 000 ms. */
  timeoutMs?: number;
}

export interface LlmProviderDefinition {
  contextPath: string;
  hosts?: string[];
  /** An OpenAI-compatible base URL, e.g. https://api.example.com/v1. */
  upstreamUrl: string;
  /** Model allowlist: a request naming another model is refused with 403. */
  models: string[];
  timeoutMs?: number;
}

export interface LlmProxyDefinition {
  contextPath: string;
  hosts?: string[];
  /** Per consumer key: a token bucket of `burst` tokens refilled at requestsPerMinute. */
  rateLimit: { requestsPerMinute: number; burst?: number };
}

export type ApiDefinition = RestApiDefinition | LlmProviderDefinition | LlmProxyDefinition;

const METHODS = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);
const PATH = /^(\/[A-Za-z0-9._~\-{}*]+)+$/;
const HOST =
  /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;
const MAX_DEFINITION_BYTES = 64 * 1024;

function object(field: string, v: unknown): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v))
    throw invalid(field, "must be an object");
  return v as Record<string, unknown>;
}

function str(field: string, v: unknown, max = 2048): string {
  if (typeof v !== "string" || !v) throw invalid(field, "must be a non-empty string");
  if (v.length > max) throw invalid(field, `must be at most ${max} characters`);
  return v;
}

export function checkContextPath(field: string, v: unknown): string {
  const s = str(field, v, 200);
  if (
    s === "/" ||
    !PATH.test(s) ||
    s.includes("{") ||
    s.includes("*") ||
    s.split("/").includes("..")
  )
    throw invalid(
      field,
      `"${s.slice(0, 60)}" must look like /orders or /v1/orders (no trailing slash)`,
    );
  return s;
}

// URLs already checked (a gateway restart checks 10,000 definitions that mostly share a handful
// of upstreams; parsing each with new URL() was ~a third of compiling them). Successes only.
const checkedUrls = new Map<string, string>();

export function checkHttpUrl(field: string, v: unknown): string {
  const s = str(field, v);
  const known = checkedUrls.get(s);
  if (known !== undefined) return known;
  const checked = checkUrl(field, s);
  if (checkedUrls.size >= 1000) checkedUrls.clear();
  checkedUrls.set(s, checked);
  return checked;
}

function checkUrl(field: string, s: string): string {
  let url: URL;
  try {
    url = new URL(s);
  } catch {
    throw invalid(field, `"${s.slice(0, 60)}" is not a URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw invalid(field, "must be an http:// or https:// URL");
  if (url.username || url.password) throw invalid(field, "must not carry credentials");
  if (url.search || url.hash) throw invalid(field, "must not have a query or fragment");
  // Names are resolved only when the gateway connects (guardedLookup refuses them there).
  const host = hostKey(url.hostname);
  const why = upstreamRefusal(host);
  if (why) throw invalid(field, `must not point at ${host} (${why})`);
  return s.replace(/\/+$/, "");
}

function hosts(field: string, v: unknown): string[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.length > 20)
    throw invalid(field, "must be a list of at most 20 hostnames");
  return v.map((h, i) => {
    const s = str(`${field}[${i}]`, h, 253).toLowerCase();
    if (!HOST.test(s)) throw invalid(`${field}[${i}]`, `"${s.slice(0, 60)}" is not a hostname`);
    return s;
  });
}

function timeout(field: string, v: unknown): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 100 || v > 600_000)
    throw invalid(field, "must be an integer between 100 and 600000 (milliseconds)");
  return v;
}

function only(field: string, o: Record<string, unknown>, keys: string[]): void {
  for (const k of Object.keys(o))
    if (!keys.includes(k))
      throw invalid(`${field}.${k}`, `is not a field of this kind (allowed: ${keys.join(", ")})`);
}

/** Parses and checks a definition of `kind`; returns it normalized. Throws validation.failed naming the field. */
export function checkDefinition(
  kind: ApiKindName,
  raw: unknown,
  field = "definition",
): ApiDefinition {
  if (JSON.stringify(raw ?? null).length > MAX_DEFINITION_BYTES)
    throw invalid(field, `must be at most ${MAX_DEFINITION_BYTES} bytes`);
  const o = object(field, raw);
  if (kind === "RestApi") {
    only(field, o, ["contextPath", "version", "hosts", "upstream", "operations", "timeoutMs"]);
    const up = object(`${field}.upstream`, o.upstream);
    let upstream: RestApiDefinition["upstream"];
    if ("url" in up && !("service" in up))
      upstream = { url: checkHttpUrl(`${field}.upstream.url`, up.url) };
    else if ("service" in up && !("url" in up))
      upstream = { service: str(`${field}.upstream.service`, up.service, 100) };
    else throw invalid(`${field}.upstream`, "must have exactly one of url or service");
    const version = o.version === undefined ? undefined : str(`${field}.version`, o.version, 40);
    if (version !== undefined && !/^[A-Za-z0-9._-]+$/.test(version))
      throw invalid(`${field}.version`, "must be letters, digits, dots, dashes or underscores");
    let operations: Operation[] | undefined;
    if (o.operations !== undefined) {
      if (!Array.isArray(o.operations) || o.operations.length > 500)
        throw invalid(`${field}.operations`, "must be a list of at most 500 operations");
      operations = o.operations.map((op, i) => {
        const f = `${field}.operations[${i}]`;
        const x = object(f, op);
        const method = str(`${f}.method`, x.method, 10).toUpperCase();
        if (!METHODS.has(method))
          throw invalid(`${f}.method`, `must be one of ${[...METHODS].join(", ")}`);
        const path = str(`${f}.path`, x.path, 500);
        if (path !== "/" && path !== "/*" && !PATH.test(path))
          throw invalid(`${f}.path`, `"${path.slice(0, 60)}" is not a path`);
        return { method, path };
      });
    }
    const h = hosts(`${field}.hosts`, o.hosts);
    const t = timeout(`${field}.timeoutMs`, o.timeoutMs);
    return {
      contextPath: checkContextPath(`${field}.contextPath`, o.contextPath),
      ...(version ? { version } : {}),
      ...(h ? { hosts: h } : {}),
      upstream,
      ...(operations ? { operations } : {}),
      ...(t ? { timeoutMs: t } : {}),
    };
  }
  if (kind === "LlmProvider") {
    only(field, o, ["contextPath", "hosts", "upstreamUrl", "models", "timeoutMs"]);
    if (!Array.isArray(o.models) || o.models.length === 0 || o.models.length > 100)
      throw invalid(`${field}.models`, "must list 1 to 100 allowed model names");
    const models = o.models.map((m, i) => str(`${field}.models[${i}]`, m, 200));
    const h = hosts(`${field}.hosts`, o.hosts);
    const t = timeout(`${field}.timeoutMs`, o.timeoutMs);
    return {
      contextPath: checkContextPath(`${field}.contextPath`, o.contextPath),
      ...(h ? { hosts: h } : {}),
      upstreamUrl: checkHttpUrl(`${field}.upstreamUrl`, o.upstreamUrl),
      models,
      ...(t ? { timeoutMs: t } : {}),
    };
  }
  if (kind === "LlmProxy") {
    only(field, o, ["contextPath", "hosts", "rateLimit"]);
    const rl = object(`${field}.rateLimit`, o.rateLimit);
    only(`${field}.rateLimit`, rl, ["requestsPerMinute", "burst"]);
    const rpm = rl.requestsPerMinute;
    if (typeof rpm !== "number" || !Number.isInteger(rpm) || rpm < 1 || rpm > 1_000_000)
      throw invalid(
        `${field}.rateLimit.requestsPerMinute`,
        "must be an integer between 1 and 1000000",
      );
    const burst = rl.burst;
    if (
      burst !== undefined &&
      (typeof burst !== "number" || !Number.isInteger(burst) || burst < 1 || burst > 1_000_000)
    )
      throw invalid(`${field}.rateLimit.burst`, "must be an integer between 1 and 1000000");
    const h = hosts(`${field}.hosts`, o.hosts);
    return {
      contextPath: checkContextPath(`${field}.contextPath`, o.contextPath),
      ...(h ? { hosts: h } : {}),
      rateLimit: { requestsPerMinute: rpm, ...(burst ? { burst } : {}) },
    };
  }
  throw invalid("kind", "must be RestApi, LlmProvider or LlmProxy");
}

/**
 * What a gateway receives for one API deployment (api.json in the deployment's archive
 * directory). Secrets (an LlmProvider's credential) appear here only in transit to the gateway.
 */
export interface DeploymentContent {
  apiId: string;
  deploymentId: string;
  name: string;
  /** An API kind, or ServiceRoute for a PUBLIC service's route (hosts and upstreamUrl). */
  kind: ApiKindName | "ServiceRoute";
  definition: unknown;
  /** RestApi with a service upstream: the endpoint the agent reports, resolved at fetch time. */
  resolvedUpstreamUrl?: string;
  /** LlmProvider: its credential. */
  credential?: string;
  /** LlmProxy: its provider's upstream, models and credential. */
  provider?: { upstreamUrl: string; models: string[]; credential: string; timeoutMs?: number };
  /** LlmProxy: SHA-256 (hex) of each consumer key. */
  consumerKeyHashes?: string[];
}
