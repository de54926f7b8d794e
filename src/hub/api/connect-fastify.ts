// Serves the Connect routes on Fastify, like @connectrpc/connect-fastify, with two differences:
// decode and size errors that Connect raises before any interceptor runs get the catalogue's
// codes, and unary Connect calls over HTTP/1.1 reach Connect's handler through a leaner adapter.

import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  type ConnectRouterOptions,
  type ContextValues,
  createConnectRouter,
} from "@connectrpc/connect";
import type { UniversalServerRequest, UniversalServerResponse } from "@connectrpc/connect/protocol";
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
  const code =
    error?.code === "internal" && message.startsWith("parse binary")
      ? "request.malformed"
      : error?.code === "resource_exhausted" && /exceeds|max/i.test(message)
        ? "request.too_large"
        : undefined;
  if (!code) return replay(res.status, text);
  const header = new Headers(res.header);
  header.set(ERROR_CODE_HEADER, code);
  header.delete("content-length");
  const body = JSON.stringify({ code: "invalid_argument", message });
  return replay(400, body, header);
}

/** The abort reason of a call whose client went away: one instance, built once (see below). */
const CLIENT_GONE = new ConnectError("the client went away", Code.Canceled);

/**
 * A unary Connect call over HTTP/1.1 as Connect's handler takes it, built leaner than
 * connect-node's adapter (which the other calls keep): that one aborts every request's signal
 * when its response closes, finished or not, and an abort without a reason builds a
 * DOMException, stack and all; it hands the body over through a stream iterator and builds the
 * URL with the URL parser. About a fifth of a WhoAmI's CPU went to those three in a profile.
 */
function leanUnaryRequest(
  req: IncomingMessage,
  res: ServerResponse,
  readMaxBytes: number,
  contextValues: ContextValues,
): UniversalServerRequest {
  const header = new Headers();
  const raw = req.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) header.append(raw[i]!, raw[i + 1]!);
  const controller = new AbortController();
  // Aborted only when the client leaves before its answer is written.
  const gone = () => {
    if (!res.writableFinished) controller.abort(CLIENT_GONE);
  };
  res.once("close", gone);
  req.once("error", gone);
  const secure = "encrypted" in req.socket && req.socket.encrypted;
  return {
    httpVersion: req.httpVersion,
    method: req.method ?? "POST",
    url: `${secure ? "https" : "http"}://${req.headers.host ?? "localhost"}${req.url ?? "/"}`,
    header,
    body: wholeBody(req, readMaxBytes),
    signal: controller.signal,
    contextValues,
  };
}

/**
 * The request body as one chunk, read when Connect asks for it (it refuses a declared length
 * over readMaxBytes before asking). A body that grows past readMaxBytes is handed over as far as
 * it came, for Connect to refuse, and the rest is discarded unread.
 */
function wholeBody(req: IncomingMessage, readMaxBytes: number): AsyncIterable<Uint8Array> {
  return {
    async *[Symbol.asyncIterator]() {
      const chunks: Buffer[] = [];
      let size = 0;
      // Gone before Connect asked: its "close" has fired already, and would not fire again.
      if (req.destroyed) throw CLIENT_GONE;
      await new Promise<void>((resolve, reject) => {
        const stop = () => {
          req.off("data", onData);
          req.off("end", onEnd);
          req.off("error", onError);
          req.off("close", onClose);
        };
        const onData = (chunk: Buffer) => {
          chunks.push(chunk);
          size += chunk.length;
          if (size > readMaxBytes) {
            stop();
            req.resume();
            resolve();
          }
        };
        const onEnd = () => {
          stop();
          resolve();
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
      if (size > 0) yield chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
    },
  };
}

/** A unary answer written with one writeHead and one end: no per-chunk promises or listeners. */
async function writeUnaryResponse(
  res: UniversalServerResponse,
  out: ServerResponse,
): Promise<void> {
  const chunks: Uint8Array[] = [];
  if (res.body) for await (const chunk of res.body) chunks.push(chunk);
  const headers: OutgoingHttpHeaders = {};
  res.header?.forEach((value, key) => {
    if (key !== "set-cookie") headers[key] = value;
  });
  const cookies = res.header?.getSetCookie() ?? [];
  if (cookies.length > 0) headers["set-cookie"] = cookies;
  out.writeHead(res.status, headers);
  out.end(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks));
}

export function connectOnFastify(app: FastifyInstance, options: ConnectOnFastifyOptions): void {
  const router = createConnectRouter(options);
  options.routes(router);
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
  const readMaxBytes = options.readMaxBytes ?? 0xffffffff;
  for (const handler of router.handlers) {
    const unary = handler.method.methodKind === "unary";
    app.all(handler.requestPath, async (request, reply) => {
      // The response is written to the raw socket below, not through reply.send.
      reply.hijack();
      try {
        // The lean path: a unary call in the Connect protocol over HTTP/1.1 (a POST of JSON or
        // binary protobuf). gRPC, gRPC-web, GET calls, streams and HTTP/2 take connect-node's.
        const contentType = request.headers["content-type"] ?? "";
        const lean =
          unary &&
          request.raw.httpVersionMajor === 1 &&
          request.method === "POST" &&
          (contentType.startsWith("application/json") ||
            contentType.startsWith("application/proto"));
        const contextValues = options.contextValues(request);
        const res = await handler(
          lean
            ? leanUnaryRequest(request.raw, reply.raw, readMaxBytes, contextValues)
            : universalRequestFromNodeRequest(
                request.raw,
                reply.raw,
                request.body as undefined,
                contextValues,
              ),
        );
        // Fastify keeps headers on the reply until reply.send, which Connect does not use.
        for (const [key, value] of Object.entries(reply.getHeaders()))
          if (value !== undefined) reply.raw.setHeader(key, value);
        const answer = await normalizeBadInput(res);
        if (lean) await writeUnaryResponse(answer, reply.raw);
        else await universalResponseToNodeResponse(answer, reply.raw);
      } catch (err) {
        if (ConnectError.from(err).code === Code.Aborted) return;
        options.onError(err, handler.method.name);
      }
    });
  }
}
