// The data-plane controller: claims due converge requests (one replica per data plane at a time), runs the provisioner, records each link's observed status.
import { randomUUID } from "node:crypto";
import type { Logger } from "../../shared/index.js";
import type { Db } from "../../store/index.js";
import { lockDataPlane, type Provider } from "./links.js";
import {
  type DesiredLink,
  type LinkResult,
  PROVISIONER_CONTRACT_VERSION,
  type Provisioner,
  withoutNul,
} from "./provisioners.js";

/** The NOTIFY channel the links trigger signals on; the payload is the data plane id. */
export const DATA_PLANES_CHANNEL = "flotilla_dataplanes";

export interface DataPlaneControllerOptions {
  db: Db;
  /** This hub replica's instance id: claims name it. */
  instanceId: string;
  /** By name; a data plane's `provisioner` column picks one. */
  provisioners: Map<string, Provisioner>;
  logger: Logger;
  /**
   * How long a claim holds without renewal. Renewed every third of it while the provisioner runs,
   * so it only runs out when the replica died or stalled; then another replica takes over.
   * Default 30 s.
   */
  leaseMs?: number;
  /** How often due requests are looked for (lost signals, retries, a dead replica's claims). Default 5 s. */
  sweepIntervalMs?: number;
  /**
   * Quiet time after a change before converging, so a burst of changes makes one converge.
   * Default 200 ms; never more than maxDelayMs after the first change of the burst (default 5 s).
   */
  settleMs?: number;
  maxDelayMs?: number;
  /** Retry delay after a failed run: baseMs doubling per attempt up to capMs, with jitter. */
  backoff?: { baseMs: number; capMs: number };
  /**
   * A data plane with links the provisioner reported `pending` is converged again this long
   * after its last converge, with no change needed (an endpoint awaiting acceptance gets there on
   * its own). Default 60 s.
   */
  pendingRecheckMs?: number;
  /** Data planes converged at once by this replica. Default 4. */
  concurrency?: number;
  /** Called after every converge that ran the provisioner (tests, metrics, benchmarks). */
  onConverge?: (report: ConvergeReport) => void;
}

export interface ConvergeReport {
  dataPlaneId: string;
  /** The request count this converge covered. */
  request: number;
  ok: boolean;
  links: number;
  /** Link statuses written. */
  applied: number;
  /** Results dropped because the link moved to a newer generation (or was removed) meanwhile. */
  discarded: number;
  error?: string;
  ms: number;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** Errors recorded on the data plane are capped: a provisioner's stderr tail is already cut to 2 KiB. */
const MAX_ERROR = 4000;

interface LinkRow {
  id: string;
  generation: number;
  provider: Provider;
  service_identity: string;
  config: Record<string, unknown>;
}

export class DataPlaneController {
  private readonly leaseMs: number;
  private readonly settleMs: number;
  private readonly maxDelayMs: number;
  private readonly backoff: { baseMs: number; capMs: number };
  private readonly concurrency: number;
  /** Per data plane: the debounce timer of a burst, and when the burst began. */
  private readonly pending = new Map<string, { timer: NodeJS.Timeout; firstAt: number }>();
  private readonly retries = new Map<string, NodeJS.Timeout>();
  private readonly queue: string[] = [];
  private readonly queued = new Set<string>();
  private readonly inFlight = new Map<string, { done: Promise<void>; abort: AbortController }>();
  /** Woken while converging: look again once this converge is done. */
  private readonly again = new Set<string>();
  private unlisten: (() => Promise<void>) | undefined;
  private sweeper: NodeJS.Timeout | undefined;
  private closed = false;
  readonly stats = { converges: 0, failures: 0, discarded: 0, claimsLost: 0 };

  constructor(private readonly o: DataPlaneControllerOptions) {
    this.leaseMs = o.leaseMs ?? 30_000;
    this.settleMs = o.settleMs ?? 200;
    this.maxDelayMs = o.maxDelayMs ?? 5_000;
    this.backoff = o.backoff ?? { baseMs: 1_000, capMs: 300_000 };
    this.concurrency = o.concurrency ?? 4;
  }

  async start(): Promise<void> {
    this.unlisten = await this.o.db.listen(
      DATA_PLANES_CHANNEL,
      (payload) => this.wake(payload),
      // Signals sent while the listener was reconnecting are lost: the rows are not.
      () => void this.sweep(),
    );
    this.sweeper = setInterval(() => void this.sweep(), this.o.sweepIntervalMs ?? 5_000);
    this.sweeper.unref();
    await this.sweep();
  }

