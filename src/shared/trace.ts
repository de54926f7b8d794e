// W3C trace context and correlation ids: parse, validate, generate, normalize.
import { randomIdHex } from "./ids.js";

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;
const ZERO_TRACE_ID = "0".repeat(32);
const ZERO_PARENT_ID = "0".repeat(16);

export interface TraceParent {
  version: string;
  traceId: string;
  parentId: string;
  flags: string;
}

/** Parses a traceparent header; returns null when it is invalid per W3C Trace Context. */
export function parseTraceparent(value: string | null | undefined): TraceParent | null {
  if (!value) return null;
  const match = TRACEPARENT.exec(value.trim());
  if (!match) return null;
  const [, version, traceId, parentId, flags, rest] = match as unknown as [
    string,
    string,
    string,
    string,
    string,
    string | undefined,
  ];
  // Version ff is forbidden; version 00 must not carry trailing fields.
  if (version === "ff") return null;
  if (version === "00" && rest !== undefined) return null;
  if (traceId === ZERO_TRACE_ID || parentId === ZERO_PARENT_ID) return null;
  return { version, traceId, parentId, flags };
}

export function isValidTraceparent(value: string | null | undefined): boolean {
  return parseTraceparent(value) !== null;
}

export function formatTraceparent(tp: TraceParent): string {
  return `${tp.version}-${tp.traceId}-${tp.parentId}-${tp.flags}`;
}

function nonZeroHex(bytes: number): string {
  for (;;) {
    const hex = randomIdHex(bytes);
    if (!/^0+$/.test(hex)) return hex;
  }
}

/** A fresh, sampled traceparent with a new trace id. */
export function generateTraceparent(): string {
  return `00-${nonZeroHex(16)}-${nonZeroHex(8)}-01`;
}

/** Keeps a valid incoming traceparent, replaces a missing or invalid one with a new one. */
export function normalizeTraceparent(value: string | null | undefined): string {
  const parsed = parseTraceparent(value);
  return parsed ? formatTraceparent({ ...parsed, version: "00" }) : generateTraceparent();
}

/** The same trace with a new span id: what a hop sends onward. */
export function childTraceparent(parent: string): string {
  const parsed = parseTraceparent(parent);
  if (!parsed) return generateTraceparent();
  return formatTraceparent({ ...parsed, version: "00", parentId: nonZeroHex(8) });
}

export function traceIdOf(traceparent: string): string | null {
  return parseTraceparent(traceparent)?.traceId ?? null;
}

// Correlation ids end up in log lines, headers and an indexed column: 128 characters covers a
// UUID, a ULID or a prefixed id with room to spare, and a narrow charset keeps them header-safe.
export const CORRELATION_ID_MAX = 128;
const CORRELATION_ID = /^[A-Za-z0-9._:-]+$/;

export function isValidCorrelationId(value: string | null | undefined): value is string {
  return (
    typeof value === "string" &&
    value.length > 0 &&
    value.length <= CORRELATION_ID_MAX &&
    CORRELATION_ID.test(value)
  );
}

/** Keeps a well-formed incoming correlation id (trimmed), otherwise generates one. */
export function normalizeCorrelationId(value: string | null | undefined): string {
  const trimmed = value?.trim();
  return isValidCorrelationId(trimmed) ? trimmed : generateCorrelationId();
}

export function generateCorrelationId(): string {
  return randomIdHex(16);
}
