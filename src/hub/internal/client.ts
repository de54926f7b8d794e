// The one client for every internal HTTP call a hub replica makes (hub -> agent admin today,
// hub -> gateway later): explicit deadline, a cap on the answer's size, retries only when the
// call is idempotent (jittered, capped), pooled keep-alive connections per origin in a bounded LRU with an idle TTL, and the
// request context (x-correlation-id, traceparent, x-tenant-id) on every request.
import { Pool } from "undici";
import {
  contextOrNew,
  contextToHttpHeaders,
  FlotillaError,
  type RequestContext,
} from "../../shared/index.js";

export interface InternalCall {
  method: "GET" | "POST";
  url: string;
  body?: string;
  headers?: Record<string, string>;
  /** The whole call, retries included, ends by then (milliseconds from now). Required. */
  deadlineMs: number;
  /**
   * Safe to send twice (a read, or a write the receiver deduplicates by id, as the agent's
   * ledger does for a dispatch). Only such calls are retried.
   */
  idempotent: boolean;
  /** Attempts after the first, for idempotent calls. Default 2. */
  retries?: number;
  /**
   * Headers computed for each attempt from what is sent (a signature whose timestamp must be
   * fresh on every attempt).
   */
  sign?: (method: string, path: string, body: string) => Record<string, string>;
  /** Default: the current request's context, or a new one. */
  context?: RequestContext;
  /** The answer's body is read up to this many bytes; past it the call fails. Default 1 MiB. */
  maxResponseBytes?: number;
}

/**
 * An answer larger than its cap: the peer (an endpoint an agent advertised, so not trusted) is
 * cut off rather than buffered, and the call is not retried (a second attempt would be as big).
 */
export class InternalResponseTooLarge extends FlotillaError {
  constructor(
    readonly origin: string,
    readonly limitBytes: number,
  ) {
    super(
      "agent.unavailable",
      `${origin} answered with more than ${limitBytes} bytes; the answer was cut off`,
    );
    this.name = "InternalResponseTooLarge";
  }
}

/**
 * 1 MiB: a dispatch answer is bounded like a frame on the channel (MAX_FRAME_BYTES), and a status
 * or a gateway's list is far smaller.
 */
export const DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024;

/** Reads a body up to `limit` bytes, destroying the stream past it. */
async function readCapped(
  body: AsyncIterable<Uint8Array> & { destroy(err?: Error): unknown },
  limit: number,
  origin: string,
): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.byteLength;
    if (size > limit) {
      const err = new InternalResponseTooLarge(origin, limit);
      body.destroy(err);
      throw err;
    }
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks).toString("utf8");
}

export interface InternalResponse {
  status: number;
  body: string;
  attempts: number;
  /** The response's headers (the first value of each). */
  headers: Record<string, string>;
  /** What `sign` added to the request that was answered (each attempt is signed anew). */
  signed: Record<string, string>;
}

export interface InternalClientOptions {
  /** Origins with a pool kept open; the least recently used is closed past this. Default 64. */
  maxOrigins?: number;
  /** A pool unused this long is closed. Default 30 s. */
  idleTtlMs?: number;
  /** Connections per origin. Default 8: internal calls are few and short, except a drain. */
  connectionsPerOrigin?: number;
  /** Backoff before retry n is random in [0, min(cap, base * 2^n)] ("full jitter"). */
  retryBaseMs?: number;
  retryCapMs?: number;
}

/** Statuses worth another attempt of an idempotent call: the peer or a proxy was unavailable. */
const RETRYABLE_STATUS = new Set([502, 503, 504]);
/** Deadlines outside this range are a caller's mistake (0 would mean "no deadline"). */
const MAX_DEADLINE_MS = 2 * 3600_000;

interface Entry {
  pool: Pool;
  lastUsed: number;
  inFlight: number;
}

export class InternalHttpClient {
  private readonly pools = new Map<string, Entry>();
  private readonly maxOrigins: number;
  private readonly idleTtlMs: number;
  private readonly connections: number;
  private readonly retryBaseMs: number;
  private readonly retryCapMs: number;
  private readonly reaper: NodeJS.Timeout;
  private closed = false;

  constructor(o: InternalClientOptions = {}) {
    this.maxOrigins = o.maxOrigins ?? 64;
    this.idleTtlMs = o.idleTtlMs ?? 30_000;
    this.connections = o.connectionsPerOrigin ?? 8;
    this.retryBaseMs = o.retryBaseMs ?? 50;
    this.retryCapMs = o.retryCapMs ?? 1000;
    this.reaper = setInterval(() => this.closeIdle(), Math.max(250, this.idleTtlMs / 2));
    this.reaper.unref();
  }

