// The agent's admin API: probes, Prometheus metrics, status, drain, resume, reload, and the signed,
// sealed direct-dispatch endpoint a hub replica uses when none holds this agent's control channel.
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import {
  type AdminAction,
  AGENT_DIRECT_DISPATCH_PATH,
  classifyAddress,
  DIRECT_ANSWER_SIGNATURE_HEADER,
  DIRECT_SIGNATURE_HEADER,
  DIRECT_TIMESTAMP_HEADER,
  FrameError,
  type HubFrame,
  type Logger,
  notLocalOperator,
  notOperatorsUser,
  openDirectRequest,
  parseHubFrame,
  readBody,
  sealDirectAnswer,
  signDirectAnswer,
  verifyDirect,
} from "../shared/index.js";
import type { AgentStatus } from "./agent.js";
import type { Outcome } from "./state.js";

const ACTIONS: Record<string, AdminAction> = {
  "POST /drain": "drain",
  "POST /resume": "resume",
  "POST /reload": "reload",
  "GET /status": "status",
};

/** A dispatch frame is at most 1 MiB on the channel; the direct path takes no more. */
const MAX_DIRECT_BODY_BYTES = 1024 * 1024;

export interface AdminOptions {
  port: number;
  host: string;
  status: () => AgentStatus;
  admin: (action: AdminAction) => Promise<unknown>;
  log: Logger;
  /** The key hub requests are signed with (derived from the server's secret). */
  signingKey: () => Buffer;
  /**
   * The key a direct dispatch and its answer are sealed with (derived from the server's secret
   * under its own label): the dispatch carries decrypted secrets over plain HTTP.
   */
  sealingKey: () => Buffer;
  /** Runs a dispatch once (the ledger decides) and answers its outcome. */
  dispatch: (
    frame: Extract<HubFrame, { type: "dispatch" }>,
  ) => Promise<Outcome | { deferred: string }>;
}

const isLoopback = (address: string | undefined) =>
  !!address && classifyAddress(address) === "loopback";

