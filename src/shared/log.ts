// Structured JSON logs (pino) that carry the current request context on every line.
import { type DestinationStream, type Logger, pino } from "pino";
import { currentContext, type RequestContext } from "./context.js";
import { traceIdOf } from "./trace.js";

export type { Logger };

// Keys whose values must never reach a log line, wherever they appear in a logged object.
const REDACT = [
  "password",
  "*.password",
  "token",
  "*.token",
  "secret",
  "*.secret",
  "sessionSecret",
  "*.sessionSecret",
  "authorization",
  "*.authorization",
  "cookie",
  "*.cookie",
  "headers.authorization",
  "headers.cookie",
];

let isoSecond = Number.NaN;
let isoSecondText = "";

/**
 * new Date().toISOString(), with the part up to the second formatted once a second: V8 formats
 * a date through snprintf, 0.9-2.7 us a call on this machine against 0.1-0.3 us for this (one per
 * log line).
 */
export function isoNow(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== isoSecond) {
    isoSecond = second;
    isoSecondText = new Date(second * 1000).toISOString().slice(0, 20);
  }
  return `${isoSecondText}${String(now % 1000).padStart(3, "0")}Z`;
}

/** pino's timestamp option: the ISO time of isoNow (pino.stdTimeFunctions.isoTime's text). */
export const isoTimestamp = (): string => `,"time":"${isoNow()}"`;

/**
 * What JSON.stringify escapes in a string: a quote, a backslash, a control character, a surrogate
 * (lone ones are escaped; a pair matches too and simply takes the slow way).
 */
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it finds.
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;

/**
 * A string as JSON: the same text JSON.stringify gives, without its per-character escaping pass
 * for the usual value (an id, a name, a path), which has nothing to escape.
 */
export function jsonString(s: string): string {
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : `"${s}"`;
}

/**
 * `String(ms)` for a duration in hundredths of a millisecond (what the proxies record), from
 * integers: V8 turns a fraction into text by its shortest-round-trip algorithm, ~800 instructions
 * a call here, where small integers come from its number-string cache.
 */
export function hundredthsText(ms: number): string {
  // Negative, huge or not a number: never a duration the proxies record; String() says it.
  if (!(ms >= 0 && ms < 1e15)) return String(Math.round(ms * 100) / 100);
  const hundredths = Math.round(ms * 100);
  const whole = Math.floor(hundredths / 100);
  const fraction = hundredths - whole * 100;
  if (fraction === 0) return `${whole}`;
  if (fraction % 10 === 0) return `${whole}.${fraction / 10}`;
  return `${whole}.${fraction < 10 ? "0" : ""}${fraction}`;
}

/** The fields every line carries from the current request context (createLogger's mixin). */
function contextFields(ctx: RequestContext): {
  tenant: string | undefined;
  correlation_id: string;
  traceparent: string;
  trace_id: string | null;
  request_id: string | undefined;
} {
  return {
    tenant: ctx.tenant,
    correlation_id: ctx.correlationId,
    traceparent: ctx.traceparent,
    trace_id: traceIdOf(ctx.traceparent),
    request_id: ctx.requestId,
  };
}

/** contextFields as the JSON pino writes for them (undefined ones left out), each after a comma. */
function contextJson(ctx: RequestContext | undefined): string {
  if (!ctx) return "";
  const f = contextFields(ctx);
  let out = f.tenant === undefined ? "" : `,"tenant":${jsonString(f.tenant)}`;
  out += `,"correlation_id":${jsonString(f.correlation_id)},"traceparent":${jsonString(f.traceparent)}`;
  out += `,"trace_id":${f.trace_id === null ? "null" : jsonString(f.trace_id)}`;
  if (f.request_id !== undefined) out += `,"request_id":${jsonString(f.request_id)}`;
  return out;
}

/** Marks the loggers createLogger makes (their children inherit it): infoLineWriter's format. */
const MADE_BY_CREATE_LOGGER = Symbol("flotilla.createLogger");

/**
 * Writes info lines with one message and fields given as JSON text (`"k":v,...`), exactly as
 * `logger.info({k: v, ...}, msg)` writes them from a createLogger logger or its children, without
 * pino's work per line (its object walk, mixin merge and serializers): a WhoAmI on the hub went
 * from 458k to 414k instructions with this and isoNow (bench/whoami-instructions.mjs). No
 * redaction runs: for lines that can hold no secret (a name, a code, a time). It reads the
 * logger's stream and bindings through
 * pino.symbols, internal state pino exposes to integrations; pino is pinned to one version and
 * test/unit/log-lines.test.ts compares the lines with pino's own. Any other logger (another
 * format, a multistream) gets its lines through logger.info.
 */
export function infoLineWriter(logger: Logger, msg: string): (fields: string) => void {
  const internals = logger as unknown as Record<symbol, unknown>;
  const stream = internals[pino.symbols.streamSym] as DestinationStream & Record<symbol, unknown>;
  if (internals[MADE_BY_CREATE_LOGGER] !== true || stream[Symbol.for("pino.metadata")] === true)
    return (fields) => logger.info(JSON.parse(`{${fields}}`), msg);
  const bindings = internals[pino.symbols.chindingsSym] as string;
  const end = `,"msg":${jsonString(msg)}}\n`;
  return (fields) => {
    if (!logger.isLevelEnabled("info")) return;
    stream.write(
      `{"level":30,"time":"${isoNow()}"${bindings}${contextJson(currentContext())},${fields}${end}`,
    );
  };
}

export interface LoggerOptions {
  level?: string;
  name?: string;
  destination?: DestinationStream;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const opts = {
    level: options.level ?? process.env.FLOTILLA_LOG_LEVEL ?? "info",
    base: { name: options.name ?? "flotilla", pid: process.pid },
    redact: { paths: REDACT, censor: "[redacted]" },
    timestamp: isoTimestamp,
    mixin() {
      const ctx = currentContext();
      return ctx ? contextFields(ctx) : {};
    },
  };
  const logger = options.destination ? pino(opts, options.destination) : pino(opts);
  Object.defineProperty(logger, MADE_BY_CREATE_LOGGER, { value: true });
  return logger;
}
