// Serves the Connect routes on Fastify, like @connectrpc/connect-fastify, with two differences:
// decode and size errors that Connect raises before any interceptor runs get the catalogue's
// codes, and unary Connect calls over HTTP/1.1 are served directly (see serveUnary).

import type {
  IncomingHttpHeaders,
  IncomingMessage,
  OutgoingHttpHeaders,
  ServerResponse,
} from "node:http";
import { create, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  type ConnectRouterOptions,
  type ContextValues,
  createConnectRouter,
  createServiceImplSpec,
  type HandlerContext,
  type Interceptor,
  type MethodImplSpec,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";
import {
  createMethodSerializationLookup,
  createMethodUrl,
  type MethodSerializationLookup,
  type UniversalServerResponse,
  validateUniversalHandlerOptions,
} from "@connectrpc/connect/protocol";
import * as protoConnect from "@connectrpc/connect/protocol-connect";
import * as protoGrpc from "@connectrpc/connect/protocol-grpc";
import * as protoGrpcWeb from "@connectrpc/connect/protocol-grpc-web";
import {
  universalRequestFromNodeRequest,
  universalResponseToNodeResponse,
} from "@connectrpc/connect-node";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { ERROR_CODE_HEADER } from "../../shared/index.js";

export interface ConnectOnFastifyOptions extends ConnectRouterOptions {
  routes: (router: ConnectRouter) => void;
  contextValues: (request: FastifyRequest) => ContextValues;
  onError: (err: unknown, method: string) => void;
}

/** The catalogue's code for an error Connect raises on bad input before interceptors run. */
function badInputCode(code: string | undefined, message: string): string | undefined {
  if (code === "internal" && message.startsWith("parse binary")) return "request.malformed";
  if (code === "resource_exhausted" && /exceeds|max/i.test(message)) return "request.too_large";
  return undefined;
}

/**
 * Connect answers an undecodable binary body with `internal` (HTTP 500) and a body over
 * readMaxBytes with `resource_exhausted` (HTTP 429), before interceptors run. Both are bad
 * input: answer 400 invalid_argument with request.malformed / request.too_large instead.
 */
async function normalizeBadInput(res: UniversalServerResponse): Promise<UniversalServerResponse> {
  if ((res.status !== 500 && res.status !== 429) || !res.body) return res;
  const chunks: Uint8Array[] = [];
  for await (const chunk of res.body) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString("utf8");
  let error: { code?: string; message?: string } | undefined;
  try {
    error = JSON.parse(text);
  } catch {
    error = undefined;
  }
  const replay = (status: number, body: string, header = res.header) => ({
    ...res,
    status,
    header,
    body: (async function* () {
      yield Buffer.from(body);
    })(),
  });
  const message = error?.message ?? "";
  const code = badInputCode(error?.code, message);
  if (!code) return replay(res.status, text);
  const header = new Headers(res.header);
  header.set(ERROR_CODE_HEADER, code);
  header.delete("content-length");
  const body = JSON.stringify({ code: "invalid_argument", message });
  return replay(400, body, header);
}

/** The abort reason of a call whose client went away: one instance, built once (see below). */
const CLIENT_GONE = new ConnectError("the client went away", Code.Canceled);

type HeaderPairs = ReturnType<Headers["entries"]>;
type HeaderStrings = ReturnType<Headers["keys"]>;

/** Headers with its members typed as methods (Node's types give them as properties). */
interface HeadersClass {
  new (): {
    append(name: string, value: string): void;
    delete(name: string): void;
    get(name: string): string | null;
    getSetCookie(): string[];
    has(name: string): boolean;
    set(name: string, value: string): void;
    forEach(
      callback: (value: string, key: string, parent: Headers) => void,
      thisArg?: unknown,
    ): void;
    entries(): HeaderPairs;
    keys(): HeaderStrings;
    values(): HeaderStrings;
    [Symbol.iterator](): HeaderPairs;
  };
}

/**
 * A call's request headers over Node's parsed ones, as connect-node makes them (a repeated
 * Authorization or Content-Type counts once, the first; repeated Cookie lines are joined with
 * "; "). get() and has() read Node's object; anything else copies it in first. Appending each
 * header to a Headers (each name and value checked and sorted in) was ~12,000 instructions of a
 * WhoAmI, whose interceptors only get() two headers.
 */
class NodeRequestHeaders extends (Headers as HeadersClass) {
  #source: IncomingHttpHeaders | undefined;

  constructor(source: IncomingHttpHeaders) {
    super();
    this.#source = source;
  }

  /** From here on this is a plain Headers holding what Node parsed. */
  #copied(): void {
    const source = this.#source;
    if (source === undefined) return;
    this.#source = undefined;
    for (const [key, value] of Object.entries(source)) {
      if (value === undefined) continue;
      if (typeof value === "string") super.append(key, value);
      else for (const v of value) super.append(key, v);
    }
  }

  override get(name: string): string | null {
    const source = this.#source;
    if (source === undefined) return super.get(name);
    // Own values only: Node's object inherits Object's prototype ("constructor" is not a header).
    const key = name.toLowerCase();
    if (!Object.hasOwn(source, key)) return null;
    const value = source[key];
    if (typeof value === "string") return value;
    return Array.isArray(value) ? value.join(", ") : null;
  }

  override has(name: string): boolean {
    return this.get(name) !== null;
  }

  override append(name: string, value: string): void {
    this.#copied();
    super.append(name, value);
  }

  override set(name: string, value: string): void {
    this.#copied();
    super.set(name, value);
  }

  override delete(name: string): void {
    this.#copied();
    super.delete(name);
  }

  override getSetCookie(): string[] {
    this.#copied();
    return super.getSetCookie();
  }

  override forEach(
    callback: (value: string, key: string, parent: Headers) => void,
    thisArg?: unknown,
  ): void {
    this.#copied();
    super.forEach(callback, thisArg);
  }

  override entries(): HeaderPairs {
    this.#copied();
    return super.entries();
  }

  override keys(): HeaderStrings {
    this.#copied();
    return super.keys();
  }

  override values(): HeaderStrings {
    this.#copied();
    return super.values();
  }

  override [Symbol.iterator](): HeaderPairs {
    this.#copied();
    return super[Symbol.iterator]();
  }
}