  /**
   * A data plane's links changed (or may have): converge it once the burst settles. Only wakes:
   * whether there is anything to do is decided by the claim on the durable request row.
   */
  wake(dataPlaneId: string): void {
    if (this.closed || !UUID.test(dataPlaneId)) return;
    if (this.inFlight.has(dataPlaneId)) {
      this.again.add(dataPlaneId);
      return;
    }
    const now = Date.now();
    const burst = this.pending.get(dataPlaneId);
    const firstAt = burst?.firstAt ?? now;
    if (burst) clearTimeout(burst.timer);
    const delay = Math.max(0, Math.min(this.settleMs, firstAt + this.maxDelayMs - now));
    const timer = setTimeout(() => {
      this.pending.delete(dataPlaneId);
      this.enqueue(dataPlaneId);
    }, delay);
    this.pending.set(dataPlaneId, { timer, firstAt });
  }

  /** Looks for due requests in the rows (never trusting that a signal arrived) and converges them. */
  async sweep(): Promise<void> {
    if (this.closed) return;
    try {
      // Links still pending after a converge are looked at again: a request like a change's.
      await this.o.db.query(
        `UPDATE data_plane_converge_requests r SET requested = requested + 1, requested_at = now()
         WHERE requested = converged AND claimed_by IS NULL
           AND converged_at < now() - make_interval(secs => $1)
           AND EXISTS (SELECT 1 FROM data_plane_private_links l
                       WHERE l.data_plane_id = r.data_plane_id AND l.status = 'pending')`,
        [(this.o.pendingRecheckMs ?? 60_000) / 1000],
      );
      const { rows } = await this.o.db.query<{ data_plane_id: string }>(
        `SELECT data_plane_id FROM data_plane_converge_requests
         WHERE requested > converged AND (claimed_by IS NULL OR claimed_until < now())
           AND (next_attempt_at IS NULL OR next_attempt_at <= now())
         ORDER BY requested_at LIMIT 200`,
      );
      for (const r of rows) if (!this.pending.has(r.data_plane_id)) this.enqueue(r.data_plane_id);
    } catch (err) {
      if (!this.closed)
        this.o.logger.warn({ err }, "data plane sweep failed; the next tick retries");
    }
  }

