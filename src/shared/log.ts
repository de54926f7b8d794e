// Structured JSON logs (pino) that carry the current request context on every line.
import { type DestinationStream, type Logger, pino } from "pino";
import { currentContext } from "./context.js";
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
    timestamp: pino.stdTimeFunctions.isoTime,
    mixin() {
      const ctx = currentContext();
      if (!ctx) return {};
      return {
        tenant: ctx.tenant,
        correlation_id: ctx.correlationId,
        traceparent: ctx.traceparent,
        trace_id: traceIdOf(ctx.traceparent),
        request_id: ctx.requestId,
      };
    },
  };
  return options.destination ? pino(opts, options.destination) : pino(opts);
}