/** What serveUnary needs of one unary method: its implementation and its (de)serializers. */
interface UnaryMethod {
  spec: MethodImplSpec & { kind: "unary" };
  serialization: MethodSerializationLookup<DescMessage, DescMessage>;
}

type HandlerOptions = ReturnType<typeof validateUniversalHandlerOptions>;

/**
 * A call's abort signal, made only when something asks for it. An AbortSignal outlives the
 * young generation: with one per WhoAmI, 63% of what the hub promoted to the old generation was
 * signals (213 -> 80 KB per scavenge at 3,000 req/s, `--trace-gc-nvp`), and the old generation's
 * collections were the stalls behind the p99. Most handlers never read it. Aborted before it was
 * made, it is made aborted.
 */
class CallSignal {
  private controller: AbortController | undefined;
  private reason: unknown;
  private aborted = false;

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.aborted) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  /** The first reason wins, as with AbortController. */
  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.controller?.abort(reason);
  }
}

/** Where a call's signal comes from: its CallSignal, or the request an interceptor passed on. */
interface SignalSource {
  readonly signal: AbortSignal;
}

/**
 * A HandlerContext whose signal is read from its source when asked. A class, not an object
 * literal with a getter: a literal's getter is a new closure per call, and those kept each call's
 * objects alive until the old generation's next collection (promotion went from 80 KB to 1.6 MB
 * per scavenge, `--trace-gc-nvp`). A spread copy of it has no signal; no handler copies one.
 */
class CallContext implements HandlerContext {
  constructor(
    readonly method: HandlerContext["method"],
    readonly service: HandlerContext["service"],
    readonly url: string,
    private readonly source: SignalSource,
    readonly requestHeader: Headers,
    readonly responseHeader: Headers,
    readonly responseTrailer: Headers,
    readonly values: ContextValues,
  ) {}
  readonly protocolName = "connect";
  readonly requestMethod = "POST";
  timeoutMs(): undefined {
    return undefined;
  }
  get signal(): AbortSignal {
    return this.source.signal;
  }
}

/**
 * The UnaryRequest the interceptors see, with its signal read from the call when asked. An
 * interceptor that passes on a copy (`next({ ...req, header })`) copies own fields only, not this
 * getter: the implementation then falls back to the call's signal (see invokeUnary).
 */
class CallRequest implements UnaryRequest {
  readonly stream = false;
  readonly requestMethod = "POST";
  readonly service: UnaryRequest["service"];
  constructor(
    readonly message: MessageShape<DescMessage>,
    readonly method: UnaryRequest["method"],
    readonly url: string,
    private readonly call: CallSignal,
    readonly header: Headers,
    readonly contextValues: ContextValues,
  ) {
    this.service = method.parent;
  }
  get signal(): AbortSignal {
    return this.call.signal;
  }
}

