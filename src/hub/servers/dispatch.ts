// Dispatches: durable intents for an agent. Insert signals inside its transaction; claim, complete
// and fail are compare-and-sets, so a dispatch is executed once however many replicas drain it.
import {
  contextOrNew,
  contextToRow,
  type DispatchOp,
  invalid,
  notFound,
  uuidv7,
} from "../../shared/index.js";
import type { Db, Queryable } from "../../store/index.js";

/** Wakes the replica holding a server's agent; the payload is the server id, never a body. */
export const DISPATCH_CHANNEL = "flotilla_dispatch";
/**
 * Sent when a dispatch reaches done or failed (payload: its id), in the statement that writes the
 * outcome: a replica waiting for it on a caller's behalf wakes and re-reads the row.
 */
export const DISPATCH_DONE_CHANNEL = "flotilla_dispatch_done";
/** How long an executing agent has before the reaper may hand the dispatch out again. */
const DEFAULT_DEADLINE_SECONDS = 300;

export type DispatchState = "pending" | "in_progress" | "done" | "failed";

export interface Dispatch {
  id: string;
  organizationId: string;
  serverId: string;
  serviceId: string | null;
  deploymentId: string | null;
  op: DispatchOp;
  args: Record<string, unknown>;
  state: DispatchState;
  claimedBy: string | null;
  attempts: number;
  result: unknown;
  error: string | null;
  deadlineAt: Date | null;
  correlationId: string;
  traceparent: string;
  createdAt: Date;
  updatedAt: Date;
}

interface DispatchRow {
  id: string;
  organization_id: string;
  server_id: string;
  service_id: string | null;
  deployment_id: string | null;
  op: DispatchOp;
  args: Record<string, unknown>;
  state: DispatchState;
  claimed_by: string | null;
  attempts: number;
  result: unknown;
  error: string | null;
  deadline_at: Date | null;
  correlation_id: string;
  traceparent: string;
  created_at: Date;
  updated_at: Date;
}

const COLUMNS = `id, organization_id, server_id, service_id, deployment_id, op, args, state, claimed_by,
  attempts, result, error, deadline_at, correlation_id, traceparent, created_at, updated_at`;

const toDispatch = (r: DispatchRow): Dispatch => ({
  id: r.id,
  organizationId: r.organization_id,
  serverId: r.server_id,
  serviceId: r.service_id,
  deploymentId: r.deployment_id,
  op: r.op,
  args: r.args,
  state: r.state,
  claimedBy: r.claimed_by,
  attempts: r.attempts,
  result: r.result,
  error: r.error,
  deadlineAt: r.deadline_at,
  correlationId: r.correlation_id,
  traceparent: r.traceparent,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
});

export interface NewDispatch {
  organizationId: string;
  serverId: string;
  serviceId?: string | null;
  deploymentId?: string | null;
  op: DispatchOp;
  args?: Record<string, unknown>;
  /** A caller waits for the outcome: signal it on DISPATCH_DONE_CHANNEL. */
  notifyDone?: boolean;
}

export class DispatchStore {
  constructor(private readonly db: Db) {}

  /** Writes the intent and its wake-up in tx: a rolled-back intent never signals. */
  async insert(tx: Queryable, d: NewDispatch): Promise<Dispatch> {
    const ctx = contextToRow(contextOrNew());
    // The row and its wake-up in one statement (one round trip less on every intent); the
    // NOTIFY is still sent only when the transaction commits.
    const { rows } = await tx.query<DispatchRow>(
      `WITH written AS (
         INSERT INTO dispatches (id, organization_id, server_id, service_id, deployment_id, op, args,
                                 correlation_id, traceparent, notify_done)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING ${COLUMNS})
       SELECT written.*, pg_notify('${DISPATCH_CHANNEL}', server_id::text) FROM written`,
      [
        uuidv7(),
        d.organizationId,
        d.serverId,
        d.serviceId ?? null,
        d.deploymentId ?? null,
        d.op,
        JSON.stringify(d.args ?? {}),
        ctx.correlation_id,
        ctx.traceparent,
        d.notifyDone ?? false,
      ],
    );
    return toDispatch(rows[0]!);
  }

  /** pending -> in_progress for `hubId`; null when another claimer won. */
  async claim(id: string, hubId: string, deadlineSeconds = DEFAULT_DEADLINE_SECONDS) {
    const { rows } = await this.db.query<DispatchRow>(
      `UPDATE dispatches SET state = 'in_progress', claimed_by = $2, attempts = attempts + 1,
              deadline_at = now() + make_interval(secs => $3), updated_at = now()
       WHERE id = $1 AND state = 'pending' RETURNING ${COLUMNS}`,
      [id, hubId, deadlineSeconds],
    );
    return rows[0] ? toDispatch(rows[0]) : null;
  }

