// The gateway's access log: one JSON line per request, written in large batches off the hot path.
import { pino } from "pino";
import { hundredthsText, isoNow, jsonString } from "../shared/index.js";
import type { AccessLogRecord } from "./proxy.js";

/** Where batches go: by default stdout, asynchronously (a line never waits on stdout). */
export interface AccessLogSink {
  /** A batch of whole UTF-8 lines; the sink owns the buffer from here on. */
  write(batch: Buffer): unknown;
  flush?(): void;
  /** Writes what the sink holds before the process exits (SonicBoom has it). */
  flushSync?(): void;
}

/** stdout through SonicBoom (pino's asynchronous destination), taking buffers as they are. */
function stdoutSink(): AccessLogSink {
  const stdout = pino.destination({ sync: false, contentMode: "buffer" });
  return {
    // In buffer mode SonicBoom writes the Buffer it is given; its types only name strings.
    write: (batch) => stdout.write(batch as unknown as string),
    flush: () => stdout.flush(),
    flushSync: () => stdout.flushSync(),
  };
}

/**
 * Lines are the JSON pino wrote for them (level 30, ISO time, the record's fields), built field by
 * field and encoded straight into a 64 KB buffer (~250 lines; at 15,000 req/s ~60 writes/s), which
 * goes to the sink when full, and at least every 250 ms while lines wait, so a quiet gateway's
 * lines show within 250 ms. close() writes what is left. pino's line per request (its serializer
 * loop, a byte count and a buffer append) was ~10% of the fast path's busy time; a line joined
 * into a string batch was still encoded and scanned three more times on its way to stdout.
 */
export class AccessLog {
  private static readonly BATCH_BYTES = 64 * 1024;
  private static readonly FLUSH_MS = 250;
  private batch = Buffer.allocUnsafe(AccessLog.BATCH_BYTES);
  private used = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly sink: AccessLogSink = stdoutSink()) {
    this.timer = setInterval(() => this.flush(), AccessLog.FLUSH_MS);
    this.timer.unref();
    process.once("exit", this.onExit);
  }

  /** A process that exits without close() (an uncaught exception) still writes its last lines. */
  private readonly onExit = () => {
    this.flush();
    try {
      this.sink.flushSync?.();
    } catch {
      // A destination not ready yet, or already closed: nothing more can be written.
    }
  };

  /**
   * One line. The correlation id and the traceparent are written as they are: correlationOf and
   * nextTraceparent only ever give ids of letters, digits and `._:@-/`.
   */
  record(rec: AccessLogRecord): void {
    const error = rec.error === undefined ? "" : `,"error":${jsonString(rec.error)}`;
    const api = rec.api === null ? "null" : jsonString(rec.api);
    const method = rec.method === "GET" ? '"GET"' : jsonString(rec.method);
    const line = `{"level":30,"time":"${isoNow()}","method":${method},"host":${jsonString(rec.host)},"path":${jsonString(rec.path)},"status":${rec.status},"ms":${hundredthsText(rec.ms)},"api":${api},"correlation":"${rec.correlation}","traceparent":"${rec.traceparent}"${error}}\n`;
    // A UTF-16 code unit takes at most 3 bytes in UTF-8 (a surrogate pair, 2 units, takes 4).
    if (this.used + line.length * 3 > this.batch.length) {
      this.flush();
      if (line.length * 3 > this.batch.length) {
        this.sink.write(Buffer.from(line, "utf8"));
        return;
      }
    }
    this.used += this.batch.write(line, this.used, "utf8");
  }

  /** Hands the waiting lines to the sink. */
  flush(): void {
    if (this.used === 0) return;
    const full = this.batch.subarray(0, this.used);
    this.batch = Buffer.allocUnsafe(AccessLog.BATCH_BYTES);
    this.used = 0;
    this.sink.write(full);
  }

  close(): void {
    clearInterval(this.timer);
    process.off("exit", this.onExit);
    this.flush();
    this.sink.flush?.();
  }
}
