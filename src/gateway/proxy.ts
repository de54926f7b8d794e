// The gateway's data path: an HTTP reverse proxy on undici pools, streaming both ways, with
// timeouts, hop-by-hop headers stripped, correlation and trace context carried or generated,
// access logs and per-route metrics; LLM routes inject credentials, enforce the model
// allowlist, authenticate consumer keys and rate-limit them with a token bucket; WebSocket
// upgrades are joined to their upstream.
import { createHash } from "node:crypto";
import {
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type ServerResponse,
  STATUS_CODES,
} from "node:http";
import { request as httpsRequest } from "node:https";
import type { LookupFunction } from "node:net";
import type { Duplex } from "node:stream";
import type { Dispatcher, Pool } from "undici";
import { randomIdHex, readBody } from "../shared/index.js";
import { undici } from "./lazy.js";
import {
  hostOf,
  isHostHeader,
  isUnsafePath,
  type LlmProxyRoute,
  type Route,
  type RouteTable,
  upstreamTarget,
} from "./routes.js";

/**
 * The headers stripped both ways (the gateway's own context headers replace any incoming ones),
 * for a lowercased name. A switch, not a Set: a name just cut from a head is compared by length,
 * then bytes, where Set#has first hashes it. The fast path asks this of every header line (7 per
 * proxied GET in its instruction benchmark); the switch took that count from 74.2k to 71.8k.
 */
export function isHopByHop(name: string): boolean {
  switch (name) {
    case "connection":
    case "keep-alive":
    case "proxy-authenticate":
    case "proxy-authorization":
    case "proxy-connection":
    case "te":
    case "trailer":
    case "transfer-encoding":
    case "upgrade":
    case "host":
      return true;
    default:
      return false;
  }
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;
const CORRELATION = /^[A-Za-z0-9._:@\-/]{1,128}$/;
/** LLM request bodies are buffered to read the model; larger bodies are refused (413). */
const MAX_LLM_BODY_BYTES = 10 * 1024 * 1024;

export interface AccessLogRecord {
  method: string;
  host: string;
  path: string;
  status: number;
  ms: number;
  api: string | null;
  correlation: string;
  traceparent: string;
  error?: string;
}

export interface ProxyObserver {
  /** Called once per request when the response has finished. */
  done(route: Route | undefined, record: AccessLogRecord): void;
}

/** A child span of the incoming trace, or a new trace when the header is absent or invalid. */
export function nextTraceparent(incoming: string | undefined): string {
  const m = incoming ? TRACEPARENT.exec(incoming) : null;
  if (m && m[1] !== "ff" && !/^0+$/.test(m[2]!) && !/^0+$/.test(m[3]!))
    return `00-${m[2]}-${randomIdHex(8)}-${m[4]}`;
  return `00-${randomIdHex(16)}-${randomIdHex(8)}-01`;
}

/** The incoming correlation id when it is well-formed, else a new one. */
export function correlationOf(incoming: string | undefined): string {
  return incoming && CORRELATION.test(incoming) ? incoming : randomIdHex(16);
}

/** What a request no route matches is told, on every path (node:http, upgrades, the fast path). */
export function routeNotFound(path: string): { code: "route.not_found"; message: string } {
  return { code: "route.not_found", message: `no API is deployed at ${path.slice(0, 200)}` };
}

/** A WebSocket opening handshake (RFC 6455): GET, `Upgrade: websocket` and a key. */
export function isWebSocketUpgrade(req: IncomingMessage): boolean {
  return (
    req.method === "GET" &&
    (headerValue(req.headers.upgrade) ?? "").toLowerCase() === "websocket" &&
    req.headers["sec-websocket-key"] !== undefined
  );
}

/**
 * The request head as the client sent it, minus its Upgrade (and what Connection names of it):
 * for serving an optional upgrade (h2c) as the plain request it also is. The body's framing stays
 * whatever Connection names: this head is parsed again with the body after it, and a dropped
 * Content-Length would make that body a second request (smuggled past a front proxy that framed
 * it as one).
 */
export function headWithoutUpgrade(req: IncomingMessage): Buffer {
  const connection = (headerValue(req.headers.connection) ?? "")
    .split(",")
    .map((t) => t.trim())
    .filter(Boolean);
  const dropped = new Set(["upgrade", ...connection.map((t) => t.toLowerCase())]);
  dropped.delete("content-length");
  dropped.delete("transfer-encoding");
  // What Connection says of this connection itself stays: keep-alive, close.
  const kept = connection.filter((t) => ["keep-alive", "close"].includes(t.toLowerCase()));
  const lines = [`${req.method} ${req.url} HTTP/${req.httpVersion}`];
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i]!;
    const lower = name.toLowerCase();
    if (lower === "connection" || dropped.has(lower)) continue;
    lines.push(`${name}: ${req.rawHeaders[i + 1]}`);
  }
  if (kept.length) lines.push(`Connection: ${kept.join(", ")}`);
  return Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "latin1");
}

