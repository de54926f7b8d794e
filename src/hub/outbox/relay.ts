// The outbox relay: publishes committed, unpublished events to the bus and marks them published.
import type { Logger } from "../../shared/index.js";
import { type Db, WakeLoop } from "../../store/index.js";
import type { EventBus } from "./bus.js";
import { EVENT_COLUMNS, OUTBOX_CHANNEL, type StoredEvent, toEvent } from "./events.js";

export interface RelayOptions {
  /** Events per claim. Default 100. */
  batchSize?: number;
  /**
   * Claims drained at once (each its own transaction; SKIP LOCKED keeps them disjoint), so at most
   * batchSize x concurrency publishes are in flight. Default 1; the nats bus runs 4.
   */
  concurrency?: number;
  /** Poll even without a wake-up, in case one was lost. Default 1 s. */
  pollIntervalMs?: number;
  /** After a failed drain (the bus is down), wait this long, doubling per failure. Default 250 ms. */
  backoffBaseMs?: number;
  /** The longest wait between retries while the bus stays down. Default 30 s. */
  backoffMaxMs?: number;
  /**
   * Fault injection for the crash tests: SIGKILL this process after the bus acknowledged a batch
   * and before the rows are marked published, once this many events have been published.
   */
  killAfterPublished?: number;
  /** Told how many events each claim published and marked, and of each failed drain. */
  observe?: { published(n: number): void; failed(): void };
}

export class OutboxRelay {
  private readonly loop: WakeLoop;
  private failures = 0;
  private backoffUntil = 0;
  private published = 0;

  constructor(
    private readonly db: Db,
    private readonly bus: EventBus,
    private readonly logger: Logger,
    private readonly options: RelayOptions = {},
  ) {
    this.loop = new WakeLoop(db, {
      channel: OUTBOX_CHANNEL,
      pollIntervalMs: options.pollIntervalMs ?? 1000,
      pass: () => this.drainPass(),
      // While the bus is down, wake-ups wait for the backoff: the outbox absorbs the outage.
      ready: () => Date.now() >= this.backoffUntil,
    });
  }

  start(): Promise<void> {
    return this.loop.start();
  }

  /** Coalesces wake-ups: one drain at a time, and exactly one more if woken during it. */
  wake(): void {
    this.loop.wake();
  }

  private async drainPass(): Promise<void> {
    try {
      await this.drainAll();
      if (this.failures > 0)
        this.logger.info({ failures: this.failures }, "outbox relay recovered");
      this.failures = 0;
    } catch (err) {
      this.failures += 1;
      this.options.observe?.failed();
      const base = this.options.backoffBaseMs ?? 250;
      const cap = this.options.backoffMaxMs ?? 30_000;
      // Full jitter over the upper half: replicas that failed together do not retry together.
      const ceiling = Math.min(cap, base * 2 ** Math.min(this.failures - 1, 20));
      const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
      this.backoffUntil = Date.now() + delay;
      setTimeout(() => this.wake(), delay).unref();
      this.logger.warn(
        { err, failures: this.failures, retryInMs: delay },
        "outbox relay drain failed; backing off",
      );
    }
  }

  /** Publishes everything pending now; resolves when the outbox is empty. */
  async drainAll(): Promise<number> {
    const loop = async () => {
      let total = 0;
      for (;;) {
        const n = await this.drainOnce();
        total += n;
        if (n < (this.options.batchSize ?? 100)) return total;
      }
    };
    const counts = await Promise.all(Array.from({ length: this.options.concurrency ?? 1 }, loop));
    return counts.reduce((a, b) => a + b, 0);
  }

  private async drainOnce(): Promise<number> {
    const batch = this.options.batchSize ?? 100;
    return this.db.tx(async (tx) => {
      // SKIP LOCKED: relays on several replicas split the work instead of publishing twice.
      const { rows } = await tx.query<Parameters<typeof toEvent>[0]>(
        `SELECT ${EVENT_COLUMNS} FROM outbox_events WHERE published_at IS NULL
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`,
        [batch],
      );
      if (rows.length === 0) return 0;
      const events: StoredEvent[] = rows.map(toEvent);
      await this.bus.publish(events);
      this.published += events.length;
      const killAt = this.options.killAfterPublished;
      if (killAt !== undefined && this.published >= killAt) process.kill(process.pid, "SIGKILL");
      await tx.query("UPDATE outbox_events SET published_at = now() WHERE id = ANY($1::uuid[])", [
        events.map((e) => e.id),
      ]);
      this.options.observe?.published(events.length);
      return events.length;
    });
  }

  stop(): Promise<void> {
    return this.loop.stop();
  }
}