/**
 * Connect's invokeUnaryImplementation, with the signal read only when the interceptors or the
 * implementation read it (Connect's copies it into the request and the handler context at once).
 * The rest is the same: the interceptors wrap the implementation in the order given, its answer
 * is made a full message of the output type, and the headers and trailers the interceptors
 * answer with become the response's.
 */
async function invokeUnary(
  spec: MethodImplSpec & { kind: "unary" },
  context: CallContext,
  call: CallSignal,
  input: MessageShape<DescMessage>,
  interceptors: Interceptor[],
): Promise<MessageShape<DescMessage>> {
  const method = spec.method;
  // Connect's AnyFn: what an interceptor wraps (it is not exported by name).
  type AnyFn = Parameters<Interceptor>[0];
  const implementation: AnyFn = async (unary) => {
    const req = unary as UnaryRequest;
    // "in", not a read: reading the signal would make it. A copy of the request without one
    // (spread by an interceptor) gets the call's.
    const handlerContext = new CallContext(
      method,
      req.service ?? method.parent,
      context.url,
      "signal" in req ? req : call,
      req.header,
      context.responseHeader,
      context.responseTrailer,
      req.contextValues,
    );
    const output = await spec.impl(req.message, handlerContext);
    return {
      stream: false,
      message: create(method.output, output),
      method,
      service: method.parent,
      header: context.responseHeader,
      trailer: context.responseTrailer,
    } satisfies UnaryResponse;
  };
  let next = implementation;
  for (let i = interceptors.length - 1; i >= 0; i--) next = interceptors[i]!(next);
  const request = new CallRequest(
    input,
    method,
    context.url,
    call,
    context.requestHeader,
    context.values,
  );
  const res = (await next(request)) as UnaryResponse;
  copyHeaders(res.header, context.responseHeader);
  copyHeaders(res.trailer, context.responseTrailer);
  return res.message;
}

/** Makes `to` hold exactly what `from` holds (Connect's copyHeaders). */
function copyHeaders(from: Headers, to: Headers): void {
  if (from === to) return;
  for (const key of [...to.keys()]) to.delete(key);
  from.forEach((value, key) => {
    to.set(key, value);
  });
}

/**
 * A unary call in the Connect protocol over HTTP/1.1, served without Connect's per-call handler
 * but with its pieces (body limits, serializers, interceptors, error encoding), so the answer has
 * the same status, headers and body (test/integration/connect-unary.test.ts). Connect's handler
 * builds three AbortControllers per call and aborts one when the call ends, building a
 * DOMException with its stack; it hands the body over through async iterators and the answer
 * back through another. In a profile of WhoAmI on PostgreSQL those were about a fifth of the
 * hub's CPU. The signal here is made only if read (CallSignal), and aborted only when the client
 * leaves before its answer is written, or with the error a call failed with.
 */
async function serveUnary(
  method: UnaryMethod,
  opt: HandlerOptions,
  binary: boolean,
  req: IncomingMessage,
  res: ServerResponse,
  contextValues: ContextValues,
): Promise<void> {
  const requestHeader = new NodeRequestHeaders(req.headers);
  const call = new CallSignal();
  const gone = () => {
    if (!res.writableFinished) call.abort(CLIENT_GONE);
  };
  res.once("close", gone);
  req.once("error", gone);
  const secure = "encrypted" in req.socket && req.socket.encrypted;
  const { spec } = method;
  const context = new CallContext(
    spec.method,
    spec.method.parent,
    `${secure ? "https" : "http"}://${req.headers.host ?? "localhost"}${req.url ?? "/"}`,
    call,
    requestHeader,
    // Empty: the content type and length are added as the answer is written (writeAnswer).
    new Headers(),
    new Headers(),
    contextValues,
  );
  let status = 200;
  let body: Uint8Array;
  try {
    const bytes = await readUnaryBody(
      req,
      opt.readMaxBytes,
      requestHeader.get(protoConnect.headerUnaryContentLength),
    );
    const input = method.serialization.getI(binary).parse(bytes);
    const output = await invokeUnary(spec, context, call, input, opt.interceptors);
    body = method.serialization.getO(binary).serialize(output);
  } catch (e) {
    const error =
      e instanceof ConnectError
        ? e
        : new ConnectError("internal error", Code.Internal, undefined, undefined, e);
    call.abort(error);
    const header = context.responseHeader;
    header.set(protoConnect.headerContentType, protoConnect.contentTypeUnaryJson);
    for (const [key, value] of error.metadata) header.set(key, value);
    const json = protoConnect.errorToJson(error, opt.jsonOptions);
    const message = typeof json.message === "string" ? json.message : "";
    const catalogued = badInputCode(String(json.code), message);
    if (catalogued) {
      status = 400;
      header.set(ERROR_CODE_HEADER, catalogued);
      body = Buffer.from(JSON.stringify({ code: "invalid_argument", message }));
    } else {
      status = protoConnect.codeToHttpStatus(error.code);
      body = Buffer.from(JSON.stringify(json));
    }
  }
  // Trailers travel as trailer-* headers in a unary answer; most calls have none, and the copy
  // trailerMux makes of every header would be work for nothing.
  const trailer = context.responseTrailer;
  const header = trailer.keys().next().done
    ? context.responseHeader
    : protoConnect.trailerMux(context.responseHeader, trailer);
  // A body that went past the limit was not read to its end: the connection cannot carry another
  // request, and an upload that never ends must not hold it open.
  if (!req.complete) {
    header.set("connection", "close");
    res.once("finish", () => req.socket.destroy());
  }
  const contentType = binary
    ? protoConnect.contentTypeUnaryProto
    : protoConnect.contentTypeUnaryJson;
  writeAnswer(status, contentType, header, body, res);
}

