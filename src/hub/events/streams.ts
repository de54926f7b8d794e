// JetStream stream contracts: one authoritative config per stream; create if missing, validate if present, never replace.
import {
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamManager,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
} from "@nats-io/jetstream";
import { FlotillaError } from "../../shared/index.js";
import { allEventsSubject, DEFAULT_SUBJECT_ROOT } from "./subjects.js";

/** JetStream durations are nanoseconds. */
export const nanos = (ms: number): number => ms * 1_000_000;
const millis = (ns: number): number => Math.round(ns / 1_000_000);

export interface StreamContract {
  name: string;
  /** Subjects the stream must capture (an existing stream may capture more). */
  subjects: string[];
  /** What a created stream gets. */
  maxAgeMs: number;
  maxMsgs: number;
  maxBytes: number;
  duplicateWindowMs: number;
  /** What an existing stream must at least allow (0 / -1 on the stream mean unlimited). */
  minimum: { maxAgeMs: number; maxMsgs: number; maxBytes: number; duplicateWindowMs: number };
}

export const DEFAULT_EVENTS_STREAM = "FLOTILLA_EVENTS";

/**
 * The relay's retry horizon: a relay that crashed after the stream stored an event but before it
 * marked the row republishes it once the row lock is released (at once) and the next poll or
 * wake-up comes (1 s), after at most one publish timeout (5 s) and the longest backoff (30 s):
 * about 36 s. A duplicate window of at least 60 s covers that with margin.
 */
export const RELAY_RETRY_HORIZON_MS = 60_000;

export interface EventsStreamOptions {
  name?: string;
  subjectRoot?: string;
}

/** The contract of the events stream: every domain event, kept 7 days (1 GiB), deduplicated over 5 minutes. */
export function eventsStreamContract(o: EventsStreamOptions = {}): StreamContract {
  return {
    name: o.name ?? DEFAULT_EVENTS_STREAM,
    subjects: [allEventsSubject(o.subjectRoot ?? DEFAULT_SUBJECT_ROOT)],
    // 7 days: a consumer down for a long weekend catches up from the stream.
    maxAgeMs: 7 * 24 * 3600_000,
    maxMsgs: -1,
    // 1 GiB: about a million events of 1 KiB. NATS reserves max_bytes against its store at
    // creation, so a larger default would be refused on small disks; raise it with `nats stream edit`.
    maxBytes: 1024 ** 3,
    duplicateWindowMs: 5 * 60_000,
    minimum: {
      maxAgeMs: 24 * 3600_000,
      maxMsgs: 1_000_000,
      maxBytes: 64 * 1024 ** 2,
      duplicateWindowMs: RELAY_RETRY_HORIZON_MS,
    },
  };
}

/** The config a missing stream is created with. */
export function streamConfig(c: StreamContract): Partial<StreamConfig> & { name: string } {
  return {
    name: c.name,
    subjects: c.subjects,
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    max_age: nanos(c.maxAgeMs),
    max_msgs: c.maxMsgs,
    max_bytes: c.maxBytes,
    duplicate_window: nanos(c.duplicateWindowMs),
    num_replicas: 1,
  };
}

/** True when the NATS subject pattern `pattern` matches every subject `subject` matches. */
export function subjectCovers(pattern: string, subject: string): boolean {
  const p = pattern.split(".");
  const s = subject.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return s.length > i;
    if (i >= s.length) return false;
    if (s[i] === ">") return false;
    if (p[i] !== "*" && p[i] !== s[i]) return false;
  }
  return p.length === s.length;
}

export interface StreamMismatch {
  /** The JetStream config field, as `nats stream info` names it. */
  field: string;
  message: string;
}

const limitOk = (actual: number | undefined, minimum: number, unlimited: number) =>
  actual === undefined || actual === unlimited || actual <= 0 || actual >= minimum;

/** Every way an existing stream's config breaks the contract; empty when compatible. */
export function checkStream(c: StreamContract, existing: Partial<StreamConfig>): StreamMismatch[] {
  const out: StreamMismatch[] = [];
  const have = existing.subjects ?? [];
  for (const wanted of c.subjects) {
    if (!have.some((s) => subjectCovers(s, wanted)))
      out.push({
        field: "subjects",
        message: `subjects ${JSON.stringify(have)} do not capture ${wanted}`,
      });
  }
  if (existing.retention !== undefined && existing.retention !== RetentionPolicy.Limits)
    out.push({
      field: "retention",
      message: `retention is ${existing.retention}; it must be limits (several consumers read every event)`,
    });
  if (existing.storage !== undefined && existing.storage !== StorageType.File)
    out.push({
      field: "storage",
      message: `storage is ${existing.storage}; it must be file (events must survive a NATS restart)`,
    });
  if (existing.sealed)
    out.push({ field: "sealed", message: "the stream is sealed; the relay could not publish" });
  if (existing.max_age && existing.max_age > 0 && existing.max_age < nanos(c.minimum.maxAgeMs))
    out.push({
      field: "max_age",
      message: `max_age is ${millis(existing.max_age)} ms; it must be 0 (unlimited) or at least ${c.minimum.maxAgeMs} ms`,
    });
  if (!limitOk(existing.max_msgs, c.minimum.maxMsgs, -1))
    out.push({
      field: "max_msgs",
      message: `max_msgs is ${existing.max_msgs}; it must be -1 (unlimited) or at least ${c.minimum.maxMsgs}`,
    });
  if (!limitOk(existing.max_bytes, c.minimum.maxBytes, -1))
    out.push({
      field: "max_bytes",
      message: `max_bytes is ${existing.max_bytes}; it must be -1 (unlimited) or at least ${c.minimum.maxBytes}`,
    });
  const window = existing.duplicate_window ?? 0;
  if (window < nanos(c.minimum.duplicateWindowMs))
    out.push({
      field: "duplicate_window",
      message: `duplicate_window is ${millis(window)} ms; it must be at least ${c.minimum.duplicateWindowMs} ms, the relay's retry horizon, or a republished event is stored twice`,
    });
  return out;
}

export type EnsureOutcome = "created" | "validated";

/**
 * Creates the stream when it is missing; otherwise checks it and refuses, naming the first
 * incompatible field. Never updates, purges, deletes or replaces a stream: an operator decides.
 */
export async function ensureStream(
  jsm: JetStreamManager,
  c: StreamContract,
): Promise<EnsureOutcome> {
  let existing: Partial<StreamConfig> | undefined;
  try {
    existing = (await jsm.streams.info(c.name)).config;
  } catch (err) {
    if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound))
      throw err;
  }
  if (!existing) {
    await jsm.streams.add(streamConfig(c));
    return "created";
  }
  const mismatches = checkStream(c, existing);
  const first = mismatches[0];
  if (first)
    throw new FlotillaError(
      "events.stream_incompatible",
      `NATS stream ${c.name} is incompatible: ${mismatches.map((m) => m.message).join("; ")}. Fix it with \`nats stream edit ${c.name}\` or point --nats-stream at another stream; Flotilla never changes an existing stream`,
      { field: first.field },
    );
  return "validated";
}
