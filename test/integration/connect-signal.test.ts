// The abort signal of a unary call served directly (src/hub/api/connect-fastify.ts) is made only
// when an interceptor or the handler reads it. These prove it still behaves as one signal per
// call: shared by the interceptors and the handler, aborted when the client leaves whether it was
// read before or after, and left alone when the call is answered.
import { type AddressInfo, connect, type Socket } from "node:net";
import { Code, ConnectError, createContextValues, type Interceptor } from "@connectrpc/connect";
import Fastify, { type FastifyInstance } from "fastify";
import { afterEach, describe, expect, it } from "vitest";
import { IdentityService } from "../../src/gen/flotilla/v1/identity_pb.js";
import { connectOnFastify } from "../../src/hub/api/index.js";

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
}

function deferred<T = void>(): Deferred<T> {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

const WHO_AM_I = "/flotilla.v1.IdentityService/WhoAmI";

describe("a directly served unary call's abort signal", () => {
  let app: FastifyInstance | undefined;

  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  /** A server whose WhoAmI runs `whoAmI`, behind an interceptor that may read the signal. */
  async function serve(
    whoAmI: (signal: () => AbortSignal) => Promise<void>,
    interceptor: Interceptor = (next) => next,
  ): Promise<string> {
    app = Fastify();
    await app.register(async (scope) =>
      connectOnFastify(scope, {
        routes: (router) =>
          router.service(IdentityService, {
            async whoAmI(_req, ctx) {
              await whoAmI(() => ctx.signal);
              return {};
            },
          }),
        interceptors: [interceptor],
        contextValues: () => createContextValues(),
        onError: () => {},
      }),
    );
    await app.listen({ host: "127.0.0.1", port: 0 });
    return `127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  }

  /** Sends a WhoAmI on a raw socket and returns it, to be destroyed mid-call. */
  function startCall(hostPort: string) {
    const [host, port] = hostPort.split(":");
    const socket = connect(Number(port), host);
    socket.on("error", () => {});
    socket.write(
      `POST ${WHO_AM_I} HTTP/1.1\r\nhost: ${hostPort}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}`,
    );
    return socket;
  }

  it("is aborted with Canceled when the client leaves, for a handler that held it", async () => {
    const started = deferred();
    const aborted = deferred<unknown>();
    const hostPort = await serve(async (signal) => {
      const s = signal();
      started.resolve();
      await new Promise<void>((resolve) =>
        s.addEventListener("abort", () => {
          aborted.resolve(s.reason);
          resolve();
        }),
      );
    });
    const socket = startCall(hostPort);
    await started.promise;
    socket.destroy();
    const reason = await aborted.promise;
    expect(reason).toBeInstanceOf(ConnectError);
    expect((reason as ConnectError).code).toBe(Code.Canceled);
  });

  it("is already aborted for a handler that reads it only after the client left", async () => {
    const started = deferred();
    const clientGone = deferred();
    const seen = deferred<{ aborted: boolean; reason: unknown }>();
    const hostPort = await serve(async (signal) => {
      started.resolve();
      await clientGone.promise;
      const s = signal();
      seen.resolve({ aborted: s.aborted, reason: s.reason });
    });
    // The server's side of the connection: the handler reads its signal once it has closed.
    const serverSide = new Promise<Socket>((resolve) =>
      app?.server.once("connection", (s: Socket) => resolve(s)),
    );
    const socket = startCall(hostPort);
    const serverSocket = await serverSide;
    await started.promise;
    const closed = new Promise((resolve) => serverSocket.once("close", resolve));
    socket.destroy();
    await closed;
    await new Promise((resolve) => setImmediate(resolve));
    clientGone.resolve();
    const { aborted, reason } = await seen.promise;
    expect(aborted).toBe(true);
    expect((reason as ConnectError).code).toBe(Code.Canceled);
  });

  it("is the same signal for the interceptors and the handler", async () => {
    let fromInterceptor: AbortSignal | undefined;
    let fromHandler: AbortSignal | undefined;
    const hostPort = await serve(
      async (signal) => {
        fromHandler = signal();
      },
      (next) => async (req) => {
        fromInterceptor = req.signal;
        return next(req);
      },
    );
    const res = await fetch(`http://${hostPort}${WHO_AM_I}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    expect(res.status).toBe(200);
    expect(fromHandler).toBeDefined();
    expect(fromInterceptor).toBe(fromHandler);
  });

  it("reaches the handler, made from the call, when an interceptor passes on a copy of the request", async () => {
    let handlerSignal: AbortSignal | undefined;
    const hostPort = await serve(
      async (signal) => {
        handlerSignal = signal();
      },
      (next) => async (req) => next({ ...req, header: new Headers(req.header) }),
    );
    const res = await fetch(`http://${hostPort}${WHO_AM_I}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    expect(res.status).toBe(200);
    expect(handlerSignal).toBeInstanceOf(AbortSignal);
    expect(handlerSignal?.aborted).toBe(false);
  });

  it("is not aborted when the call is answered and the connection then closes", async () => {
    let held: AbortSignal | undefined;
    const hostPort = await serve(async (signal) => {
      held = signal();
    });
    const res = await fetch(`http://${hostPort}${WHO_AM_I}`, {
      method: "POST",
      headers: { "content-type": "application/json", connection: "close" },
      body: "{}",
    });
    expect(res.status).toBe(200);
    await res.text();
    await new Promise((r) => setTimeout(r, 100));
    expect(held?.aborted).toBe(false);
  });
});