/** The request body, refused in the same order and words as Connect's readAllBytes. */
async function readUnaryBody(
  req: IncomingMessage,
  readMaxBytes: number,
  lengthHeader: string | null,
): Promise<Uint8Array> {
  const hint = lengthHeader === null ? Number.NaN : Number.parseInt(lengthHeader, 10);
  const known = Number.isSafeInteger(hint) && hint >= 0;
  if (known && hint > readMaxBytes)
    throw new ConnectError(
      `message size ${hint} is larger than configured readMaxBytes ${readMaxBytes}`,
      Code.ResourceExhausted,
    );
  const bytes = await wholeBody(req, readMaxBytes);
  if (known && bytes.byteLength !== hint)
    throw new ConnectError(
      `protocol error: promised ${hint} bytes, received ${bytes.byteLength}`,
      Code.InvalidArgument,
    );
  if (!known && bytes.byteLength > readMaxBytes)
    throw new ConnectError(
      `message size is larger than configured readMaxBytes ${readMaxBytes}`,
      Code.ResourceExhausted,
    );
  return bytes;
}

/**
 * The request body as one chunk (empty when there is none). A body that grows past readMaxBytes
 * is returned as far as it came, for readUnaryBody to refuse, and the rest is discarded unread.
 */
function wholeBody(req: IncomingMessage, readMaxBytes: number): Promise<Uint8Array> {
  // Gone before we asked: its "close" has fired already, and would not fire again.
  if (req.destroyed) return Promise.reject(CLIENT_GONE);
  return new Promise<Uint8Array>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const stop = () => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      req.off("close", onClose);
    };
    const whole = () => (chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
      if (size > readMaxBytes) {
        stop();
        req.resume();
        resolve(whole());
      }
    };
    const onEnd = () => {
      stop();
      resolve(whole());
    };
    const onError = (err: Error) => {
      stop();
      reject(err);
    };
    const onClose = () => {
      stop();
      reject(CLIENT_GONE);
    };
    req.on("data", onData);
    req.once("end", onEnd);
    req.once("error", onError);
    req.once("close", onClose);
  });
}

/**
 * An answer written with one writeHead and one end: no per-chunk promises or listeners. The
 * content type the call's protocol gives is the default a handler's own header replaces, as in
 * Connect, where it is set before the handler runs; the length is the body's.
 */
function writeAnswer(
  status: number,
  contentType: string,
  header: Headers,
  body: Uint8Array,
  out: ServerResponse,
): void {
  // Lowercase, as Headers gives its names: a handler's content-type replaces this one.
  const headers: OutgoingHttpHeaders = { "content-type": contentType };
  header.forEach((value, key) => {
    if (key !== "set-cookie") headers[key] = value;
  });
  const cookies = header.getSetCookie();
  if (cookies.length > 0) headers["set-cookie"] = cookies;
  headers["content-length"] = String(body.byteLength);
  out.writeHead(status, headers);
  out.end(body);
}

/**
 * Serves a request before Fastify sees it if it is a unary call the direct path takes (its exact
 * path, no query string), and says whether it did; `prepare` gives it what Fastify's hooks would
 * have (response headers set on `res`, the call's context values). Fastify's routing, hooks and
 * reply objects were ~14% of a WhoAmI's CPU in a profile.
 */
export type DirectUnary = (
  req: IncomingMessage,
  res: ServerResponse,
  prepare: (req: IncomingMessage, res: ServerResponse) => ContextValues,
) => boolean;

