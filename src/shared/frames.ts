// The agent control channel's frames (version 1): their shapes, and the one parser both ends use.
import { createHmac, timingSafeEqual } from "node:crypto";
import type { FrameContext } from "./context.js";

export const FRAME_VERSION = 1;
/** Larger frames are refused by the WebSocket itself (ws maxPayload) on both ends. */
export const MAX_FRAME_BYTES = 1024 * 1024;
/** The agent's HTTP paths on the hub. */
export const AGENT_JOIN_PATH = "/agent/v1/join";
export const AGENT_CONNECT_PATH = "/agent/v1/connect";

/** What an operator may ask of an agent, on its admin port or through the hub. */
export type AdminAction = "status" | "drain" | "resume" | "reload";
export const ADMIN_ACTIONS: readonly AdminAction[] = ["status", "drain", "resume", "reload"];

export type DispatchOp = "deploy" | "start" | "stop" | "restart" | "delete" | "job";
export const DISPATCH_OPS: readonly DispatchOp[] = [
  "deploy",
  "start",
  "stop",
  "restart",
  "delete",
  "job",
];

export interface AgentFacts {
  agent_version: string;
  drivers: string[];
  cores: number;
  memory_bytes: number;
  disk_free_bytes: number;
  /**
   * Where a hub replica that holds no socket for this agent can reach its admin API (route()
   * "direct"); absent when the admin API is only on loopback.
   */
  admin_url?: string;
}

/** Agent to hub. */
export type AgentFrame =
  | ({ v: 1; type: "hello"; server_id: string } & AgentFacts)
  | { v: 1; type: "auth"; proof: string }
  | ({ v: 1; type: "heartbeat" } & Partial<AgentFacts>)
  | { v: 1; type: "ack"; id: string; duplicate: boolean }
  | { v: 1; type: "result"; id: string; ok: boolean; result?: unknown; error?: string }
  | {
      v: 1;
      type: "status";
      ctx?: FrameContext;
      service_id: string;
      deployment_id: string;
      status: string;
      reason?: string;
      endpoint?: string;
    }
  | { v: 1; type: "log"; stream: string; lines: string[] }
  | { v: 1; type: "defer"; id: string; reason: string }
  | { v: 1; type: "drain_state"; draining: boolean }
  | { v: 1; type: "admin_result"; id: string; ok: boolean; result?: unknown; error?: string }
  | { v: 1; type: "log_end"; stream: string; error?: string }
  | { v: 1; type: "error"; code: string; message: string };

/** Hub to agent. */
export type HubFrame =
  | { v: 1; type: "challenge"; nonce: string }
  | { v: 1; type: "welcome"; session_id: string; heartbeat_interval_ms: number }
  | {
      v: 1;
      type: "dispatch";
      id: string;
      ctx: FrameContext;
      op: DispatchOp;
      service_id: string | null;
      deployment_id: string | null;
      args: Record<string, unknown>;
    }
  | { v: 1; type: "logs"; stream: string; service_id: string; lines: number; follow: boolean }
  | { v: 1; type: "logs_stop"; stream: string }
  | { v: 1; type: "admin"; id: string; action: AdminAction }
  | { v: 1; type: "error"; code: string; message: string };

export class FrameError extends Error {
  constructor(
    readonly code: "frame.malformed" | "frame.unsupported",
    message: string,
  ) {
    super(message);
  }
}

type Checks = Record<string, (value: unknown) => boolean>;
const isString = (v: unknown) => typeof v === "string" && v.length <= 4096;
const isId = (v: unknown) => typeof v === "string" && /^[0-9a-f-]{36}$/.test(v);
const isNullableId = (v: unknown) => v === null || isId(v);
const isCount = (v: unknown) => typeof v === "number" && Number.isFinite(v) && v >= 0;
const isBool = (v: unknown) => typeof v === "boolean";
const isObject = (v: unknown) => typeof v === "object" && v !== null && !Array.isArray(v);
const isStrings = (v: unknown) => Array.isArray(v) && v.length <= 32 && v.every(isString);
// Log lines: a batch of at most 1,000, each at most 64 KiB (the frame limit bounds the total).
const isLines = (v: unknown) =>
  Array.isArray(v) &&
  v.length <= 1000 &&
  v.every((l) => typeof l === "string" && l.length <= 65_536);