/** Plain node:http, not Fastify: the agent must stay small (its RSS target is 60 MB idle). */
export async function serveAdmin(
  o: AdminOptions,
): Promise<{ url: string; close(): Promise<void> }> {
  const { status, admin, log } = o;
  const server = createServer((req, res) => {
    // Set once a signed request verified: the answer is signed back, bound to that request.
    let answerSignedFor: string | undefined;
    const reply = (code: number, body: unknown, type = "application/json") => {
      if (res.headersSent) return;
      const text = typeof body === "string" ? body : JSON.stringify(body);
      res.writeHead(code, {
        "content-type": type,
        ...(answerSignedFor
          ? {
              [DIRECT_ANSWER_SIGNATURE_HEADER]: signDirectAnswer(
                o.signingKey(),
                answerSignedFor,
                code,
                text,
              ),
            }
          : {}),
      });
      res.end(text);
    };
    const path = (req.url ?? "/").split("?")[0]!;
    const route = `${req.method} ${path}`;
    const signed = req.headers[DIRECT_SIGNATURE_HEADER] !== undefined;
    const handle = async () => {
      const body =
        req.method === "GET" ? Buffer.alloc(0) : await readBody(req, MAX_DIRECT_BODY_BYTES);
      if (body === null)
        return reply(413, {
          code: "request.too_large",
          message: `the body exceeds ${MAX_DIRECT_BODY_BYTES} bytes`,
        });
      // Signed requests are checked wherever they come from; unsigned ones are the local
      // operator's, so they are taken only from loopback (and never for a dispatch).
      if (signed || route === `POST ${AGENT_DIRECT_DISPATCH_PATH}`) {
        const refused = verifyDirect(
          o.signingKey(),
          req.method ?? "GET",
          path,
          body,
          header(req, DIRECT_TIMESTAMP_HEADER),
          header(req, DIRECT_SIGNATURE_HEADER),
        );
        if (refused) {
          log.warn(
            { route, remote: req.socket.remoteAddress, refused },
            "unsigned admin call refused",
          );
          return reply(401, {
            code: "auth.unauthenticated",
            message: `not signed by the hub: ${refused}`,
          });
        }
        answerSignedFor = header(req, DIRECT_SIGNATURE_HEADER);
      } else if (!/^GET \/(health|ready)$/.test(route)) {
        if (!isLoopback(req.socket.remoteAddress))
          return reply(401, {
            code: "auth.unauthenticated",
            message: "only loopback callers may use the admin API unsigned",
          });
        // Metrics are for any local scraper; the rest (status, drain, resume, reload) only for
        // the operator's user: a workload on this host (another user) could drain the server.
        const stranger =
          notLocalOperator(req.headers) ??
          (route === "GET /metrics" ? undefined : await notOperatorsUser(req.socket));
        if (stranger) {
          log.warn({ route, stranger }, "unsigned admin call from loopback refused");
          return reply(401, {
            code: "auth.unauthenticated",
            message: `unsigned admin calls are taken from this host's operator only, and ${stranger}`,
          });
        }
      }
      if (route === "GET /health") return reply(200, { status: "ok" });
      if (route === "GET /ready") {
        const s = status();
        // Not ready while draining or while the hub cannot reach it.
        if (s.draining) return reply(503, { status: "draining" });
        return s.connected
          ? reply(200, { status: "ready" })
          : reply(503, { status: "disconnected" });
      }
      if (route === "GET /metrics")
        return reply(200, metrics(status()), "text/plain; version=0.0.4");
      if (route === `POST ${AGENT_DIRECT_DISPATCH_PATH}`) {
        const sealingKey = o.sealingKey();
        // Only a sealed frame is taken: a plain one would mean its secrets crossed in clear.
        const opened = openDirectRequest(sealingKey, path, body);
        if (opened === null)
          return reply(400, {
            code: "frame.malformed",
            message: "a direct dispatch must be sealed under this server's key",
          });
        let frame: HubFrame;
        try {
          frame = parseHubFrame(opened);
          if (frame.type !== "dispatch")
            throw new FrameError("frame.malformed", "only a dispatch frame is accepted here");
        } catch (err) {
          return reply(400, { code: "frame.malformed", message: (err as Error).message });
        }
        const outcome = await o.dispatch(frame);
        if ("deferred" in outcome)
          return reply(409, { code: "server.draining", message: outcome.deferred });
        // Sealed and bound to the dispatch id and the time: the hub records no answer it
        // cannot open, so one forged on the path never completes the dispatch.
        return reply(200, sealDirectAnswer(sealingKey, frame.id, outcome));
      }
      const action = ACTIONS[route];
      if (!action) return reply(404, { code: "resource.not_found", message: `no ${route} here` });
      return reply(200, await admin(action));
    };
    handle().catch((err: Error) => reply(500, { code: "internal", message: err.message }));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, o.host, () => resolve());
  });
  const address = server.address() as AddressInfo;
  const hostPart = address.address.includes(":") ? `[${address.address}]` : address.address;
  const url = `http://${hostPart}:${address.port}`;
  log.info({ url }, "agent admin API listening");
  return {
    url,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function metrics(s: AgentStatus): string {
  return [
    "# HELP flotilla_agent_connected 1 while the control channel is authenticated.",
    "# TYPE flotilla_agent_connected gauge",
    `flotilla_agent_connected ${s.connected ? 1 : 0}`,
    "# HELP flotilla_agent_draining 1 while the agent accepts no new dispatch.",
    "# TYPE flotilla_agent_draining gauge",
    `flotilla_agent_draining ${s.draining ? 1 : 0}`,
    "# HELP flotilla_agent_instances Workload instances running.",
    "# TYPE flotilla_agent_instances gauge",
    `flotilla_agent_instances ${s.instances.length}`,
    "# HELP flotilla_agent_dispatches_in_flight Dispatches being executed.",
    "# TYPE flotilla_agent_dispatches_in_flight gauge",
    `flotilla_agent_dispatches_in_flight ${s.dispatches_in_flight}`,
    "",
  ].join("\n");
}