function headerValue(h: string | string[] | undefined): string | undefined {
  return Array.isArray(h) ? h[0] : h;
}

/** Request headers for the upstream: hop-by-hop (and those Connection names) removed. */
function forwardHeaders(
  req: IncomingMessage,
  extra: Record<string, string>,
  drop?: Set<string>,
): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  const connection = headerValue(req.headers.connection);
  const named = connection ? new Set(connection.toLowerCase().split(/\s*,\s*/)) : null;
  const raw = req.headers as IncomingHttpHeaders;
  for (const name in raw) {
    if (isHopByHop(name) || named?.has(name) || drop?.has(name)) continue;
    const v = raw[name];
    if (v !== undefined) out[name] = v;
  }
  const forwardedFor = headerValue(req.headers["x-forwarded-for"]);
  const peer = req.socket.remoteAddress ?? "";
  out["x-forwarded-for"] = forwardedFor ? `${forwardedFor}, ${peer}` : peer;
  out["x-forwarded-host"] = headerValue(req.headers.host) ?? "";
  out["x-forwarded-proto"] = "encrypted" in req.socket && req.socket.encrypted ? "https" : "http";
  for (const k in extra) out[k] = extra[k]!;
  return out;
}

/** Response headers for the client: hop-by-hop removed. */
function responseHeaders(headers: Record<string, string | string[] | undefined>) {
  const out: Record<string, string | string[]> = {};
  const connection = headerValue(headers.connection);
  const named = connection ? new Set(connection.toLowerCase().split(/\s*,\s*/)) : null;
  for (const name in headers) {
    if (isHopByHop(name) || named?.has(name)) continue;
    const v = headers[name];
    if (v !== undefined) out[name] = v;
  }
  return out;
}

function openAiError(
  res: ServerResponse,
  status: number,
  type: string,
  message: string,
  extra: Record<string, string> = {},
) {
  const body = JSON.stringify({ error: { message, type, code: type } });
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
    ...extra,
  });
  res.end(body);
}

export interface ProxyOptions {
  table(): RouteTable;
  observer: ProxyObserver;
  /** Upstream connections per origin. Default 128. */
  connectionsPerOrigin?: number;
  /** Resolves upstream names for every connection (guardedLookup). */
  lookup: LookupFunction;
}

export class ReverseProxy {
  private readonly pools = new Map<string, Pool>();
  /** Upgraded connections (joined to their upstream, or waiting for its 101), each by the function that ends it. */
  private readonly tunnels = new Set<() => void>();
  /** Set by endTunnels(): upgrades still arriving are cut. */
  private closing = false;
  /** Token buckets per (proxy api, consumer key hash). */
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(private readonly o: ProxyOptions) {}

  private pool(origin: string): Pool {
    let p = this.pools.get(origin);
    if (!p) {
      p = new (undici().Pool)(origin, {
        connections: this.o.connectionsPerOrigin ?? 128,
        pipelining: 1,
        keepAliveTimeout: 30_000,
        connect: { lookup: this.o.lookup },
      });
      this.pools.set(origin, p);
    }
    return p;
  }