  /** Origins with an open pool, most recently used last (for tests and metrics). */
  origins(): string[] {
    return [...this.pools.keys()];
  }

  async call(c: InternalCall): Promise<InternalResponse> {
    if (this.closed) throw new FlotillaError("internal", "the internal HTTP client is closed");
    if (!Number.isFinite(c.deadlineMs) || c.deadlineMs <= 0 || c.deadlineMs > MAX_DEADLINE_MS)
      throw new FlotillaError(
        "internal",
        `an internal call needs a deadline between 1 ms and ${MAX_DEADLINE_MS} ms`,
      );
    const url = new URL(c.url);
    if (url.protocol !== "http:" && url.protocol !== "https:")
      throw new FlotillaError("internal", `internal calls speak http(s), not ${url.protocol}`);
    const path = `${url.pathname}${url.search}`;
    const body = c.body ?? "";
    const deadline = Date.now() + c.deadlineMs;
    const retries = c.idempotent ? (c.retries ?? 2) : 0;
    const maxBytes = c.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    const context = contextToHttpHeaders(c.context ?? contextOrNew());
    let lastError: unknown;
    for (let attempt = 0; attempt <= retries; attempt++) {
      if (attempt > 0) {
        const ceiling = Math.min(this.retryCapMs, this.retryBaseMs * 2 ** attempt);
        const pause = Math.random() * ceiling;
        if (Date.now() + pause >= deadline) break;
        await new Promise((resolve) => setTimeout(resolve, pause));
      }
      const remaining = deadline - Date.now();
      if (remaining <= 0) break;
      const entry = this.poolFor(url.origin);
      entry.inFlight++;
      try {
        const signed = c.sign?.(c.method, url.pathname, body) ?? {};
        const res = await entry.pool.request({
          method: c.method,
          path,
          headers: {
            ...context,
            ...(c.body !== undefined ? { "content-type": "application/json" } : {}),
            ...c.headers,
            ...signed,
          },
          ...(c.body !== undefined ? { body } : {}),
          signal: AbortSignal.timeout(remaining),
          headersTimeout: remaining,
          bodyTimeout: remaining,
        });
        const declared = Number(res.headers["content-length"]);
        if (Number.isFinite(declared) && declared > maxBytes) {
          res.body.destroy();
          throw new InternalResponseTooLarge(url.origin, maxBytes);
        }
        const text = await readCapped(res.body, maxBytes, url.origin);
        if (RETRYABLE_STATUS.has(res.statusCode) && attempt < retries) {
          lastError = new Error(`HTTP ${res.statusCode}`);
          continue;
        }
        const headers: Record<string, string> = {};
        for (const [name, value] of Object.entries(res.headers))
          if (value !== undefined) headers[name] = Array.isArray(value) ? value[0]! : value;
        return { status: res.statusCode, body: text, attempts: attempt + 1, headers, signed };
      } catch (err) {
        if (err instanceof InternalResponseTooLarge) throw err;
        lastError = err;
      } finally {
        entry.inFlight--;
        entry.lastUsed = Date.now();
      }
    }
    const reason = lastError instanceof Error ? lastError.message : "deadline passed";
    throw new FlotillaError(
      "agent.unavailable",
      `${c.method} ${url.origin}${url.pathname} failed within ${c.deadlineMs} ms: ${reason}`,
      { cause: lastError },
    );
  }

  private poolFor(origin: string): Entry {
    const found = this.pools.get(origin);
    if (found) {
      // Most recently used moves to the end: eviction takes from the front.
      this.pools.delete(origin);
      this.pools.set(origin, found);
      return found;
    }
    const entry: Entry = {
      pool: new Pool(origin, {
        connections: this.connections,
        keepAliveTimeout: this.idleTtlMs,
        connectTimeout: 5_000,
      }),
      lastUsed: Date.now(),
      inFlight: 0,
    };
    this.pools.set(origin, entry);
    while (this.pools.size > this.maxOrigins) {
      const [oldest, victim] = this.pools.entries().next().value as [string, Entry];
      this.pools.delete(oldest);
      // Requests in flight on it finish; close() only refuses new ones.
      void victim.pool.close().catch(() => {});
    }
    return entry;
  }

  private closeIdle(): void {
    const cutoff = Date.now() - this.idleTtlMs;
    for (const [origin, entry] of this.pools) {
      if (entry.inFlight === 0 && entry.lastUsed < cutoff) {
        this.pools.delete(origin);
        void entry.pool.close().catch(() => {});
      }
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.reaper);
    const pools = [...this.pools.values()];
    this.pools.clear();
    await Promise.all(pools.map((e) => e.pool.destroy().catch(() => {})));
  }
}
