// A worker woken by NOTIFY on a channel, with a poll as the fallback for a lost wake-up, that runs
// one pass at a time: a wake-up during a pass makes exactly one more.
import type { Db } from "./db.js";

export interface WakeLoopOptions {
  channel: string;
  /** Poll even without a wake-up, in case one was lost. */
  pollIntervalMs: number;
  /** One pass of the work; it handles its own errors (it must not reject). */
  pass: () => Promise<void>;
  /** A wake-up is ignored while this answers false (a backoff in progress). */
  ready?: () => boolean;
}

export class WakeLoop {
  private running = false;
  private current: Promise<void> | null = null;
  private again = false;
  private timer: NodeJS.Timeout | undefined;
  private unlisten: (() => Promise<void>) | undefined;

  constructor(
    private readonly db: Db,
    private readonly o: WakeLoopOptions,
  ) {}

  async start(): Promise<void> {
    this.running = true;
    // A re-opened listener may have missed notifications: a pass reads what they announced.
    this.unlisten = await this.db.listen(
      this.o.channel,
      () => this.wake(),
      () => this.wake(),
    );
    const tick = () => {
      this.timer = setTimeout(() => {
        this.wake();
        if (this.running) tick();
      }, this.o.pollIntervalMs);
      this.timer.unref();
    };
    tick();
    this.wake();
  }

  wake(): void {
    if (!this.running || (this.o.ready && !this.o.ready())) return;
    if (this.current) {
      this.again = true;
      return;
    }
    this.current = this.o.pass().finally(() => {
      this.current = null;
      if (this.again) {
        this.again = false;
        this.wake();
      }
    });
  }

  /** Stops waking, waits for the pass in progress, and stops listening. */
  async stop(): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    await this.current;
    await this.unlisten?.();
  }
}