/** Registers the Connect routes on `app`; returns the direct path for the server to try first. */
export function connectOnFastify(
  app: FastifyInstance,
  options: ConnectOnFastifyOptions,
): DirectUnary | undefined {
  const router = createConnectRouter(options);
  const opt = validateUniversalHandlerOptions(options);
  // serveUnary answers as Connect would only with these defaults; otherwise Connect serves all.
  const direct =
    options.connect !== false &&
    opt.acceptCompression.length === 0 &&
    !opt.requireConnectProtocolHeader &&
    !opt.shutdownSignal;
  const unaryMethods = new Map<string, UnaryMethod>();
  const recording: ConnectRouter = Object.create(router);
  Object.defineProperty(recording, "service", {
    value: (...args: Parameters<ConnectRouter["service"]>) => {
      const [service, implementation, serviceOptions] = args;
      // Services with options of their own (interceptors, limits) are left to Connect.
      if (direct && !serviceOptions)
        for (const spec of Object.values(createServiceImplSpec(service, implementation).methods))
          if (spec.kind === "unary")
            unaryMethods.set(createMethodUrl("/", spec.method), {
              spec,
              serialization: createMethodSerializationLookup(
                spec.method,
                opt.binaryOptions,
                opt.jsonOptions,
                opt,
              ),
            });
      router.service(...args);
      return recording;
    },
  });
  options.routes(recording);
  // Connect reads the raw bodies itself.
  const noop = (_req: unknown, _payload: unknown, done: (err: null, body?: unknown) => void) =>
    done(null, undefined);
  app.addContentTypeParser(
    [
      protoConnect.contentTypeUnaryJson,
      protoConnect.contentTypeStreamJson,
      protoGrpcWeb.contentTypeProto,
      protoGrpcWeb.contentTypeJson,
      protoGrpc.contentTypeProto,
      protoGrpc.contentTypeJson,
    ],
    noop,
  );
  app.addContentTypeParser(protoGrpc.contentTypeRegExp, noop);
  app.addContentTypeParser(protoGrpcWeb.contentTypeRegExp, noop);
  app.addContentTypeParser(protoConnect.contentTypeRegExp, noop);
  /** A call that failed outside Connect's error encoding: reported, unless the client left. */
  const failed = (err: unknown, method: string) => {
    if (ConnectError.from(err).code !== Code.Aborted) options.onError(err, method);
  };
  for (const handler of router.handlers) {
    const unary = unaryMethods.get(handler.requestPath);
    app.all(handler.requestPath, async (request, reply) => {
      // The response is written to the raw socket below, not through reply.send.
      reply.hijack();
      const raw = request.raw;
      try {
        // Fastify keeps headers on the reply until reply.send, which neither path uses.
        for (const [key, value] of Object.entries(reply.getHeaders()))
          if (value !== undefined) reply.raw.setHeader(key, value);
        const contextValues = options.contextValues(request);
        const binary = unary ? directEncoding(raw) : undefined;
        if (unary && binary !== undefined) {
          await serveUnary(unary, opt, binary, raw, reply.raw, contextValues);
          return;
        }
        const res = await handler(
          universalRequestFromNodeRequest(raw, reply.raw, request.body as undefined, contextValues),
        );
        await universalResponseToNodeResponse(await normalizeBadInput(res), reply.raw);
      } catch (err) {
        failed(err, handler.method.name);
      }
    });
  }
  if (!direct) return undefined;
  return (req, res, prepare) => {
    const unary = req.url === undefined ? undefined : unaryMethods.get(req.url);
    const binary = unary ? directEncoding(req) : undefined;
    if (!unary || binary === undefined) return false;
    const contextValues = prepare(req, res);
    serveUnary(unary, opt, binary, req, res, contextValues).catch((err: unknown) =>
      failed(err, unary.spec.method.name),
    );
    return true;
  };
}

/**
 * Whether the direct path serves this request, and in which encoding: a unary call in the Connect
 * protocol over HTTP/1.1 (a POST of JSON or binary protobuf) without compression or a timeout
 * (true: binary). gRPC, gRPC-web, GET calls, streams, HTTP/2 and the rest (undefined) take
 * Connect's handler through connect-node's adapter.
 */
function directEncoding(req: IncomingMessage): boolean | undefined {
  if (req.httpVersionMajor !== 1 || req.method !== "POST") return undefined;
  const type = protoConnect.parseContentType(req.headers["content-type"] ?? null);
  if (
    !type ||
    type.stream ||
    req.headers["content-encoding"] !== undefined ||
    req.headers["connect-timeout-ms"] !== undefined
  )
    return undefined;
  return type.binary;
}
