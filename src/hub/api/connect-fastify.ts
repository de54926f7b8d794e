// Serves the Connect routes on Fastify, like @connectrpc/connect-fastify, with one difference:
// decode and size errors that Connect raises before any interceptor runs get the catalogue's codes.
import {
  Code,
  ConnectError,
  type ConnectRouter,
  type ConnectRouterOptions,
  type ContextValues,
  createConnectRouter,
} from "@connectrpc/connect";
import type { UniversalServerResponse } from "@connectrpc/connect/protocol";
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
  for (const handler of router.handlers) {
    app.all(handler.requestPath, async (request, reply) => {
      // The response is written to the raw socket below, not through reply.send.
      reply.hijack();
      try {
        const res = await handler(
          universalRequestFromNodeRequest(
            request.raw,
            reply.raw,
            request.body as undefined,
            options.contextValues(request),
          ),
        );
        // Fastify keeps headers on the reply until reply.send, which Connect does not use.
        for (const [key, value] of Object.entries(reply.getHeaders()))
          if (value !== undefined) reply.raw.setHeader(key, value);
        await universalResponseToNodeResponse(await normalizeBadInput(res), reply.raw);
      } catch (err) {
        if (ConnectError.from(err).code === Code.Aborted) return;
        options.onError(err, handler.method.name);
      }
    });
  }
}