  /**
   * Up to `limit` of a server's pending dispatches, claimed for `hubId` in one compare-and-set
   * (rows another claimer holds are skipped, never waited for), oldest first. One round trip for
   * a batch instead of one per dispatch: the drain's cost under load. The deadline is the same
   * as deadlineSeconds() on the channel: a job's own timeout plus a minute, else 5 minutes.
   *
   * The claim commits without waiting for its WAL flush (synchronous_commit off for this
   * transaction only): a claim lost to a database crash only hands the dispatch out again, and
   * the agent's ledger answers a repeat without running it twice. It saves one flush (2-5 ms on
   * a busy disk here) on every dispatch's way to the agent.
   */
  async claimBatch(serverId: string, hubId: string, limit = 100): Promise<Dispatch[]> {
    const { rows } = await this.db.query<DispatchRow>(
      `UPDATE dispatches SET state = 'in_progress', claimed_by = $2, attempts = attempts + 1,
              deadline_at = now() + make_interval(secs => CASE
                WHEN op = 'job' AND jsonb_typeof(args -> 'timeout_ms') = 'number'
                     AND (args ->> 'timeout_ms')::numeric > 0
                THEN ceil((args ->> 'timeout_ms')::numeric / 1000) + 60
                ELSE ${DEFAULT_DEADLINE_SECONDS} END::double precision),
              updated_at = now()
       WHERE id IN (SELECT id FROM dispatches WHERE server_id = $1 AND state = 'pending'
                    ORDER BY created_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)
         AND state = 'pending'
         AND set_config('synchronous_commit', 'off', true) IS NOT NULL
       RETURNING ${COLUMNS}`,
      [serverId, hubId, limit],
    );
    return rows
      .map(toDispatch)
      .sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime() || (a.id < b.id ? -1 : 1));
  }

  /**
   * The agent's outcome for a dispatch addressed to `serverId`, in one compare-and-set: done, or
   * failed with its reason. Returns the row as recorded, or null when it was not in progress
   * for that server (a repeated result, or one about another server's dispatch).
   */
  async finish(
    id: string,
    serverId: string,
    outcome: { ok: boolean; result?: unknown; error?: string },
  ): Promise<Dispatch | null> {
    const { rows } = await this.db.query<DispatchRow>(
      `WITH finished AS (
         UPDATE dispatches SET state = $3, error = $4,
                result = CASE WHEN $5::jsonb IS NULL AND $3 = 'failed' THEN result ELSE $5::jsonb END,
                updated_at = now()
         WHERE id = $1 AND server_id = $2 AND state = 'in_progress' RETURNING ${COLUMNS}, notify_done)
       SELECT finished.*,
              CASE WHEN notify_done THEN pg_notify('${DISPATCH_DONE_CHANNEL}', id::text) END
       FROM finished`,
      [
        id,
        serverId,
        outcome.ok ? "done" : "failed",
        outcome.ok ? null : (outcome.error ?? "the agent reported a failure").slice(0, 4000),
        outcome.ok
          ? JSON.stringify(outcome.result ?? null)
          : outcome.result === undefined
            ? null
            : JSON.stringify(outcome.result),
      ],
    );
    return rows[0] ? toDispatch(rows[0]) : null;
  }

  /**
   * in_progress -> pending, not counted as an attempt: the agent declined it before starting.
   * A compare-and-set on the claim's holder too: a replica whose claim was reaped and handed to
   * another never releases the new holder's delivery.
   */
  async release(id: string, holder: string): Promise<boolean> {
    const { rows } = await this.db.query(
      `UPDATE dispatches SET state = 'pending', claimed_by = NULL, attempts = greatest(attempts - 1, 0),
              deadline_at = NULL, updated_at = now()
       WHERE id = $1 AND state = 'in_progress' AND claimed_by = $2 RETURNING id`,
      [id, holder],
    );
    return rows.length > 0;
  }

  /** in_progress -> done, only while `holder` still holds the claim (see release). */
  async complete(id: string, holder: string, result: unknown): Promise<boolean> {
    const { rows } = await this.db.query(
      `WITH done AS (
         UPDATE dispatches SET state = 'done', result = $3, error = NULL, updated_at = now()
         WHERE id = $1 AND state = 'in_progress' AND claimed_by = $2 RETURNING id, notify_done)
       SELECT id, CASE WHEN notify_done THEN pg_notify('${DISPATCH_DONE_CHANNEL}', id::text) END FROM done`,
      [id, holder, JSON.stringify(result ?? null)],
    );
    return rows.length > 0;
  }

  /**
   * in_progress -> failed, with what the agent returned (a job's exit code and output), only
   * while `holder` still holds the claim (see release).
   */
  async fail(id: string, holder: string, error: string, result?: unknown): Promise<boolean> {
    const { rows } = await this.db.query(
      `WITH failed AS (
         UPDATE dispatches SET state = 'failed', error = $3, result = coalesce($4, result), updated_at = now()
         WHERE id = $1 AND state = 'in_progress' AND claimed_by = $2 RETURNING id, notify_done)
       SELECT id, CASE WHEN notify_done THEN pg_notify('${DISPATCH_DONE_CHANNEL}', id::text) END FROM failed`,
      [id, holder, error.slice(0, 4000), result === undefined ? null : JSON.stringify(result)],
    );
    return rows.length > 0;
  }

  /**
   * In-progress dispatches past their deadline (a lost frame, a lost result, a dead hub): back to
   * pending, or failed once they have had maxAttempts. Returns the servers to wake.
   */
  async reap(maxAttempts: number): Promise<{ requeued: string[]; failed: number }> {
    const { rows } = await this.db.query<{
      id: string;
      server_id: string;
      state: DispatchState;
      notify_done: boolean;
    }>(
      `UPDATE dispatches SET
         state = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'pending' END,
         error = CASE WHEN attempts >= $1
           THEN 'gave up after ' || attempts || ' attempts: the agent reported no result before the deadline'
           ELSE error END,
         claimed_by = NULL, deadline_at = NULL, updated_at = now()
       WHERE state = 'in_progress' AND deadline_at < now()
       RETURNING id, server_id, state, notify_done`,
      [maxAttempts],
    );
    const requeued = [
      ...new Set(rows.filter((r) => r.state === "pending").map((r) => r.server_id)),
    ];
    for (const serverId of requeued)
      await this.db.query("SELECT pg_notify($1, $2)", [DISPATCH_CHANNEL, serverId]);
    for (const r of rows)
      if (r.state === "failed" && r.notify_done)
        await this.db.query("SELECT pg_notify($1, $2)", [DISPATCH_DONE_CHANNEL, r.id]);
    return { requeued, failed: rows.filter((r) => r.state === "failed").length };
  }

  /** How many dispatches have waited, pending, longer than this many seconds. */
  async countPendingOlderThan(seconds: number): Promise<number> {
    const { rows } = await this.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM dispatches WHERE state = 'pending' AND created_at < now() - make_interval(secs => $1)",
      [seconds],
    );
    return rows[0]!.n;
  }

  /** A server's dispatches handed out but not finished, oldest first. */
  async inProgressFor(serverId: string): Promise<Dispatch[]> {
    const { rows } = await this.db.query<DispatchRow>(
      `SELECT ${COLUMNS} FROM dispatches WHERE server_id = $1 AND state = 'in_progress'
       ORDER BY created_at, id`,
      [serverId],
    );
    return rows.map(toDispatch);
  }

  /** An in-progress dispatch taken over by the replica that now holds its agent. */
  async retake(id: string, hubId: string, deadlineSeconds = DEFAULT_DEADLINE_SECONDS) {
    const { rows } = await this.db.query<DispatchRow>(
      `UPDATE dispatches SET claimed_by = $2, deadline_at = now() + make_interval(secs => $3),
              updated_at = now()
       WHERE id = $1 AND state = 'in_progress' RETURNING ${COLUMNS}`,
      [id, hubId, deadlineSeconds],
    );
    return rows[0] ? toDispatch(rows[0]) : null;
  }

  /** A server's pending dispatches, oldest first: the order they were intended in. */
  async pendingFor(serverId: string, limit = 100): Promise<Dispatch[]> {
    const { rows } = await this.db.query<DispatchRow>(
      `SELECT ${COLUMNS} FROM dispatches WHERE server_id = $1 AND state = 'pending'
       ORDER BY created_at, id LIMIT $2`,
      [serverId, limit],
    );
    return rows.map(toDispatch);
  }

  /**
   * Pending dispatches of servers that no live replica holds but whose agent advertises an admin
   * endpoint (route() "direct" candidates for the sweep), oldest first.
   */
  async pendingForUnheldDirect(freshnessMs: number, limit = 100): Promise<Dispatch[]> {
    const { rows } = await this.db.query<DispatchRow>(
      `SELECT ${COLUMNS.replace(/(^|, |\n\s*)(\w+)/g, "$1d.$2")} FROM dispatches d JOIN servers s ON s.id = d.server_id
       WHERE d.state = 'pending' AND s.admin_url IS NOT NULL
         AND (s.status = 'offline' OR s.last_heartbeat < now() - make_interval(secs => $1))
       ORDER BY d.created_at, d.id LIMIT $2`,
      [freshnessMs / 1000, limit],
    );
    return rows.map(toDispatch);
  }

  async get(id: string): Promise<Dispatch> {
    const { rows } = await this.db.query<DispatchRow>(
      `SELECT ${COLUMNS} FROM dispatches WHERE id = $1`,
      [id],
    );
    if (!rows[0]) throw notFound(`dispatch ${id}`);
    return toDispatch(rows[0]);
  }

  async listFor(organizationId: string, serverId: string, limit: number): Promise<Dispatch[]> {
    const n = limit || 50;
    if (!Number.isInteger(n) || n < 1 || n > 500)
      throw invalid("limit", "must be between 1 and 500");
    const { rows } = await this.db.query<DispatchRow>(
      `SELECT ${COLUMNS} FROM dispatches WHERE organization_id = $1 AND server_id = $2
       ORDER BY created_at DESC, id DESC LIMIT $3`,
      [organizationId, serverId, n],
    );
    return rows.map(toDispatch);
  }
}
