// The fleet health view: probes every member of an organization's fleet through the prober of
// its kind, a bounded number at a time, and caches the answer for a short TTL with one probe
// round in flight per organization, so a refresh storm does not become a probe storm.
import { invalid } from "../../shared/index.js";
import type { FleetProber, FleetTarget, ProbeResult } from "./ports.js";

export interface FleetMember extends FleetTarget, ProbeResult {}

export interface FleetStatus {
  members: FleetMember[];
  probedAt: Date;
  cached: boolean;
}

export interface FleetOptions {
  /** Probes running at once, per hub replica. Default 8. */
  concurrency?: number;
  /** A probe that has not answered by then counts as unreachable. Default 2 s. */
  probeDeadlineMs?: number;
  /** Answers are reused this long. Default 5 s. */
  ttlMs?: number;
  /** A refresh within this long of the last round is answered from it. Default 1 s. */
  minRefreshMs?: number;
}

const MAX_KINDS = 8;

interface Round {
  at: number;
  result: Promise<FleetMember[]>;
}

export class FleetService {
  private readonly probers = new Map<string, FleetProber>();
  private readonly rounds = new Map<string, Round>();
  private readonly concurrency: number;
  private readonly probeDeadlineMs: number;
  private readonly ttlMs: number;
  private readonly minRefreshMs: number;
  /** Probes running now on this replica, across organizations (the limit is global). */
  private running = 0;
  private readonly queue: Array<() => void> = [];

  constructor(probers: FleetProber[], o: FleetOptions = {}) {
    for (const p of probers) this.probers.set(p.kind, p);
    this.concurrency = o.concurrency ?? 8;
    this.probeDeadlineMs = o.probeDeadlineMs ?? 2000;
    this.ttlMs = o.ttlMs ?? 5000;
    this.minRefreshMs = o.minRefreshMs ?? 1000;
  }

  kinds(): string[] {
    return [...this.probers.keys()];
  }

  async status(organizationId: string, kinds: string[], refresh: boolean): Promise<FleetStatus> {
    if (kinds.length > MAX_KINDS) throw invalid("kinds", `at most ${MAX_KINDS} kinds`);
    for (const [i, k] of kinds.entries())
      if (!this.probers.has(k))
        throw invalid(`kinds[${i}]`, `must be one of ${this.kinds().join(", ")}`);
    const wanted = kinds.length ? [...new Set(kinds)].sort() : this.kinds().sort();
    const key = `${organizationId}|${wanted.join(",")}`;
    const now = Date.now();
    const last = this.rounds.get(key);
    const age = last ? now - last.at : Number.POSITIVE_INFINITY;
    if (last && (age < this.minRefreshMs || (!refresh && age < this.ttlMs))) {
      const members = await last.result;
      return { members, probedAt: new Date(last.at), cached: true };
    }
    const round: Round = { at: now, result: this.probeAll(organizationId, wanted) };
    this.rounds.set(key, round);
    // A failed round is not cached: the next request tries again.
    round.result.catch(() => {
      if (this.rounds.get(key) === round) this.rounds.delete(key);
    });
    this.forgetOld(now);
    return { members: await round.result, probedAt: new Date(round.at), cached: false };
  }

  private forgetOld(now: number): void {
    for (const [key, round] of this.rounds)
      if (now - round.at > this.ttlMs * 4) this.rounds.delete(key);
  }

  private async probeAll(organizationId: string, kinds: string[]): Promise<FleetMember[]> {
    const targets = (
      await Promise.all(kinds.map((k) => this.probers.get(k)!.list(organizationId)))
    ).flat();
    return Promise.all(targets.map((t) => this.limited(() => this.probeOne(t))));
  }

  private async probeOne(t: FleetTarget): Promise<FleetMember> {
    const prober = this.probers.get(t.kind)!;
    try {
      return { ...t, ...(await prober.probe(t, this.probeDeadlineMs)) };
    } catch (err) {
      return {
        ...t,
        health: "unreachable",
        probe: "none",
        detail: (err as Error).message.slice(0, 500),
      };
    }
  }

  /** Runs fn when fewer than `concurrency` probes are running. */
  private async limited<T>(fn: () => Promise<T>): Promise<T> {
    // A finishing probe hands its slot straight to the next waiter, so the count never
    // overshoots between one leaving and the next starting.
    if (this.running >= this.concurrency)
      await new Promise<void>((resolve) => this.queue.push(resolve));
    else this.running++;
    try {
      return await fn();
    } finally {
      const next = this.queue.shift();
      if (next) next();
      else this.running--;
    }
  }
}