  /** What every request starts with: where it goes, and the context it carries there. */
  private arrival(req: IncomingMessage) {
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    const path = q === -1 ? url : url.slice(0, q);
    const hostHeader = headerValue(req.headers.host) ?? "";
    const host = hostOf(hostHeader);
    const correlation = correlationOf(headerValue(req.headers["x-correlation-id"]));
    const traceparent = nextTraceparent(headerValue(req.headers.traceparent));
    const malformed = isUnsafePath(path)
      ? "the request target is not a normalized path (absolute form, a dot segment, an encoded separator); send the path alone, normalized"
      : hostHeader !== "" && !isHostHeader(hostHeader)
        ? "the Host header is not a host name with an optional port"
        : undefined;
    return {
      url,
      q,
      path,
      host,
      malformed,
      correlation,
      traceparent,
      route: this.o.table().match(host, path),
      context: { "x-correlation-id": correlation, traceparent },
    };
  }

  /**
   * A WebSocket on a RestApi or service route: the upstream's 101 is relayed and the two sockets
   * are joined both ways until either side closes; an upstream that refuses the upgrade has its
   * answer relayed as is. LLM routes take no upgrades (400). Only WebSocket: any other upgrade
   * (h2c) would turn the tunnel into a channel for requests no route check ever saw; the
   * gateway serves those as plain requests (isWebSocketUpgrade).
   */
  readonly upgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    if (this.closing) {
      socket.destroy();
      return;
    }
    // Until it is joined (or refused), ended by endTunnels() like a joined one.
    const pending = () => socket.destroy();
    this.tunnels.add(pending);
    socket.once("close", () => this.tunnels.delete(pending));
    const started = performance.now();
    const { url, q, path, host, malformed, correlation, traceparent, route, context } =
      this.arrival(req);
    let status = 0;
    let errorText: string | undefined;
    let recorded = false;
    const record = () => {
      if (recorded) return;
      recorded = true;
      this.o.observer.done(route, {
        method: req.method ?? "GET",
        host,
        path,
        status,
        ms: Math.round((performance.now() - started) * 100) / 100,
        api: route?.name ?? null,
        correlation,
        traceparent,
        ...(errorText ? { error: errorText } : {}),
      });
    };
    socket.on("error", () => socket.destroy());
    const refuse = (code: number, errorCode: string, message: string) => {
      status = code;
      const body = JSON.stringify({ code: errorCode, message });
      socket.end(
        `HTTP/1.1 ${code} ${STATUS_CODES[code]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-correlation-id: ${correlation}\r\ntraceparent: ${traceparent}\r\nconnection: close\r\n\r\n${body}`,
      );
      record();
    };
    if (malformed) {
      refuse(400, "request.malformed", malformed);
      return;
    }
    if (!route) {
      const answer = routeNotFound(path);
      refuse(404, answer.code, answer.message);
      return;
    }
    if (route.kind !== "RestApi" && route.kind !== "ServiceRoute") {
      refuse(400, "route.upgrade_refused", `${route.name} is an LLM API: no upgrades`);
      return;
    }
    const rest = path.slice(route.prefix.length) || "/";
    const method = req.method ?? "GET";
    if (
      route.kind === "RestApi" &&
      route.operations &&
      !route.operations.some((op) => op.method === method && op.pattern.test(rest))
    ) {
      refuse(
        405,
        "route.operation_not_allowed",
        `${method} ${rest.slice(0, 200)} is not an operation of ${route.name}`,
      );
      return;
    }
    // The path goes as is: resolving it against the origin as a URL would let `//host/x` name
    // another host.
    const origin = new URL(route.upstream.origin);
    const headers = forwardHeaders(req, context);
    // The upgrade itself is hop-by-hop, and the one thing this request must carry on.
    headers.connection = "upgrade";
    headers.upgrade = headerValue(req.headers.upgrade) ?? "websocket";
    const up = (origin.protocol === "https:" ? httpsRequest : httpRequest)({
      protocol: origin.protocol,
      hostname: origin.hostname.replace(/^\[|\]$/g, ""),
      port: origin.port || (origin.protocol === "https:" ? 443 : 80),
      path: upstreamTarget(route.upstream.basePath, rest, q === -1 ? "" : url.slice(q)),
      method,
      headers,
      agent: false,
      lookup: this.o.lookup,
      timeout: route.upstream.timeoutMs,
    });
    up.on("upgrade", (res, upSocket, upHead) => {
      status = res.statusCode ?? 101;
      up.setTimeout(0);
      upSocket.setTimeout(0);
      const lines = [`HTTP/1.1 ${status} ${res.statusMessage ?? "Switching Protocols"}`];
      for (let i = 0; i < res.rawHeaders.length; i += 2) {
        const name = res.rawHeaders[i]!;
        const lower = name.toLowerCase();
        if (lower !== "connection" && lower !== "upgrade" && isHopByHop(lower)) continue;
        if (lower === "x-correlation-id" || lower === "traceparent") continue;
        lines.push(`${name}: ${res.rawHeaders[i + 1]}`);
      }
      lines.push(`x-correlation-id: ${correlation}`, `traceparent: ${traceparent}`);
      socket.write(`${lines.join("\r\n")}\r\n\r\n`);
      if (upHead.length) socket.write(upHead);
      if (head.length) upSocket.write(head);
      // Either side closing or failing ends both: no half of a WebSocket outlives the other.
      const end = () => {
        socket.destroy();
        upSocket.destroy();
        this.tunnels.delete(end);
        record();
      };
      this.tunnels.delete(pending);
      this.tunnels.add(end);
      if (this.closing) return end();
      upSocket.on("error", end).on("close", end);
      socket.on("error", end).on("close", end);
      upSocket.pipe(socket);
      socket.pipe(upSocket);
    });
    up.on("response", (res) => {
      // The upstream answered without switching: its answer goes back as is, then the connection ends.
      status = res.statusCode ?? 502;
      const lines = [`HTTP/1.1 ${status} ${res.statusMessage ?? ""}`];
      const out = { ...responseHeaders(res.headers), ...context, connection: "close" };
      for (const [name, value] of Object.entries(out))
        for (const v of Array.isArray(value) ? value : [value]) lines.push(`${name}: ${v}`);
      socket.write(`${lines.join("\r\n")}\r\n\r\n`);
      res.pipe(socket);
      res.on("end", record);
      // Cut short by the upstream: the client must not wait for the rest.
      res.on("close", () => {
        if (!res.complete) socket.destroy();
        record();
      });
    });
    up.on("timeout", () => {
      errorText = "upstream timeout";
      up.destroy();
      if (!recorded && status === 0)
        refuse(
          504,
          "upstream.timeout",
          `the upstream of ${route.name} did not answer in ${route.upstream.timeoutMs} ms`,
        );
    });
    up.on("error", (err: Error & { code?: string }) => {
      if (status !== 0) return;
      errorText = err.message;
      refuse(
        502,
        "upstream.unavailable",
        `the upstream of ${route.name} is unreachable (${err.code ?? "error"})`,
      );
    });
    // The client leaving before the upstream answers cancels the upstream request.
    socket.once("close", () => {
      if (status === 0) up.destroy();
    });
    up.end();
  };

  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    const started = performance.now();
    const { url, q, path, host, malformed, correlation, traceparent, route, context } =
      this.arrival(req);
    let errorText: string | undefined;
    res.on("finish", () => {
      this.o.observer.done(route, {
        method: req.method ?? "GET",
        host,
        path,
        status: res.statusCode,
        ms: Math.round((performance.now() - started) * 100) / 100,
        api: route?.name ?? null,
        correlation,
        traceparent,
        ...(errorText ? { error: errorText } : {}),
      });
    });
    if (malformed) {
      const body = JSON.stringify({ code: "request.malformed", message: malformed });
      res.writeHead(400, {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(body),
        ...context,
      });
      res.end(body);
      return;
    }
    if (!route) {
      const body = JSON.stringify(routeNotFound(path));
      res.writeHead(404, {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(body),
        ...context,
      });
      res.end(body);
      return;
    }
    const rest = path.slice(route.prefix.length) || "/";
    const target = upstreamTarget(route.upstream.basePath, rest, q === -1 ? "" : url.slice(q));
    if (route.kind === "RestApi" || route.kind === "ServiceRoute") {
      const method = req.method ?? "GET";
      if (
        route.kind === "RestApi" &&
        route.operations &&
        !route.operations.some((op) => op.method === method && op.pattern.test(rest))
      ) {
        const body = JSON.stringify({
          code: "route.operation_not_allowed",
          message: `${method} ${rest.slice(0, 200)} is not an operation of ${route.name}`,
        });
        res.writeHead(405, {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body),
          ...context,
        });
        res.end(body);
        return;
      }
      this.forward(
        req,
        res,
        route,
        target,
        forwardHeaders(req, context),
        undefined,
        context,
        (e) => {
          errorText = e;
        },
      );
      return;
    }
    void this.llm(req, res, route, target, context, (e) => {
      errorText = e;
    });
  };

  private takeToken(route: LlmProxyRoute, keyHash: string): number {
    const id = `${route.apiId}:${keyHash}`;
    const now = Date.now();
    const b = this.buckets.get(id) ?? { tokens: route.bucket.capacity, at: now };
    b.tokens = Math.min(route.bucket.capacity, b.tokens + (now - b.at) * route.bucket.perMs);
    b.at = now;
    this.buckets.set(id, b);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    // Seconds until one token is back.
    return Math.max(1, Math.ceil((1 - b.tokens) / route.bucket.perMs / 1000));
  }

  private async llm(
    req: IncomingMessage,
    res: ServerResponse,
    route: Exclude<Route, { kind: "RestApi" | "ServiceRoute" }>,
    upstreamPath: string,
    context: Record<string, string>,
    onError: (e: string) => void,
  ): Promise<void> {
    if (route.kind === "LlmProxy") {
      const auth = headerValue(req.headers.authorization);
      const key =
        (auth && /^Bearer\s+(\S+)$/i.exec(auth)?.[1]) || headerValue(req.headers["x-api-key"]);
      const hash = key ? createHash("sha256").update(key).digest("hex") : "";
      if (!key || !route.keyHashes.has(hash)) {
        req.resume();
        openAiError(
          res,
          401,
          "invalid_api_key",
          "a valid consumer key is required (Authorization: Bearer <key>)",
          context,
        );
        return;
      }
      const retryAfter = this.takeToken(route, hash);
      if (retryAfter) {
        req.resume();
        openAiError(
          res,
          429,
          "rate_limit_exceeded",
          `this consumer key's rate limit is exhausted; retry in ${retryAfter} s`,
          {
            ...context,
            "retry-after": String(retryAfter),
          },
        );
        return;
      }
    }
    let body: Buffer | undefined;
    const method = req.method ?? "GET";
    if (method !== "GET" && method !== "HEAD") {
      const read = await readBody(req, MAX_LLM_BODY_BYTES).catch(() => null);
      if (!read) {
        openAiError(
          res,
          413,
          "request_too_large",
          `the request body must be at most ${MAX_LLM_BODY_BYTES} bytes`,
          context,
        );
        return;
      }
      body = read;
      // The allowlist is only as good as the body it reads: an upstream may parse any body as
      // JSON whatever it is labelled, so a body that is not JSON is refused, not waved through.
      const mediaType = (headerValue(req.headers["content-type"]) ?? "application/json")
        .split(";")[0]!
        .trim()
        .toLowerCase();
      if (body.length > 0 && mediaType !== "application/json" && !mediaType.endsWith("+json")) {
        openAiError(
          res,
          415,
          "unsupported_media_type",
          "this gateway checks the model of every request, so it accepts only JSON bodies",
          context,
        );
        return;
      }
      if (body.length > 0) {
        let parsed: { model?: unknown };
        try {
          parsed = JSON.parse(body.toString("utf8"));
        } catch {
          openAiError(
            res,
            400,
            "invalid_request_error",
            "the request body is not valid JSON",
            context,
          );
          return;
        }
        if (
          parsed &&
          typeof parsed === "object" &&
          "model" in parsed &&
          !route.models.has(String(parsed.model))
        ) {
          openAiError(
            res,
            403,
            "model_not_allowed",
            `model ${String(parsed.model).slice(0, 100)} is not allowed here; allowed: ${[...route.models].join(", ")}`,
            context,
          );
          return;
        }
      }
    }
    const drop = new Set(["authorization", "x-api-key", "content-length"]);
    const headers = forwardHeaders(
      req,
      { ...context, authorization: `Bearer ${route.credential}` },
      drop,
    );
    if (body) headers["content-length"] = String(body.length);
    this.forward(req, res, route, upstreamPath, headers, body ?? null, context, onError);
  }

  private forward(
    req: IncomingMessage,
    res: ServerResponse,
    route: Route,
    path: string,
    headers: Record<string, string | string[]>,
    body: Buffer | null | undefined,
    context: Record<string, string>,
    onError: (e: string) => void,
  ): void {
    const method = (req.method ?? "GET") as "GET";
    const hasBody = body !== undefined ? body !== null : method !== "GET" && method !== "HEAD";
    let controller: Dispatcher.DispatchController | undefined;
    res.once("close", () => {
      // The client went away before the response finished: stop the upstream exchange too.
      if (!res.writableFinished) controller?.abort(new Error("the client closed the connection"));
    });
    const fail = (err: Error & { code?: string }) => {
      onError(err.code ?? err.message);
      if (res.headersSent) return void res.destroy();
      const timeout =
        err.code === "UND_ERR_HEADERS_TIMEOUT" || err.code === "UND_ERR_CONNECT_TIMEOUT";
      const msg = JSON.stringify({
        code: timeout ? "upstream.timeout" : "upstream.unavailable",
        message: timeout
          ? `the upstream of ${route.name} did not answer in ${route.upstream.timeoutMs} ms`
          : `the upstream of ${route.name} is unreachable (${err.code ?? "error"})`,
      });
      res.writeHead(timeout ? 504 : 502, {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(msg),
        ...context,
      });
      res.end(msg);
    };
    // The dispatch API writes upstream chunks straight to the client response: no intermediate
    // stream objects per request (measurably faster than request() at 64 connections).
    this.pool(route.upstream.origin).dispatch(
      {
        method,
        path,
        headers,
        body: hasBody ? (body ?? req) : null,
        headersTimeout: route.upstream.timeoutMs,
        bodyTimeout: route.upstream.timeoutMs,
      },
      {
        onRequestStart(c) {
          controller = c;
        },
        onResponseStart(_c, statusCode, upstreamHeaders) {
          // An informational response (103 Early Hints) comes here too, before the final one:
          // skipped, as the fast path skips it (writing its head would leave no way to send the
          // final one, and the client would get the 103 and a closed connection).
          if (statusCode < 200) return;
          res.writeHead(statusCode, { ...responseHeaders(upstreamHeaders), ...context });
          // A stream without a length (server-sent events, chunked) gets its headers now, so the
          // client sees the response start before the first chunk arrives.
          if (upstreamHeaders["content-length"] === undefined) res.flushHeaders();
        },
        onResponseData(c, chunk) {
          if (!res.write(chunk)) {
            c.pause();
            res.once("drain", () => c.resume());
          }
        },
        onResponseEnd() {
          res.end();
        },
        onResponseError(_c, err) {
          fail(err as Error & { code?: string });
        },
      },
    );
  }

  /**
   * Ends the joined WebSockets: they last as long as their clients like, so no shutdown could
   * wait for them (clients reconnect, to another gateway if this one is gone).
   */
  endTunnels(): void {
    this.closing = true;
    for (const end of [...this.tunnels]) end();
  }

  async close(): Promise<void> {
    this.endTunnels();
    await Promise.all([...this.pools.values()].map((p) => p.close().catch(() => {})));
  }
}
