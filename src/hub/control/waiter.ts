// The synchronous API over asynchronous delivery: a replica that takes a lifecycle request waits
// for the dispatch's outcome whichever replica (or agent endpoint) executes it. It subscribes to
// the service's events before the intent is written, waits with a rolling timeout that every
// progress event resets, and re-reads the row (the truth) on every wake-up and at the timeout.
import { AsyncLocalStorage } from "node:async_hooks";
import type { Interceptor } from "@connectrpc/connect";
import { FlotillaError, invalid } from "../../shared/index.js";
import type { Db } from "../../store/index.js";
import type { EventBus } from "../outbox/index.js";
import { DISPATCH_DONE_CHANNEL, type Dispatch, type DispatchStore } from "../servers/index.js";

/** The longest a caller may ask a replica to wait without progress: a job's longest timeout. */
export const MAX_WAIT_SECONDS = 3600;

/** A dispatch written by a request: what route() needs, without reading the row again. */
export interface Written {
  id: string;
  serverId: string;
}

// Dispatches written by the code running in this scope: routed once their transaction commits.
const written = new AsyncLocalStorage<{ ids: Written[]; waited?: boolean }>();

/** Called where an intent is inserted; it is routed after the request's transaction commits. */
export function noteDispatch(id: string, serverId: string): void {
  written.getStore()?.ids.push({ id, serverId });
}

/** True where the dispatch being written will be waited for (it must signal its outcome). */
export function dispatchWaitedFor(): boolean {
  return written.getStore()?.waited === true;
}

/** Runs fn and returns the ids of the dispatches it wrote (and committed, if it returned). */
export async function captureDispatches<T>(
  fn: () => Promise<T>,
  waited = false,
): Promise<{ value: T; ids: Written[] }> {
  const scope = { ids: [] as Written[], waited };
  const value = await written.run(scope, fn);
  return { value, ids: scope.ids };
}

/**
 * Routes every dispatch a unary RPC wrote, after its handler returned (its transaction committed):
 * the caller does not wait for delivery; the handlers that wait route their own.
 */
export function routingInterceptor(route: (d: Written) => void): Interceptor {
  return (next) => async (req) => {
    if (req.stream) return next(req);
    const scope = { ids: [] as Written[] };
    try {
      return await written.run(scope, () => next(req));
    } finally {
      for (const d of scope.ids) route(d);
    }
  };
}

const TERMINAL = new Set(["done", "failed"]);

export interface WaitOptions {
  organizationId: string;
  /** Events about this service (status changes, requests) count as progress. */
  serviceId: string;
  /** Rolling: the wait ends after this long without progress. 0 = do not wait. */
  waitSeconds: number;
  /** Aborted when the caller goes away or the hub shuts down. */
  signal: AbortSignal;
}

export class DispatchWaiter {
  private readonly waiting = new Map<string, Set<() => void>>();
  private unlisten: (() => Promise<void>) | undefined;

  constructor(
    private readonly db: Db,
    private readonly dispatches: DispatchStore,
    private readonly events: EventBus,
    private readonly route: (d: Written) => void,
  ) {}

  async start(): Promise<void> {
    this.unlisten = await this.db.listen(
      DISPATCH_DONE_CHANNEL,
      (id) => this.wakeAll(id),
      // Signals lost while the listener reconnected: every waiter re-reads its row.
      () => {
        for (const id of this.waiting.keys()) this.wakeAll(id);
      },
    );
  }

  private wakeAll(id: string): void {
    for (const wake of this.waiting.get(id) ?? []) wake();
  }

  /** Refuses a bad wait before anything is written. */
  static check(waitSeconds: number): number {
    if (!Number.isInteger(waitSeconds) || waitSeconds < 0 || waitSeconds > MAX_WAIT_SECONDS)
      throw invalid(
        "wait_seconds",
        `must be an integer from 0 (do not wait) to ${MAX_WAIT_SECONDS}`,
      );
    return waitSeconds;
  }

  /**
   * Runs write (which writes the intent in its transaction), routes what it wrote, and, when
   * waitSeconds > 0, waits for the last dispatch's outcome. On timeout: dispatch.timeout with the
   * dispatch id; the work goes on.
   */
  async around<T>(
    o: WaitOptions,
    write: () => Promise<T>,
  ): Promise<{ value: T; dispatch: Dispatch | null }> {
    const waitSeconds = DispatchWaiter.check(o.waitSeconds);
    // Subscribed before the intent exists, so no progress event can slip between the two.
    let progressed = false;
    // Bumped by every signal: one that lands while the row is being read is not slept through.
    let signals = 0;
    let wake: (() => void) | undefined;
    const unsubscribe =
      waitSeconds > 0
        ? this.events.subscribe((e) => {
            if (e.organizationId !== o.organizationId) return;
            if (e.subjectId !== o.serviceId && e.payload.service_id !== o.serviceId) return;
            progressed = true;
            signals++;
            wake?.();
          })
        : () => {};
    try {
      const { value, ids } = await captureDispatches(write, waitSeconds > 0);
      for (const d of ids) this.route(d);
      const id = ids.at(-1)?.id;
      if (waitSeconds === 0 || !id) return { value, dispatch: null };
      const wakers = this.waiting.get(id) ?? new Set<() => void>();
      const onDone = () => {
        signals++;
        wake?.();
      };
      wakers.add(onDone);
      this.waiting.set(id, wakers);
      const onAbort = () => wake?.();
      o.signal.addEventListener("abort", onAbort);
      try {
        let deadline = Date.now() + waitSeconds * 1000;
        for (;;) {
          const seen = signals;
          const d = await this.dispatches.get(id);
          if (TERMINAL.has(d.state)) return { value, dispatch: d };
          if (progressed) {
            progressed = false;
            deadline = Date.now() + waitSeconds * 1000;
          }
          if (o.signal.aborted)
            throw new FlotillaError(
              "server.draining",
              `stopped waiting for dispatch ${id} (the call ended or the hub is stopping); it goes on`,
            );
          const left = deadline - Date.now();
          if (left <= 0)
            throw new FlotillaError(
              "dispatch.timeout",
              `dispatch ${id} (${d.op}) is still ${d.state} after ${waitSeconds} s without progress; it goes on: follow it with flotilla servers dispatches, or ask again with a longer wait_seconds`,
              { field: "wait_seconds" },
            );
          await new Promise<void>((resolve) => {
            // A progress event or the done signal came in while the row was read: read again.
            if (signals !== seen) return resolve();
            const timer = setTimeout(resolve, left);
            wake = () => {
              clearTimeout(timer);
              resolve();
            };
          });
          wake = undefined;
        }
      } finally {
        o.signal.removeEventListener("abort", onAbort);
        wakers.delete(onDone);
        if (wakers.size === 0) this.waiting.delete(id);
      }
    } finally {
      unsubscribe();
    }
  }

  async close(): Promise<void> {
    await this.unlisten?.();
  }
}