  /** Stops waking, stops running provisioners (their claims are released), waits for them. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.sweeper);
    for (const { timer } of this.pending.values()) clearTimeout(timer);
    for (const timer of this.retries.values()) clearTimeout(timer);
    this.pending.clear();
    this.queue.length = 0;
    this.queued.clear();
    await this.unlisten?.().catch(() => {});
    for (const f of this.inFlight.values()) f.abort.abort();
    await Promise.all([...this.inFlight.values()].map((f) => f.done));
  }

  private enqueue(id: string): void {
    if (this.closed) return;
    if (this.inFlight.has(id)) {
      this.again.add(id);
      return;
    }
    if (this.queued.has(id)) return;
    this.queued.add(id);
    this.queue.push(id);
    this.pump();
  }

  private pump(): void {
    while (!this.closed && this.inFlight.size < this.concurrency && this.queue.length > 0) {
      const id = this.queue.shift()!;
      this.queued.delete(id);
      const abort = new AbortController();
      const done = this.converge(id, abort.signal)
        .catch((err) => {
          if (!this.closed)
            this.o.logger.error({ err, dataPlaneId: id }, "data plane converge failed");
        })
        .finally(() => {
          this.inFlight.delete(id);
          if (this.again.delete(id)) this.wake(id);
          this.pump();
        });
      this.inFlight.set(id, { done, abort });
    }
  }

  /** One converge of one data plane, if its request is due and this replica wins the claim. */
  private async converge(id: string, signal: AbortSignal): Promise<void> {
    const db = this.o.db;
    const token = `${this.o.instanceId}/${randomUUID()}`;
    const leaseSeconds = this.leaseMs / 1000;
    // The claim: a compare-and-set. Losing it (nothing due, another replica holds it, a retry not
    // yet due) is not an error: whoever holds it converges, and sees what arrived meanwhile.
    const { rows: claimed } = await db.query<{ requested: number; attempts: number }>(
      `UPDATE data_plane_converge_requests
       SET claimed_by = $2, claimed_until = now() + make_interval(secs => $3)
       WHERE data_plane_id = $1 AND requested > converged
         AND (claimed_by IS NULL OR claimed_until < now())
         AND (next_attempt_at IS NULL OR next_attempt_at <= now())
       RETURNING requested, attempts`,
      [id, token, leaseSeconds],
    );
    const claim = claimed[0];
    if (!claim) return;
    const started = performance.now();
    const request = Number(claim.requested);
    const { rows: planes } = await db.query<{
      organization_id: string;
      name: string;
      region: string | null;
      provisioner: string;
    }>("SELECT organization_id, name, region, provisioner FROM data_planes WHERE id = $1", [id]);
    const plane = planes[0];
    if (!plane) return; // Deleted meanwhile: its request row went with it.
    // Pin each link's (id, generation): results are recorded against these, never a newer one.
    const { rows: links } = await db.query<LinkRow>(
      `SELECT id, generation, provider, service_identity, config FROM data_plane_private_links
       WHERE data_plane_id = $1 ORDER BY created_at, id`,
      [id],
    );
    const desired: DesiredLink[] = links.map((l) => ({
      id: l.id,
      generation: Number(l.generation),
      provider: l.provider,
      serviceIdentity: l.service_identity,
      config: l.config,
    }));
    const report = (r: Partial<ConvergeReport> & { ok: boolean }) =>
      this.o.onConverge?.({
        dataPlaneId: id,
        request,
        links: desired.length,
        applied: 0,
        discarded: 0,
        ms: performance.now() - started,
        ...r,
      });

    const provisioner = this.o.provisioners.get(plane.provisioner);
    if (!provisioner) {
      const error = `provisioner "${plane.provisioner}" is not configured on this hub (configured: ${[...this.o.provisioners.keys()].join(", ")}); set FLOTILLA_PROVISIONERS on every replica`;
      await this.fail(id, token, claim.attempts, error);
      report({ ok: false, error });
      return;
    }

    // Keep the claim while the provisioner runs; if it cannot be renewed, another replica took
    // over (this one stalled past the lease): stop, and write nothing.
    let lost = false;
    const run = new AbortController();
    const renew = setInterval(() => {
      db.query(
        `UPDATE data_plane_converge_requests SET claimed_until = now() + make_interval(secs => $3)
         WHERE data_plane_id = $1 AND claimed_by = $2`,
        [id, token, leaseSeconds],
      ).then(
        (r) => {
          if (r.rowCount === 0 && !lost) {
            lost = true;
            run.abort();
          }
        },
        () => {},
      );
    }, this.leaseMs / 3);
    const onStop = () => run.abort();
    signal.addEventListener("abort", onStop, { once: true });
    let results: LinkResult[];
    try {
      results = withoutNul(
        await provisioner.provision(
          {
            version: PROVISIONER_CONTRACT_VERSION,
            dataPlane: {
              id,
              organizationId: plane.organization_id,
              name: plane.name,
              region: plane.region,
            },
            links: desired,
          },
          run.signal,
        ),
      );
    } catch (err) {
      const error = withoutNul((err as Error).message).slice(0, MAX_ERROR);
      if (lost) {
        this.stats.claimsLost++;
        this.o.logger.warn(
          { dataPlaneId: id },
          "data plane claim lost mid-converge; another replica took over",
        );
      } else if (signal.aborted) {
        // Shutting down: hand the request back untouched (no attempt counted) for another replica.
        await db
          .query(
            `UPDATE data_plane_converge_requests SET claimed_by = NULL, claimed_until = NULL
             WHERE data_plane_id = $1 AND claimed_by = $2`,
            [id, token],
          )
          .catch(() => {});
      } else await this.fail(id, token, claim.attempts, error);
      report({ ok: false, error });
      return;
    } finally {
      clearInterval(renew);
      signal.removeEventListener("abort", onStop);
    }

    // Results by link id, against the pinned generation. Links the provisioner did not mention
    // are pending (not provisioned yet); results for ids it was not given are ignored.
    const pinned = new Map(desired.map((l) => [l.id, l.generation]));
    const writes = new Map<
      string,
      { id: string; generation: number; status: string; details: unknown; error: string | null }
    >();
    let discarded = 0;
    for (const r of results) {
      const generation = pinned.get(r.id);
      if (generation === undefined) continue;
      if (r.generation !== undefined && r.generation !== generation) {
        discarded++;
        continue;
      }
      writes.set(r.id, {
        id: r.id,
        generation,
        status: r.status,
        details: r.details ?? null,
        error: r.status === "failed" ? (r.error ?? "the provisioner gave no reason") : null,
      });
    }
    for (const l of desired)
      if (!writes.has(l.id))
        writes.set(l.id, {
          id: l.id,
          generation: l.generation,
          status: "pending",
          details: null,
          error: null,
        });

    let outcome: { applied: number; requestedNow: number } | undefined;
    try {
      outcome = await db.tx(async (tx) => {
        // After the link changes committed on this data plane, before any waiting: see lockDataPlane.
        await lockDataPlane(tx, id);
        // Observed columns only, and only where the generation is still the pinned one: a link
        // changed mid-converge keeps its reset (pending) status for the next converge to settle.
        // Writing these columns fires no trigger, so observing never requests another converge.
        const { rowCount } = await tx.query(
          `UPDATE data_plane_private_links l
           SET status = r.status, details = r.details, error = r.error, observed_at = now()
           FROM jsonb_to_recordset($2::jsonb)
             AS r(id uuid, generation bigint, status text, details jsonb, error text)
           WHERE l.id = r.id AND l.generation = r.generation AND l.data_plane_id = $1`,
          [id, JSON.stringify([...writes.values()])],
        );
        const { rows: done } = await tx.query<{ requested: number }>(
          `UPDATE data_plane_converge_requests
           SET converged = GREATEST(converged, $3), converged_at = now(), claimed_by = NULL,
               claimed_until = NULL, attempts = 0, last_error = NULL, next_attempt_at = NULL
           WHERE data_plane_id = $1 AND claimed_by = $2
           RETURNING requested`,
          [id, token, request],
        );
        if (!done[0]) throw new ClaimLost();
        return { applied: rowCount, requestedNow: Number(done[0].requested) };
      });
    } catch (err) {
      if (!(err instanceof ClaimLost)) {
        // The results could not be written (the store refused a value, or is down): a failed run
        // like any other, so the error is recorded and the retry waits for the backoff rather
        // than rerunning the provisioner every lease.
        const error =
          `recording the provisioner's results failed: ${withoutNul((err as Error).message)}`.slice(
            0,
            MAX_ERROR,
          );
        await this.fail(id, token, claim.attempts, error);
        report({ ok: false, error });
        return;
      }
      this.stats.claimsLost++;
      this.o.logger.warn(
        { dataPlaneId: id },
        "data plane claim lost before recording; nothing written",
      );
      report({ ok: false, error: "claim lost" });
      return;
    }
    discarded += writes.size - outcome.applied;
    this.stats.converges++;
    this.stats.discarded += discarded;
    const ms = performance.now() - started;
    this.o.logger.info(
      {
        dataPlaneId: id,
        request,
        links: desired.length,
        applied: outcome.applied,
        discarded,
        ms: Math.round(ms),
      },
      "data plane converged",
    );
    report({ ok: true, applied: outcome.applied, discarded, ms });
    // Changes that arrived during this converge: exactly one more converge covers them all.
    if (outcome.requestedNow > request) this.again.add(id);
  }

