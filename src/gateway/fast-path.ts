// The data port's fast path: plain HTTP/1.1 GETs to RestApi and service routes on http upstreams
// are parsed and proxied on raw sockets (no IncomingMessage/ServerResponse, no undici, one string
// per request head each way); every other request is handed, with its connection, to the
// node:http server and ReverseProxy, which serve it exactly as before.
import { type Server as HttpServer, STATUS_CODES } from "node:http";
import { connect, type LookupFunction, type Socket } from "node:net";
import {
  type AccessLogRecord,
  correlationOf,
  isHopByHop,
  nextTraceparent,
  type ProxyObserver,
  routeNotFound,
} from "./proxy.js";
import {
  hostOf,
  isHostHeader,
  isUnsafePath,
  type Route,
  type RouteTable,
  upstreamTarget,
} from "./routes.js";

/** Request heads larger than node:http's default limit go to node:http (which answers 431). */
const MAX_HEAD_BYTES = 16 * 1024;
/**
 * A response head and a body chunk up to this size are copied into one buffer and written at once
 * (a 1 KB body: one write instead of a corked writev of two); a larger chunk is written after it.
 */
const COALESCE_BYTES = 16 * 1024;
/** Bytes a client may send ahead (pipelining) while its request is in flight before we stop reading. */
const MAX_PENDING_BYTES = 64 * 1024;
/** undici's default connect timeout, kept so an unreachable upstream fails the same way. */
const CONNECT_TIMEOUT_MS = 10_000;
/** An idle upstream connection is kept this long unless the upstream's keep-alive hint says less. */
const UPSTREAM_IDLE_MS = 30_000;
/**
 * Where every upstream read lands (net's `onread`). What a read holds is parsed and written on
 * before the next read; anything kept past the read (a partial head or chunk line, a body chunk
 * that is not copied into a coalesced write) is copied out first.
 */
const UPSTREAM_READ_BUFFER = Buffer.allocUnsafe(64 * 1024);
/**
 * A response's whole status line as llhttp (undici's parser) takes it: HTTP/1.0 or 1.1, a
 * three-digit status from 100, a reason of text or none, CRLF.
 */
const STATUS_LINE = /^HTTP\/1\.[01] [1-9]\d\d(?: [\t\x20-\x7e\x80-\xff]*)?\r\n/;
/**
 * Header lines, each `token:value` with CRLF, checked from `lastIndex` in one pass: a name is a
 * token (RFC 9110), a value holds no control character but HTAB (so no bare CR or LF either).
 * The whole block matched when `lastIndex` reaches its end: one regular expression per head
 * instead of two per header line.
 */
