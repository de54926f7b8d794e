// Real gateway processes against a scripted stand-in for the hub (the real hub never sends a stale
// event or a tie on purpose, so a FAKE hub plays those): an event older than the stored row is
// ignored, and an equal-timestamp tie resolves to the same deployment on two gateways that heard
// the events in opposite orders.
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type WebSocket, WebSocketServer } from "ws";
import {
  type DeploymentContent,
  type ExpectedRow,
  expectedRowLine,
  GATEWAY_SYNC,
  writeTar,
} from "../../src/shared/index.js";
import { eventually, killGateways, startGatewayProcess } from "./gateway-procs.js";

const API = "0190a000-0000-7000-8000-0000000000a1";
const DEP_A = "0190a000-0000-7000-8000-00000000000a";
const DEP_B = "0190a000-0000-7000-8000-00000000000b";

/** A scripted hub: serves a configurable expected set and content, and pushes chosen events. */
class FakeHub {
  server: Server;
  wss = new WebSocketServer({ noServer: true });
  expected: ExpectedRow[] = [];
  sockets = new Map<string, WebSocket>();
  acks: string[] = [];
  listed = new Map<string, number>();
  url = "";

  constructor(private readonly upstream: string) {
    this.server = createServer((req, res) => {
      const token = (req.headers.authorization ?? "").replace(/^Bearer /, "");
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString("utf8")) : {};
        const json = (v: unknown) => {
          res.writeHead(200, { "content-type": "application/json" });
          res.end(JSON.stringify(v));
        };
        const hash = createHash("sha256")
          .update(this.expected.map(expectedRowLine).sort().join("\n"))
          .digest("hex");
        const path = (req.url ?? "").split("?")[0];
        if (path === GATEWAY_SYNC.deployments) {
          this.listed.set(token, (this.listed.get(token) ?? 0) + 1);
          return json({ gatewayId: token, deployments: this.expected, configHash: hash });
        }
        if (path === GATEWAY_SYNC.configHash)
          return json({ configHash: hash, count: this.expected.length });
        if (path === GATEWAY_SYNC.exists)
          return json({
            existing: (body.deploymentIds as string[]).filter((id) =>
              this.expected.some((e) => e.deploymentId === id),
            ),
          });
        if (path === GATEWAY_SYNC.status) return json({ recorded: 0 });
        if (path === GATEWAY_SYNC.content) {
          const entries = (body.deploymentIds as string[]).map((id) => {
            const c: DeploymentContent = {
              apiId: API,
              deploymentId: id,
              name: `api-${id.slice(-1)}`,
              kind: "RestApi",
              definition: { contextPath: `/dep-${id.slice(-1)}`, upstream: { url: this.upstream } },
            };
            return { path: `${id}/api.json`, body: Buffer.from(JSON.stringify(c)) };
          });
          res.writeHead(200, { "content-type": "application/x-tar" });
          return res.end(writeTar(entries));
        }
        res.writeHead(404);
        res.end();
      });
    });
    this.server.on("upgrade", (req, socket, head) => {
      const token = (req.headers.authorization ?? "").replace(/^Bearer /, "");
      this.wss.handleUpgrade(req, socket, head, (ws) => {
        this.sockets.set(token, ws);
        ws.on("message", (d) => {
          const f = JSON.parse(String(d));
          if (f.type === "ack") this.acks.push(f.id);
        });
      });
    });
  }

  async listen() {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", () => r()));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Sends one event to a gateway and waits for its acknowledgement (it has been applied). */
  async event(token: string, id: string, row: ExpectedRow) {
    const ws = this.sockets.get(token)!;
    ws.send(
      JSON.stringify({
        type: "event",
        id,
        event: row.state === "DEPLOYED" ? "api.deployed" : "api.undeployed",
        row,
        ctx: {
          correlation: "fake-hub",
          traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        },
      }),
    );
    await eventually(async () => this.acks.includes(id), `ack of ${id}`);
  }
}

describe("gateway guards against a scripted hub", () => {
  let fake: FakeHub;
  let upstream: Server;
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "flotilla-gw-guards-"));
    upstream = createServer((_req, res) => res.end("ok"));
    await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", () => r()));
    fake = new FakeHub(`http://127.0.0.1:${(upstream.address() as AddressInfo).port}`);
    await fake.listen();
  });

  afterAll(async () => {
    await killGateways();
    fake?.server.close();
    upstream?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const start = async (token: string) => {
    const g = await startGatewayProcess({
      hub: fake.url,
      token,
      dataDir: join(dir, token),
      // No periodic hash check: only the events under test may change the store.
      extra: ["--hash-check-seconds", "3600"],
    });
    await eventually(
      async () => fake.sockets.has(token) && (fake.listed.get(token) ?? 0) > 0,
      "connected and reconciled",
    );
    return g;
  };

  it("an event older than the stored row is acknowledged and ignored", async () => {
    fake.expected = [
      { apiId: API, deploymentId: DEP_B, kind: "RestApi", state: "DEPLOYED", deployedAt: 2000 },
    ];
    const g = await start("fgw_stale");
    await eventually(async () => (await g.status()).routes === 1, "synced");
    await fake.event("fgw_stale", "ev-stale", {
      apiId: API,
      deploymentId: DEP_A,
      kind: "RestApi",
      state: "DEPLOYED",
      deployedAt: 1000,
    });
    await fake.event("fgw_stale", "ev-stale-undeploy", {
      apiId: API,
      deploymentId: DEP_B,
      kind: "RestApi",
      state: "UNDEPLOYED",
      deployedAt: 1999,
    });
    const s = await g.status();
    expect(s.deployments).toEqual([
      expect.objectContaining({
        apiId: API,
        deploymentId: DEP_B,
        state: "DEPLOYED",
        deployedAt: 2000,
      }),
    ]);
    expect((await fetch(`${g.url}/dep-b/x`)).status).toBe(200);
    expect((await fetch(`${g.url}/dep-a/x`)).status).toBe(404);
    await g.kill("SIGTERM");
  });

  it("an equal-timestamp tie resolves by deploymentId the same way on two gateways, whatever the order", async () => {
    fake.expected = [];
    const one = await start("fgw_tie_one");
    const two = await start("fgw_tie_two");
    const a: ExpectedRow = {
      apiId: API,
      deploymentId: DEP_A,
      kind: "RestApi",
      state: "DEPLOYED",
      deployedAt: 5000,
    };
    const b: ExpectedRow = { ...a, deploymentId: DEP_B };
    await fake.event("fgw_tie_one", "t1-a", a);
    await fake.event("fgw_tie_one", "t1-b", b);
    await fake.event("fgw_tie_two", "t2-b", b);
    await fake.event("fgw_tie_two", "t2-a", a);
    for (const g of [one, two]) {
      const s = await g.status();
      expect(s.deployments).toEqual([
        expect.objectContaining({ deploymentId: DEP_B, deployedAt: 5000 }),
      ]);
      expect((await fetch(`${g.url}/dep-b/x`)).status).toBe(200);
    }
    await one.kill("SIGTERM");
    await two.kill("SIGTERM");
  });
});
