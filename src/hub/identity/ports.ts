// Ports the identity module consumes; the composition root wires them to other modules.
import type { Queryable } from "../../store/index.js";

export interface AuditEntry {
  organizationId: string | null;
  actor: { type: "user" | "token" | "system" | "anonymous"; id: string | null };
  action: string;
  target?: { type: string; id: string };
  /** Facts about the change. Never secret values. */
  details?: Record<string, unknown>;
}

/** Writes an audit row inside the caller's transaction, so the row and the change commit together. */
export type AuditRecorder = (tx: Queryable, entry: AuditEntry) => Promise<void>;
