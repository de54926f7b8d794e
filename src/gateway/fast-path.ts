// The data port's fast path: plain HTTP/1.1 GETs to RestApi and service routes on http upstreams
// are parsed and proxied on raw sockets (no IncomingMessage/ServerResponse, no undici, one string
// per request head each way); every other request is handed, with its connection, to the
// node:http server and ReverseProxy, which serve it exactly as before.
import { type Server as HttpServer, STATUS_CODES } from "node:http";
import { connect, type LookupFunction, type Socket } from "node:net";
import {
  type AccessLogRecord,
  correlationOf,
  HOP_BY_HOP,
  nextTraceparent,
  type ProxyObserver,
  routeNotFound,
} from "./proxy.js";
import { isUnsafePath, type Route, type RouteTable } from "./routes.js";

/** Request heads larger than node:http's default limit go to node:http (which answers 431). */
const MAX_HEAD_BYTES = 16 * 1024;
/** Bytes a client may send ahead (pipelining) while its request is in flight before we stop reading. */
const MAX_PENDING_BYTES = 64 * 1024;
/** undici's default connect timeout, kept so an unreachable upstream fails the same way. */
const CONNECT_TIMEOUT_MS = 10_000;
/** An idle upstream connection is kept this long unless the upstream's keep-alive hint says less. */
const UPSTREAM_IDLE_MS = 30_000;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const BAD_VALUE = /[^\t\x20-\x7e\x80-\xff]/;
const TARGET = /^\/[\x21-\x7e]*$/;
/** Request headers whose presence sends the request to node:http (bodies, upgrades, 100-continue). */
const SLOW_REQUEST_HEADERS = new Set(["content-length", "transfer-encoding", "upgrade", "expect"]);

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
  connected = false;

  constructor(
    readonly pool: OriginPool,
    readonly socket: Socket,
    private readonly fast: FastPath,
  ) {
    socket.setNoDelay(true);
    socket.setTimeout(CONNECT_TIMEOUT_MS);
    socket.on("connect", () => {
      this.connected = true;
      const ex = this.exchange;
      if (ex) socket.setTimeout(ex.route.upstream.timeoutMs);
    });
    socket.on("data", (chunk: Buffer) => {
      // One write (writev) per upstream read: the response head and the body it arrived with
      // leave together, instead of a syscall each.
      const client = this.exchange?.client.socket;
      client?.cork();
      this.onData(chunk);
      client?.uncork();
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

  start(ex: Exchange): void {
    this.exchange = ex;
    ex.upstream = this;
    this.state = Body.Head;
    this.buf = null;
    if (this.connected) this.socket.setTimeout(ex.route.upstream.timeoutMs);
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
    if (ex.client.chunked) ex.client.socket.write("0\r\n\r\n", "latin1");
    this.fast.exchangeDone(ex);
    if (reusable && this.reusable && (this.buf === null || this.buf.length === 0)) {
      this.socket.setTimeout(this.idleMs);
      this.fast.release(this);
    } else this.socket.destroy();
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
        this.buf = data;
        return;
      }
      this.buf = null;
      const status = this.responseHead(ex, data.toString("latin1", 0, end));
      if (status === -1) return;
      if (status < 200) {
        // An informational response (103 Early Hints): skipped, as undici's dispatch does.
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

  /** Parses the response head and writes the client's; returns the status, or -1 after a failure. */
  private responseHead(ex: Exchange, head: string): number {
    const lineEnd = head.indexOf("\r\n");
    const statusLine = lineEnd === -1 ? head : head.slice(0, lineEnd);
    const status = Number(statusLine.slice(9, 12));
    if (!statusLine.startsWith("HTTP/1.") || !(status >= 100 && status <= 999)) {
      this.fail(Object.assign(new Error("invalid status line"), { code: "HPE_INVALID_CONSTANT" }));
      return -1;
    }
    if (status < 200) return status;
    const http10 = statusLine.charCodeAt(7) === 48;
    const names: string[] = [];
    const values: string[] = [];
    let connection = "";
    let contentLength = -1;
    let chunked = false;
    let hasDate = false;
    let keepAliveHint = "";
    let at = lineEnd === -1 ? head.length : lineEnd + 2;
    while (at < head.length) {
      let next = head.indexOf("\r\n", at);
      if (next === -1) next = head.length;
      const colon = head.indexOf(":", at);
      if (colon === -1 || colon > next) {
        this.fail(
          Object.assign(new Error("invalid header line"), { code: "HPE_INVALID_HEADER_TOKEN" }),
        );
        return -1;
      }
      const name = head.slice(at, colon).toLowerCase();
      const value = head.slice(colon + 1, next).trim();
      at = next + 2;
      if (name === "content-length") {
        const n = Number(value);
        if (!/^\d+$/.test(value) || (contentLength !== -1 && contentLength !== n)) {
          this.fail(
            Object.assign(new Error("invalid content-length"), {
              code: "HPE_UNEXPECTED_CONTENT_LENGTH",
            }),
          );
          return -1;
        }
        contentLength = n;
      } else if (name === "transfer-encoding") chunked = /(^|,)\s*chunked\s*$/i.test(value);
      else if (name === "connection") connection = `${connection},${value.toLowerCase()}`;
      else if (name === "keep-alive") keepAliveHint = value;
      else if (name === "date") hasDate = true;
      if (!TOKEN.test(name) || BAD_VALUE.test(value)) {
        this.fail(
          Object.assign(new Error(`invalid header ${name.slice(0, 100)}`), {
            code: "ERR_INVALID_CHAR",
          }),
        );
        return -1;
      }
      names.push(name);
      values.push(value);
    }
    if (http10 || /(^|,)\s*close\s*(,|$)/.test(connection)) this.reusable = false;
    const hint = /timeout=(\d+)/.exec(keepAliveHint);
    if (hint) this.idleMs = Math.min(UPSTREAM_IDLE_MS, Math.max(0, Number(hint[1]) * 1000 - 1000));
    if (this.idleMs === 0) this.reusable = false;
    const named = connection ? new Set(connection.split(/\s*,\s*/)) : null;

    const noBody = status === 204 || status === 304;
    let out = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? "unknown"}\r\n`;
    for (let i = 0; i < names.length; i++) {
      const name = names[i]!;
      if (HOP_BY_HOP.has(name) || named?.has(name)) continue;
      if (name === "x-correlation-id" || name === "traceparent") continue;
      out += `${name}: ${values[i]}\r\n`;
    }
    const rec = ex.record;
    out += `x-correlation-id: ${rec.correlation}\r\ntraceparent: ${rec.traceparent}\r\n`;
    if (!hasDate) out += `date: ${httpDate()}\r\n`;
    const client = ex.client;
    out += client.keepAliveHeaders;
    if (chunked && contentLength >= 0) {
      // Both framings at once: llhttp (undici's parser) refuses such a response too.
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
    client.socket.write(out, "latin1");
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
            this.buf = data;
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
            break; // Trailers are dropped, as the undici path does.
          }
          const semi = line.indexOf(";");
          const size = semi === -1 ? line.trim() : line.slice(0, semi).trim();
          if (!/^[0-9a-fA-F]{1,12}$/.test(size)) {
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
          const n = Math.min(this.remaining, chunk.length - at);
          this.remaining -= n;
          at += n;
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
  exchange: Exchange | undefined;
  chunked = false;
  closed = false;
  readonly keepAliveHeaders: string;

  constructor(
    readonly socket: Socket,
    private readonly fast: FastPath,
  ) {
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

  /** Writes a body chunk (chunk-framed when the response is re-framed), pausing the upstream on backpressure. */
  send(data: Buffer, from: UpstreamConn): void {
    if (data.length === 0) return;
    let ok: boolean;
    if (this.chunked) {
      this.socket.cork();
      this.socket.write(`${data.length.toString(16)}\r\n`, "latin1");
      this.socket.write(data);
      ok = this.socket.write("\r\n", "latin1");
      this.socket.uncork();
    } else ok = this.socket.write(data);
    if (!ok) {
      from.socket.pause();
      this.socket.once("drain", () => from.socket.resume());
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
        return;
      }
      const ex = this.fast.parse(this, data.toString("latin1", 0, end));
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
      `HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-correlation-id: ${record.correlation}\r\ntraceparent: ${record.traceparent}\r\n${this.keepAliveHeaders}\r\n${body}`,
      "latin1",
    );
    record.status = 404;
    record.ms = Math.round((performance.now() - started) * 100) / 100;
    this.fast.o.observer.done(undefined, record);
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
    const sp = head.lastIndexOf(" ", lineEnd);
    if (sp <= 4 || head.slice(sp + 1, lineEnd) !== "HTTP/1.1") return undefined;
    const url = head.slice(4, sp);
    if (!TARGET.test(url)) return undefined;
    let forwarded = "";
    let hostHeader: string | undefined;
    let correlationIn: string | undefined;
    let traceparentIn: string | undefined;
    let forwardedFor: string | undefined;
    const seen = new Set<string>();
    let at = lineEnd + 2;
    while (at < head.length) {
      let next = head.indexOf("\r\n", at);
      if (next === -1) next = head.length;
      const colon = head.indexOf(":", at);
      if (colon === -1 || colon > next) return undefined;
      const raw = head.slice(at, colon);
      const value = head.slice(colon + 1, next).trim();
      at = next + 2;
      if (!TOKEN.test(raw) || BAD_VALUE.test(value)) return undefined;
      const name = raw.toLowerCase();
      if (seen.has(name) || SLOW_REQUEST_HEADERS.has(name)) return undefined;
      seen.add(name);
      switch (name) {
        case "host":
          hostHeader = value;
          continue;
        case "connection":
          if (value.toLowerCase() !== "keep-alive") return undefined;
          continue;
        case "x-correlation-id":
          correlationIn = value;
          continue;
        case "traceparent":
          traceparentIn = value;
          continue;
        case "x-forwarded-for":
          forwardedFor = value;
          continue;
        case "x-forwarded-host":
        case "x-forwarded-proto":
          continue;
      }
      if (HOP_BY_HOP.has(name)) continue;
      forwarded += `${name}: ${value}\r\n`;
    }
    if (hostHeader === undefined) return undefined;
    const q = url.indexOf("?");
    const path = q === -1 ? url : url.slice(0, q);
    const colon = hostHeader.lastIndexOf(":");
    const host = (
      colon > 0 && !hostHeader.endsWith("]") ? hostHeader.slice(0, colon) : hostHeader
    ).toLowerCase();
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
    const peer = client.socket.remoteAddress ?? "";
    const upstreamPath = `${route.upstream.basePath}${rest}${q === -1 ? "" : url.slice(q)}`;
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
      const conn = new UpstreamConn(
        pool,
        connect({ host: pool.hostname, port: pool.port, lookup: this.o.lookup }),
        this,
      );
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