const optional = (check: (v: unknown) => boolean) => (v: unknown) => v === undefined || check(v);
const isContext = (v: unknown) =>
  isObject(v) &&
  isString((v as FrameContext).correlation) &&
  isString((v as FrameContext).traceparent);

const FACTS: Checks = {
  agent_version: isString,
  drivers: isStrings,
  cores: isCount,
  memory_bytes: isCount,
  disk_free_bytes: isCount,
  admin_url: optional(
    (v) => typeof v === "string" && v.length <= 512 && /^https?:\/\/[^\s]+$/.test(v),
  ),
};

const AGENT_FRAMES: Record<AgentFrame["type"], Checks> = {
  hello: { server_id: isId, ...FACTS },
  auth: { proof: (v) => typeof v === "string" && /^[0-9a-f]{64}$/.test(v) },
  heartbeat: Object.fromEntries(Object.entries(FACTS).map(([k, c]) => [k, optional(c)])),
  ack: { id: isId, duplicate: isBool },
  result: { id: isId, ok: isBool, error: optional(isString) },
  status: {
    ctx: optional(isContext),
    service_id: isId,
    deployment_id: isId,
    status: isString,
    reason: optional(isString),
    endpoint: optional(isString),
  },
  log: { stream: isId, lines: isLines },
  log_end: { stream: isId, error: optional(isString) },
  defer: { id: isId, reason: isString },
  drain_state: { draining: isBool },
  admin_result: { id: isId, ok: isBool, error: optional(isString) },
  error: { code: isString, message: isString },
};

const HUB_FRAMES: Record<HubFrame["type"], Checks> = {
  challenge: { nonce: (v) => typeof v === "string" && /^[0-9a-f]{64}$/.test(v) },
  welcome: { session_id: isString, heartbeat_interval_ms: isCount },
  dispatch: {
    id: isId,
    ctx: isContext,
    op: (v) => DISPATCH_OPS.includes(v as DispatchOp),
    service_id: isNullableId,
    deployment_id: isNullableId,
    args: isObject,
  },
  logs: {
    stream: isId,
    service_id: isId,
    lines: (v) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 10_000,
    follow: isBool,
  },
  logs_stop: { stream: isId },
  admin: { id: isId, action: (v) => ADMIN_ACTIONS.includes(v as AdminAction) },
  error: { code: isString, message: isString },
};

function parse<T>(text: string, table: Record<string, Checks>): T {
  if (text.length > MAX_FRAME_BYTES) throw new FrameError("frame.malformed", "frame too large");
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new FrameError("frame.malformed", "frame is not JSON");
  }
  if (!isObject(value)) throw new FrameError("frame.malformed", "frame is not a JSON object");
  const frame = value as { v?: unknown; type?: unknown };
  if (frame.v !== FRAME_VERSION)
    throw new FrameError("frame.unsupported", `frame version ${String(frame.v)} is not supported`);
  const checks = typeof frame.type === "string" ? table[frame.type] : undefined;
  if (!checks || !Object.hasOwn(table, frame.type as string))
    throw new FrameError(
      "frame.malformed",
      `unknown frame type ${String(frame.type).slice(0, 40)}`,
    );
  for (const [field, check] of Object.entries(checks)) {
    if (!check((value as Record<string, unknown>)[field]))
      throw new FrameError("frame.malformed", `${frame.type}.${field} is missing or invalid`);
  }
  return value as T;
}

export const parseAgentFrame = (text: string) => parse<AgentFrame>(text, AGENT_FRAMES);
export const parseHubFrame = (text: string) => parse<HubFrame>(text, HUB_FRAMES);

/** The agent proves it holds the server secret without sending it: an HMAC over a fresh nonce. */
export function authProof(secret: string, serverId: string, nonce: string): string {
  return createHmac("sha256", secret)
    .update(`flotilla-agent-auth/v1:${serverId}:${nonce}`)
    .digest("hex");
}

export function proofMatches(expected: string, given: string): boolean {
  const a = Buffer.from(expected, "hex");
  const b = Buffer.from(given, "hex");
  return a.length === b.length && timingSafeEqual(a, b);
}
