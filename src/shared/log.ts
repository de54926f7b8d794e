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
  /**
   * Default: stdout, written asynchronously. pino's default writes every line with a blocking
   * write(2) on the event loop; a hub logs a line per RPC, and with its log on a file those writes
   * sometimes waited on the disk for tens of ms, stalling every call behind them (WhoAmI at 3,000
   * req/s: p99 18-35 ms with the line, 4-16 without). Lines written while a write is under way are
   * joined into the next one. pino writes what is left when the process exits; a process killed
   * with SIGKILL loses the lines not yet written.
   */
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
  return pino(opts, options.destination ?? pino.destination({ sync: false }));
}
