// The agent's local admin API on loopback: probes, Prometheus metrics, status, drain, resume, reload.
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import type { AdminAction, Logger } from "../shared/index.js";
import type { AgentStatus } from "./agent.js";

const ACTIONS: Record<string, AdminAction> = {
  "POST /drain": "drain",
  "POST /resume": "resume",
  "POST /reload": "reload",
  "GET /status": "status",
};

/** Plain node:http, not Fastify: the agent must stay small (its RSS target is 60 MB idle). */
export async function serveAdmin(
  port: number,
  status: () => AgentStatus,
  admin: (action: AdminAction) => Promise<unknown>,
  log: Logger,
): Promise<{ url: string; close(): Promise<void> }> {
  const server = createServer((req, res) => {
    const reply = (code: number, body: unknown, type = "application/json") => {
      res.writeHead(code, { "content-type": type });
      res.end(typeof body === "string" ? body : JSON.stringify(body));
    };
    const route = `${req.method} ${(req.url ?? "/").split("?")[0]}`;
    if (route === "GET /health") return reply(200, { status: "ok" });
    if (route === "GET /ready") {
      const s = status();
      // Not ready while draining or while the hub cannot reach it.
      if (s.draining) return reply(503, { status: "draining" });
      return s.connected ? reply(200, { status: "ready" }) : reply(503, { status: "disconnected" });
    }
    if (route === "GET /metrics") {
      const s = status();
      const lines = [
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
      ];
      return reply(200, lines.join("\n"), "text/plain; version=0.0.4");
    }
    const action = ACTIONS[route];
    if (!action) return reply(404, { code: "resource.not_found", message: `no ${route} here` });
    admin(action).then(
      (result) => reply(200, result),
      (err: Error) => reply(500, { code: "internal", message: err.message }),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    // Loopback only: the admin API is for the machine's operator and the hub's channel.
    server.listen(port, "127.0.0.1", () => resolve());
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  log.info({ url }, "agent admin API listening");
  return {
    url,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