const HEADER_LINES = /(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*/y;

/** True when every line of `head` from `from` (each ending CRLF) is a well-formed header line. */
function headerLinesValid(head: string, from: number): boolean {
  HEADER_LINES.lastIndex = from;
  HEADER_LINES.test(head);
  return HEADER_LINES.lastIndex === head.length;
}

/** Optional whitespace in a header line: SP or HTAB (RFC 9110). */
function isSpace(c: number): boolean {
  return c === 32 || c === 9;
}

/**
 * Walks the header lines of a head that headerLinesValid accepted: each line's name lowercased and
 * its value without the optional whitespace (SP, HTAB) around it.
 */
class HeaderLines {
  name = "";
  value = "";

  constructor(
    private readonly head: string,
    private at: number,
  ) {}

  next(): boolean {
    const head = this.head;
    const at = this.at;
    if (at >= head.length) return false;
    const end = head.indexOf("\r\n", at);
    const colon = head.indexOf(":", at);
    let from = colon + 1;
    let to = end;
    while (from < to && isSpace(head.charCodeAt(from))) from++;
    while (to > from && isSpace(head.charCodeAt(to - 1))) to--;
    this.name = head.slice(at, colon).toLowerCase();
    this.value = head.slice(from, to);
    this.at = end + 2;
    return true;
  }
}

const TARGET = /^\/[\x21-\x7e]*$/;
/**
 * A chunk-size line: hex digits, optional SP or HTAB, and extensions after ";" with no control
 * character but HTAB. A little looser than llhttp (undici's parser) on what extensions hold, which
 * the gateway drops (it frames the client's chunks itself); a bare LF, a VT or space before the
 * size, which could end the line elsewhere for another parser, fail the exchange.
 */
const CHUNK_SIZE_LINE = /^([0-9a-fA-F]{1,12})[\t ]*(?:;[\t\x20-\x7e\x80-\xff]*)?$/;
/** A trailer line: a header line (token, colon, a value with no control character but HTAB). */
const TRAILER_LINE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*$/;

/**
 * The client's status line for each status from 200 to 599, made once: STATUS_CODES is a sparse
 * object, so every lookup hashed the number (halfsiphash) before four string joins.
 */
const STATUS_LINES: string[] = [];
for (let status = 200; status < 600; status++)
  STATUS_LINES[status] = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? "unknown"}\r\n`;

function statusLine(status: number): string {
  return STATUS_LINES[status] ?? `HTTP/1.1 ${status} unknown\r\n`;
}

let dateSecond = -1;
let dateText = "";
/** The Date header, formatted once a second (as node:http does). */
function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(now).toUTCString();
  }
  return dateText;
}

export interface FastPathOptions {
  table(): RouteTable;
  observer: ProxyObserver;
  /** The node:http server (not listening) that serves every request the fast path does not. */
  fallback: HttpServer;
  /** Idle time between requests on a client connection. */
  keepAliveTimeoutMs: number;
  /**
   * The longest a request head may take to arrive whole, however steadily its bytes trickle in
   * (each byte restarts the idle timeout): then 408 and the connection closes. node:http's
   * headersTimeout, whose default (60 s) is this one's.
   */
  headersTimeoutMs?: number;
  /** Upstream connections per origin. Default 128. */
  connectionsPerOrigin?: number;
  /** The data port speaks TLS: upstreams are told x-forwarded-proto https. */
  tls?: boolean;
  /** Resolves upstream names for every connection (guardedLookup). */
  lookup: LookupFunction;
}

/**
 * A GET no route matches, answered 404 by the fast path itself: handing the connection to
 * node:http for it would send every later request on that connection down the slower path
 * (and load undici, ~100 ms, on the first that has a route).
 */
interface NoRoute {
  noRoute: true;
  started: number;
  record: AccessLogRecord;
}

/** One proxied request: the client side's state while its upstream answers. */
interface Exchange {
  client: ClientConn;
  route: Route;
  head: string;
  started: number;
  record: AccessLogRecord;
  upstream: UpstreamConn | undefined;
  headSent: boolean;
  done: boolean;
}

class OriginPool {
  readonly idle: UpstreamConn[] = [];
  readonly waiting: Exchange[] = [];
  open = 0;
  readonly hostHeader: string;
  readonly hostname: string;
  readonly port: number;

  constructor(
    readonly origin: string,
    readonly max: number,
  ) {
    const u = new URL(origin);
    this.hostHeader = u.host;
    this.hostname = u.hostname.replace(/^\[|\]$/g, "");
    this.port = Number(u.port || 80);
  }
}

/** Where the response parser is in the upstream's message. */
const Body = {
  Head: 0,
  Length: 1,
  ChunkSize: 2,
  ChunkData: 3,
  ChunkDataEnd: 4,
  Trailers: 5,
  UntilClose: 6,
  None: 7,
} as const;
type BodyState = (typeof Body)[keyof typeof Body];

/** A keep-alive connection to an upstream, with the parser of the response in flight on it. */
class UpstreamConn {
  exchange: Exchange | undefined;
  private buf: Buffer | null = null;
  private state: BodyState = Body.Head;
  private remaining = 0;
  private reusable = true;
  private idleMs = UPSTREAM_IDLE_MS;
  /** The last Keep-Alive hint parsed into idleMs. */
  private keepAliveHint = "";
  private timeoutMs = 0;
  connected = false;

  readonly socket: Socket;

  constructor(
    readonly pool: OriginPool,
    private readonly fast: FastPath,
  ) {
    // Reads land in one buffer shared by every upstream connection and are parsed before the
    // next read: no 64 KB allocation (then shrunk) and no Readable push per response.
    const socket = connect({
      host: pool.hostname,
      port: pool.port,
      lookup: fast.o.lookup,
      onread: {
        buffer: UPSTREAM_READ_BUFFER,
        callback: (bytes: number, buffer: Uint8Array) => {
          const client = this.exchange?.client;
          this.onData((buffer as Buffer).subarray(0, bytes));
          client?.endOfRead();
          return true;
        },
      },
    });
    this.socket = socket;
    socket.setNoDelay(true);
    this.timeout(CONNECT_TIMEOUT_MS);
    socket.on("connect", () => {
      this.connected = true;
      const ex = this.exchange;
      if (ex) this.timeout(ex.route.upstream.timeoutMs);
    });
    socket.on("timeout", () => {
      const ex = this.exchange;
      if (!ex) return void socket.destroy();
      const code = !this.connected
        ? "UND_ERR_CONNECT_TIMEOUT"
        : this.state === Body.Head
          ? "UND_ERR_HEADERS_TIMEOUT"
          : "UND_ERR_BODY_TIMEOUT";
      this.fail(Object.assign(new Error(code), { code }));
    });
    socket.on("end", () => {
      if (this.exchange && this.state === Body.UntilClose) return this.finish(false);
      if (this.exchange)
        this.fail(Object.assign(new Error("other side closed"), { code: "UND_ERR_SOCKET" }));
    });
    socket.on("error", (err) => {
      if (this.exchange) this.fail(err as Error & { code?: string });
    });
    socket.on("close", () => {
      if (this.exchange)
        this.fail(Object.assign(new Error("other side closed"), { code: "UND_ERR_SOCKET" }));
      this.fast.forget(this);
    });
  }

  /**
   * Sets the socket's inactivity timeout when it changes. Every read and write restarts the
   * countdown already; setting the same value again would only replace the timer (a new Timeout
   * and a bound callback, twice per request with the default 30 s both ways).
   */
  private timeout(ms: number): void {
    if (ms === this.timeoutMs) return;
    this.timeoutMs = ms;
    this.socket.setTimeout(ms);
  }

  start(ex: Exchange): void {
    this.exchange = ex;
    ex.upstream = this;
    this.state = Body.Head;
    this.buf = null;
    if (this.connected) this.timeout(ex.route.upstream.timeoutMs);
    this.socket.write(ex.head, "latin1");
  }

  /** The client went away: this connection's response can no longer be read to its end. */
  abort(): void {
    this.exchange = undefined;
    this.socket.destroy();
  }

  private fail(err: Error & { code?: string }): void {
    const ex = this.exchange;
    this.exchange = undefined;
    this.socket.destroy();
    if (ex) this.fast.upstreamFailed(ex, err);
  }

  private finish(reusable: boolean): void {
    const ex = this.exchange!;
    this.exchange = undefined;
    ex.client.flushHead();
    if (ex.client.chunked) ex.client.socket.write("0\r\n\r\n", "latin1");
    // Released before the client's next request starts: a pipelined request takes this
    // connection again rather than another one.
    if (reusable && this.reusable && (this.buf === null || this.buf.length === 0)) {
      // The read that ended the response may also have filled the client's buffers and paused
      // this connection: the next request on it, any client's, must be read, whether or not
      // this client ever drains.
      if (ex.client.unpause(this)) this.socket.resume();
      this.timeout(this.idleMs);
      this.fast.release(this);
    } else this.socket.destroy();
    this.fast.exchangeDone(ex);
  }

  private onData(chunk: Buffer): void {
    const ex = this.exchange;
    if (!ex) return void this.socket.destroy(); // Bytes nobody asked for: never reuse it.
    if (this.state === Body.Head) {
      const data = this.buf ? Buffer.concat([this.buf, chunk]) : chunk;
      const end = data.indexOf("\r\n\r\n");
      if (end === -1) {
        if (data.length > MAX_HEAD_BYTES) {
          this.fail(
            Object.assign(new Error("response head too large"), {
              code: "UND_ERR_HEADERS_OVERFLOW",
            }),
          );
          return;
        }
        // Lines ended by a bare LF: this head can never end with CRLF CRLF.
        if (data.indexOf("\n\n") !== -1) {
          this.fail(Object.assign(new Error("bare LF in head"), { code: "HPE_CR_EXPECTED" }));
          return;
        }
        this.buf = data === chunk ? Buffer.from(chunk) : data; // Kept past this read: a copy.
        return;
      }
      this.buf = null;
      const status = this.responseHead(ex, data.toString("latin1", 0, end + 2));
      if (status === -1) return;
      if (status < 200) {
        // An informational response (103 Early Hints): skipped, as the node:http path skips it.
        if (data.length > end + 4) this.onData(data.subarray(end + 4));
        return;
      }
      if (data.length > end + 4) this.body(ex, data.subarray(end + 4));
      else if (
        (this.state as BodyState) === Body.None ||
        ((this.state as BodyState) === Body.Length && this.remaining === 0)
      )
        this.finish(true);
      return;
    }
    this.body(ex, chunk);
  }

  /**
   * Parses the response head (its lines each ending CRLF) and makes the client's, which leaves
   * with the first body bytes; returns the status, or -1 after a failure.
   */
  private responseHead(ex: Exchange, head: string): number {
    if (!STATUS_LINE.test(head)) {
      this.fail(Object.assign(new Error("invalid status line"), { code: "HPE_INVALID_CONSTANT" }));
      return -1;
    }
    const status = Number(head.slice(9, 12));
    if (status < 200) return status;
    const lineEnd = head.indexOf("\r\n");
    if (!headerLinesValid(head, lineEnd + 2)) {
      const bad = HEADER_LINES.lastIndex;
      const colon = head.indexOf(":", bad);
      const code =
        colon === -1 || colon > head.indexOf("\r\n", bad)
          ? "HPE_INVALID_HEADER_TOKEN"
          : "ERR_INVALID_CHAR";
      this.fail(Object.assign(new Error(`invalid header line`), { code }));
      return -1;
    }
    const http10 = head.charCodeAt(7) === 48;
    let out = statusLine(status);
    let connection = "";
    let contentLength = -1;
    let chunked = false;
    let transferEncoding = false;
    let hasDate = false;
    let keepAliveHint = "";
    for (const line = new HeaderLines(head, lineEnd + 2); line.next(); ) {
      const { name, value } = line;
      switch (name) {
        case "content-length": {
          const n = Number(value);
          if (!/^\d+$/.test(value) || (contentLength !== -1 && contentLength !== n)) {
            this.fail(
              Object.assign(new Error("invalid content-length"), {
                code: "HPE_UNEXPECTED_CONTENT_LENGTH",
              }),
            );
            return -1;
          }
          if (contentLength === n) continue; // The same length again: the client gets it once.
          contentLength = n;
          break;
        }
        case "transfer-encoding":
          transferEncoding = true;
          chunked = /(^|,)\s*chunked\s*$/i.test(value);
          continue;
        case "connection":
          connection = `${connection},${value.toLowerCase()}`;
          continue;
        case "keep-alive":
          keepAliveHint = value;
          continue;
        case "date":
          hasDate = true;
          break;
        case "x-correlation-id":
        case "traceparent":
          continue; // The gateway's own go out instead.
        default:
          if (isHopByHop(name)) continue;
      }
      out += `${name}: ${value}\r\n`;
    }
    // "keep-alive" alone (what Node and most servers send) names nothing and does not close.
    const plainKeepAlive = connection === "" || connection === ",keep-alive";
    if (http10 || (!plainKeepAlive && /(^|,)\s*close\s*(,|$)/.test(connection)))
      this.reusable = false;
    if (keepAliveHint !== "" && keepAliveHint !== this.keepAliveHint) {
      // Parsed when it changes: an upstream sends the same hint on every response. A response
      // without one leaves the last one standing: the server at the other end is the same.
      this.keepAliveHint = keepAliveHint;
      const hint = /timeout=(\d+)/.exec(keepAliveHint);
      if (hint)
        this.idleMs = Math.min(UPSTREAM_IDLE_MS, Math.max(0, Number(hint[1]) * 1000 - 1000));
    }
    if (this.idleMs === 0) this.reusable = false;
    // Headers the upstream's Connection names are hop-by-hop too: the client's head is made
    // again without them.
    if (!plainKeepAlive) {
      const named = new Set(connection.split(/\s*,\s*/));
      out = out.slice(0, out.indexOf("\r\n") + 2);
      // The length frames the body for the client too: it stays whatever Connection says.
      named.delete("content-length");
      // A Date it names is dropped like any other, and the client gets the gateway's, as
      // node:http gives one to every response.
      if (named.has("date")) hasDate = false;
      for (const line = new HeaderLines(head, lineEnd + 2); line.next(); ) {
        const name = line.name;
        if (isHopByHop(name) || named.has(name)) continue;
        if (name === "x-correlation-id" || name === "traceparent") continue;
        if (name === "content-length" && out.includes("\r\ncontent-length:")) continue;
        out += `${name}: ${line.value}\r\n`;
      }
    }
    const noBody = status === 204 || status === 304;
    const rec = ex.record;
    out += `x-correlation-id: ${rec.correlation}\r\ntraceparent: ${rec.traceparent}\r\n`;
    if (!hasDate) out += `date: ${httpDate()}\r\n`;
    const client = ex.client;
    out += client.keepAliveHeaders;
    if (transferEncoding && contentLength >= 0) {
      // Two framings at once: llhttp (undici's parser) refuses such a response too.
      this.fail(
        Object.assign(new Error("content-length with chunked"), {
          code: "HPE_UNEXPECTED_CONTENT_LENGTH",
        }),
      );
      return -1;
    }
    if (noBody) this.state = Body.None;
    else if (chunked) this.state = Body.ChunkSize;
    else if (contentLength >= 0) {
      this.state = Body.Length;
      this.remaining = contentLength;
    } else {
      this.state = Body.UntilClose;
      this.reusable = false;
    }
    // Like node:http, a body without a length is re-framed as chunked toward the client.
    client.chunked = !noBody && contentLength < 0;
    if (client.chunked) out += "transfer-encoding: chunked\r\n";
    out += "\r\n";
    rec.status = status;
    ex.headSent = true;
    client.head = out;
    return status;
  }

  private body(ex: Exchange, chunk: Buffer): void {
    const client = ex.client;
    let at = 0;
    while (at < chunk.length || this.state === Body.None) {
      switch (this.state) {
        case Body.None:
          if (at < chunk.length) this.reusable = false;
          this.finish(true);
          return;
        case Body.Length: {
          const n = Math.min(this.remaining, chunk.length - at);
          client.send(at === 0 && n === chunk.length ? chunk : chunk.subarray(at, at + n), this);
          this.remaining -= n;
          at += n;
          if (this.remaining === 0) {
            if (at < chunk.length) this.reusable = false; // More than it announced.
            this.finish(true);
            return;
          }
          break;
        }
        case Body.UntilClose:
          client.send(at === 0 ? chunk : chunk.subarray(at), this);
          return;
        case Body.ChunkSize:
        case Body.Trailers: {
          const data = this.buf
            ? Buffer.concat([this.buf, chunk.subarray(at)])
            : chunk.subarray(at);
          this.buf = null;
          chunk = data;
          at = 0;
          const eol = data.indexOf("\r\n");
          if (eol === -1) {
            if (data.length > MAX_HEAD_BYTES) {
              this.fail(
                Object.assign(new Error("invalid chunk"), { code: "HPE_INVALID_CHUNK_SIZE" }),
              );
              return;
            }
            this.buf = Buffer.from(data); // Kept past this read: a copy.
            return;
          }
          const line = data.toString("latin1", 0, eol);
          at = eol + 2;
          if (this.state === Body.Trailers) {
            if (line === "") {
              if (at < data.length) this.reusable = false;
              this.finish(true);
              return;
            }
            // Trailers are dropped, as the undici path does, but must be header lines.
            if (!TRAILER_LINE.test(line)) {
              this.fail(
                Object.assign(new Error("invalid trailer"), { code: "HPE_INVALID_HEADER_TOKEN" }),
              );
              return;
            }
            break;
          }
          const size = CHUNK_SIZE_LINE.exec(line)?.[1];
          if (size === undefined) {
            this.fail(
              Object.assign(new Error("invalid chunk size"), { code: "HPE_INVALID_CHUNK_SIZE" }),
            );
            return;
          }
          this.remaining = Number.parseInt(size, 16);
          this.state = this.remaining === 0 ? Body.Trailers : Body.ChunkData;
          break;
        }
        case Body.ChunkData: {
          const n = Math.min(this.remaining, chunk.length - at);
          client.send(chunk.subarray(at, at + n), this);
          this.remaining -= n;
          at += n;
          if (this.remaining === 0) {
            this.state = Body.ChunkDataEnd;
            this.remaining = 2;
          }
          break;
        }
        case Body.ChunkDataEnd: {
          // The CRLF after a chunk's data (2 bytes left: CR, 1: LF), byte by byte across reads.
          if (chunk[at] !== (this.remaining === 2 ? 13 : 10)) {
            this.fail(Object.assign(new Error("invalid chunk end"), { code: "HPE_STRICT" }));
            return;
          }
          at++;
          this.remaining--;
          if (this.remaining === 0) this.state = Body.ChunkSize;
          break;
        }
        case Body.Head:
          return;
      }
    }
  }
}

/** A client connection on the fast path (until it is handed to node:http). */
class ClientConn {
  private pending: Buffer | null = null;
  /** When the head now arriving started to wait for its end (0: no partial head). */
  private headSince = 0;
  exchange: Exchange | undefined;
  chunked = false;
  closed = false;
  /** The response head made from the upstream's, written with the first body bytes. */
  head = "";
  private corked = false;
  /** The upstream paused for this client's backpressure, resumed at its next drain. */
  private paused: UpstreamConn | undefined;
  readonly keepAliveHeaders: string;
  /** The client's address, for x-forwarded-for (read once: the getter costs a lookup each time). */
  readonly peer: string;

  constructor(
    readonly socket: Socket,
    private readonly fast: FastPath,
  ) {
    this.peer = socket.remoteAddress ?? "";
    this.keepAliveHeaders = `connection: keep-alive\r\nkeep-alive: timeout=${Math.floor(fast.o.keepAliveTimeoutMs / 1000)}\r\n`;
    socket.setNoDelay(true);
    socket.setTimeout(fast.o.keepAliveTimeoutMs);
    socket.on("data", this.onData);
    socket.on("timeout", this.onTimeout);
    socket.on("error", this.onGone);
    socket.on("close", this.onGone);
  }

  private readonly onTimeout = () => {
    if (!this.exchange) this.socket.destroy();
  };

  private readonly onGone = () => {
    this.closed = true;
    const ex = this.exchange;
    this.exchange = undefined;
    if (ex && !ex.done) {
      // The client went away before the response finished: stop the upstream exchange too.
      ex.done = true;
      if (ex.upstream) ex.upstream.abort();
      else this.fast.dequeue(ex);
    }
    this.fast.clients.delete(this);
    if (!this.socket.destroyed) this.socket.destroy();
  };

  private readonly onData = (chunk: Buffer) => {
    this.pending = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    if (this.exchange) {
      if (this.pending.length > MAX_PENDING_BYTES) this.socket.pause();
      return;
    }
    this.next();
  };

  /**
   * Writes a body chunk (chunk-framed when the response is re-framed), pausing the upstream on
   * backpressure. The response head still waiting goes in the same write: for a body up to
   * COALESCE_BYTES the two are copied into one buffer (a plain write, not a corked writev).
   * `data` lies in the upstream read buffer: whatever is written is a copy (a write may wait).
   */
  send(data: Buffer, from: UpstreamConn): void {
    if (data.length === 0) return;
    let ok: boolean;
    if (this.chunked) {
      // Every chunk of one upstream read leaves in one writev, at the end of the read.
      if (!this.corked) {
        this.socket.cork();
        this.corked = true;
      }
      this.flushHead();
      this.socket.write(`${data.length.toString(16)}\r\n`, "latin1");
      this.socket.write(Buffer.from(data));
      ok = this.socket.write("\r\n", "latin1");
    } else if (this.head !== "" && data.length <= COALESCE_BYTES) {
      const head = this.head;
      this.head = "";
      const out = Buffer.allocUnsafe(head.length + data.length);
      out.write(head, 0, "latin1");
      data.copy(out, head.length);
      ok = this.socket.write(out);
    } else {
      this.flushHead();
      ok = this.socket.write(Buffer.from(data));
    }
    if (!ok) {
      from.socket.pause();
      if (this.paused === undefined) this.socket.once("drain", this.onDrain);
      this.paused = from;
    }
  }

  /** Forgets `from` as the upstream paused for this client; true when it was. */
  unpause(from: UpstreamConn): boolean {
    if (this.paused !== from) return false;
    this.paused = undefined;
    this.socket.removeListener("drain", this.onDrain);
    return true;
  }

  private readonly onDrain = () => {
    const upstream = this.paused;
    this.paused = undefined;
    upstream?.socket.resume();
  };

  /** Writes the response head still waiting for body bytes (a head is one latin1 string). */
  flushHead(): void {
    if (this.head === "") return;
    const head = this.head;
    this.head = "";
    if (!this.socket.destroyed) this.socket.write(head, "latin1");
  }

  /** The end of one upstream read: what it produced for this client leaves now. */
  endOfRead(): void {
    this.flushHead();
    if (this.corked) {
      this.corked = false;
      this.socket.uncork();
    }
  }

  /** Serves the next buffered request, or hands the connection to node:http. */
  next(): void {
    while (!this.exchange && this.pending && !this.closed) {
      const data = this.pending;
      const end = data.indexOf("\r\n\r\n");
      if (end === -1) {
        // Too large, or lines ended by a bare LF: node:http decides (431, 400, or serves it).
        if (data.length > MAX_HEAD_BYTES || data.indexOf("\n\n") !== -1) this.handOff();
        else if (this.headSince === 0) this.headSince = Date.now();
        else if (Date.now() - this.headSince > (this.fast.o.headersTimeoutMs ?? 60_000))
          this.headTimedOut();
        return;
      }
      this.headSince = 0;
      // A head over the limit that ended within the same read: node:http answers it 431 too.
      if (end + 4 > MAX_HEAD_BYTES) {
        this.handOff();
        return;
      }
      const ex = this.fast.parse(this, data.toString("latin1", 0, end + 2));
      if (!ex) {
        this.handOff();
        return;
      }
      this.pending = data.length > end + 4 ? data.subarray(end + 4) : null;
      if (this.socket.isPaused() && (this.pending?.length ?? 0) <= MAX_PENDING_BYTES)
        this.socket.resume();
      if ("noRoute" in ex) {
        this.answerNoRoute(ex);
        // A client that pipelines and never reads: stop reading until it takes its answers.
        if (this.socket.writableLength > MAX_PENDING_BYTES) {
          this.socket.pause();
          this.socket.once("drain", () => {
            this.socket.resume();
            this.next();
          });
          return;
        }
        continue;
      }
      this.exchange = ex;
      this.fast.send(ex);
    }
  }

  /** The same 404 node:http's path answers, written here; the connection stays on the fast path. */
  private answerNoRoute({ record, started }: NoRoute): void {
    const body = JSON.stringify(routeNotFound(record.path));
    this.socket.write(
      `HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-correlation-id: ${record.correlation}\r\ntraceparent: ${record.traceparent}\r\ndate: ${httpDate()}\r\n${this.keepAliveHeaders}\r\n${body}`,
      "latin1",
    );
    record.status = 404;
    record.ms = Math.round((performance.now() - started) * 100) / 100;
    this.fast.o.observer.done(undefined, record);
  }

  /** A head that took too long: 408, as node:http answers its headersTimeout, and the end. */
  private headTimedOut(): void {
    this.pending = null;
    this.closed = true;
    this.socket.end(
      "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
    );
  }

  /** From here on node:http serves this connection, starting with the bytes not yet served. */
  private handOff(): void {
    const socket = this.socket;
    socket.removeListener("data", this.onData);
    socket.removeListener("timeout", this.onTimeout);
    socket.removeListener("error", this.onGone);
    socket.removeListener("close", this.onGone);
    socket.setTimeout(0);
    this.fast.clients.delete(this);
    socket.pause();
    if (this.pending) socket.unshift(this.pending);
    this.pending = null;
    this.fast.o.fallback.emit("connection", socket);
    socket.resume();
  }
}

export class FastPath {
  private readonly pools = new Map<string, OriginPool>();
  readonly clients = new Set<ClientConn>();
  private closing = false;

  private readonly proto: "http" | "https";

  constructor(readonly o: FastPathOptions) {
    this.proto = o.tls ? "https" : "http";
  }

  /** The data port's connection listener. */
  readonly onConnection = (socket: Socket): void => {
    if (this.closing) return void socket.destroy();
    this.clients.add(new ClientConn(socket, this));
  };

  /**
   * Parses a request head; returns the exchange to forward, or undefined when node:http must
   * serve it (anything but a plain GET without a body to an http RestApi or service route).
   */
  parse(client: ClientConn, head: string): Exchange | NoRoute | undefined {
    const lineEnd = head.indexOf("\r\n");
    if (lineEnd === -1 || !head.startsWith("GET ")) return undefined;
    // The target holds no space (TARGET), so the line is "GET ", the target, " HTTP/1.1".
    if (!head.endsWith(" HTTP/1.1", lineEnd)) return undefined;
    const sp = lineEnd - 9;
    if (sp <= 4) return undefined;
    const url = head.slice(4, sp);
    if (!TARGET.test(url)) return undefined;
    let forwarded = "";
    let hostHeader: string | undefined;
    let correlationIn: string | undefined;
    let traceparentIn: string | undefined;
    let forwardedFor: string | undefined;
    if (!headerLinesValid(head, lineEnd + 2)) return undefined;
    // A header this path reads, sent twice, goes to node:http (which joins or refuses it); any
    // other repeated header is forwarded line by line, as it came.
    for (const line = new HeaderLines(head, lineEnd + 2); line.next(); ) {
      const { name, value } = line;
      switch (name) {
        // A body, an upgrade or a 100-continue: node:http's.
        case "content-length":
        case "transfer-encoding":
        case "upgrade":
        case "expect":
          return undefined;
        case "host":
          if (hostHeader !== undefined) return undefined;
          hostHeader = value;
          continue;
        case "connection":
          if (value.toLowerCase() !== "keep-alive") return undefined;
          continue;
        case "x-correlation-id":
          if (correlationIn !== undefined) return undefined;
          correlationIn = value;
          continue;
        case "traceparent":
          if (traceparentIn !== undefined) return undefined;
          traceparentIn = value;
          continue;
        case "x-forwarded-for":
          if (forwardedFor !== undefined) return undefined;
          forwardedFor = value;
          continue;
        case "x-forwarded-host":
        case "x-forwarded-proto":
          continue;
        default:
          if (isHopByHop(name)) continue;
      }
      forwarded += `${name}: ${value}\r\n`;
    }
    // Missing or not a host and a port: node:http answers it (400, or its any-host routes).
    if (hostHeader === undefined || !isHostHeader(hostHeader)) return undefined;
    const q = url.indexOf("?");
    const path = q === -1 ? url : url.slice(0, q);
    const host = hostOf(hostHeader);
    // Refused on the general path, with its answer.
    if (isUnsafePath(path)) return undefined;
    const route = this.o.table().match(host, path);
    const record = (api: string | null): AccessLogRecord => ({
      method: "GET",
      host,
      path,
      status: 0,
      ms: 0,
      api,
      correlation: correlationOf(correlationIn),
      traceparent: nextTraceparent(traceparentIn),
    });
    if (!route) return { noRoute: true, started: performance.now(), record: record(null) };
    if (!route.upstream.origin.startsWith("http://")) return undefined;
    const rest = path.slice(route.prefix.length) || "/";
    if (route.kind === "RestApi") {
      if (
        route.operations &&
        !route.operations.some((op) => op.method === "GET" && op.pattern.test(rest))
      )
        return undefined;
    } else if (route.kind !== "ServiceRoute") return undefined;
    const pool = this.pool(route.upstream.origin);
    const rec = record(route.name);
    const { correlation, traceparent } = rec;
    const peer = client.peer;
    const upstreamPath = upstreamTarget(
      route.upstream.basePath,
      rest,
      q === -1 ? "" : url.slice(q),
    );
    return {
      client,
      route,
      head: `GET ${upstreamPath} HTTP/1.1\r\nhost: ${pool.hostHeader}\r\nconnection: keep-alive\r\n${forwarded}x-forwarded-for: ${forwardedFor ? `${forwardedFor}, ${peer}` : peer}\r\nx-forwarded-host: ${hostHeader}\r\nx-forwarded-proto: ${this.proto}\r\nx-correlation-id: ${correlation}\r\ntraceparent: ${traceparent}\r\n\r\n`,
      started: performance.now(),
      record: rec,
      upstream: undefined,
      headSent: false,
      done: false,
    };
  }

  private pool(origin: string): OriginPool {
    let p = this.pools.get(origin);
    if (!p) {
      p = new OriginPool(origin, this.o.connectionsPerOrigin ?? 128);
      this.pools.set(origin, p);
    }
    return p;
  }

  /** Sends the exchange on an idle upstream connection, a new one, or queues it. */
  send(ex: Exchange): void {
    const pool = this.pool(ex.route.upstream.origin);
    const idle = pool.idle.pop();
    if (idle) {
      idle.start(ex);
      return;
    }
    if (pool.open < pool.max) {
      pool.open++;
      const conn = new UpstreamConn(pool, this);
      conn.start(ex);
      return;
    }
    pool.waiting.push(ex);
  }

  dequeue(ex: Exchange): void {
    const waiting = this.pool(ex.route.upstream.origin).waiting;
    const i = waiting.indexOf(ex);
    if (i !== -1) waiting.splice(i, 1);
  }

  release(conn: UpstreamConn): void {
    const next = conn.pool.waiting.shift();
    if (next) {
      conn.start(next);
      return;
    }
    conn.pool.idle.push(conn);
  }

  forget(conn: UpstreamConn): void {
    const pool = conn.pool;
    pool.open--;
    const i = pool.idle.indexOf(conn);
    if (i !== -1) pool.idle.splice(i, 1);
    const next = pool.waiting.shift();
    if (next) this.send(next);
  }

  exchangeDone(ex: Exchange): void {
    if (ex.done) return;
    ex.done = true;
    const client = ex.client;
    client.exchange = undefined;
    ex.record.ms = Math.round((performance.now() - ex.started) * 100) / 100;
    this.o.observer.done(ex.route, ex.record);
    if (this.closing) return void client.socket.end();
    client.next();
  }

  upstreamFailed(ex: Exchange, err: Error & { code?: string }): void {
    if (ex.done) return;
    const client = ex.client;
    // A head still held back (it waits for body bytes) was never sent: the client can get a 502.
    if (ex.headSent && client.head !== "") {
      ex.headSent = false;
      client.head = "";
    }
    if (ex.headSent) {
      ex.done = true;
      client.exchange = undefined;
      client.socket.destroy();
      return;
    }
    const timeout =
      err.code === "UND_ERR_HEADERS_TIMEOUT" || err.code === "UND_ERR_CONNECT_TIMEOUT";
    const route = ex.route;
    const body = JSON.stringify({
      code: timeout ? "upstream.timeout" : "upstream.unavailable",
      message: timeout
        ? `the upstream of ${route.name} did not answer in ${route.upstream.timeoutMs} ms`
        : `the upstream of ${route.name} is unreachable (${err.code ?? "error"})`,
    });
    const status = timeout ? 504 : 502;
    ex.record.status = status;
    ex.record.error = err.code ?? err.message;
    client.chunked = false;
    client.socket.cork();
    client.socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-correlation-id: ${ex.record.correlation}\r\ntraceparent: ${ex.record.traceparent}\r\ndate: ${httpDate()}\r\n${client.keepAliveHeaders}\r\n`,
      "latin1",
    );
    client.socket.write(body, "utf8");
    client.socket.uncork();
    this.exchangeDone(ex);
  }

  /** Cuts every fast-path connection (the end of a shutdown's grace period). */
  destroyAll(): void {
    for (const c of this.clients) c.socket.destroy();
  }

  /** Stops taking connections' next requests: idle ones close now, busy ones after their response. */
  close(): void {
    this.closing = true;
    for (const c of this.clients) if (!c.exchange) c.socket.destroy();
    for (const pool of this.pools.values())
      for (const conn of [...pool.idle]) conn.socket.destroy();
  }
}