  /**
   * The run failed as a whole: every link keeps its last status, the error is recorded on the
   * data plane, and the request is retried after a backoff (doubling, capped, with jitter).
   */
  private async fail(id: string, token: string, attempts: number, error: string): Promise<void> {
    this.stats.failures++;
    const delayMs = Math.round(
      Math.min(this.backoff.capMs, this.backoff.baseMs * 2 ** Math.min(attempts, 20)) *
        (0.5 + Math.random() / 2),
    );
    try {
      await this.o.db.query(
        `UPDATE data_plane_converge_requests
         SET claimed_by = NULL, claimed_until = NULL, attempts = attempts + 1, last_error = $3,
             next_attempt_at = now() + make_interval(secs => $4)
         WHERE data_plane_id = $1 AND claimed_by = $2`,
        [id, token, withoutNul(error), delayMs / 1000],
      );
    } catch (err) {
      // The store is down: the claim lapses with its lease, and the local retry below still
      // waits for the backoff before claiming again.
      this.o.logger.error(
        { err, dataPlaneId: id, error },
        "could not record the data plane's converge failure",
      );
    }
    this.o.logger.warn(
      { dataPlaneId: id, error, retryInMs: delayMs },
      "data plane converge failed; retrying later",
    );
    if (this.closed) return;
    clearTimeout(this.retries.get(id));
    const timer = setTimeout(() => {
      this.retries.delete(id);
      this.enqueue(id);
    }, delayMs + 50);
    timer.unref();
    this.retries.set(id, timer);
  }
}

class ClaimLost extends Error {}
