// The gateway event fan-out on NATS as real processes: two hub replicas on one PostgreSQL and a
// NATS server of this test's own; a gateway holds its event stream on replica B while APIs are
// deployed through replica A, with a periodic reconcile far too slow to explain what it serves;
// then B is SIGKILLed and the gateway moves to A (its --hub lists both) and converges.
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import type { Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/pg.js";
import {
  ADMIN,
  eventually,
  type GatewayProcess,
  killGateways,
  rpc,
  startGatewayProcess,
  startUpstream,
} from "./gateway-procs.js";
import {
  type FlotillaProcess,
  freePorts,
  killAll,
  SECRET_A,
  sleep,
  startFlotilla,
} from "./procs.js";

/** An hour: within this test only an event can explain what the gateway learns. */
const HASH_CHECK_SECONDS = "3600";

async function untilNatsAnswers(url: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      const nc = await connect({ servers: url, timeout: 1000 });
      await nc.close();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(100);
    }
  }
}

/** The gateway's sync facts from its /metrics (flotilla_gateway_sync{fact=...}). */
async function syncFacts(gw: GatewayProcess): Promise<Record<string, number>> {
  const text = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  const facts: Record<string, number> = {};
  for (const m of text.matchAll(/^flotilla_gateway_sync\{fact="([a-z_]+)"\} (\S+)$/gm))
    facts[m[1]!] = Number(m[2]);
  return facts;
}

describe("gateway fan-out over NATS across two hub replicas", () => {
  let database: TestDatabase;
  let natsDir: string;
  let nats: ChildProcess;
  let natsUrl: string;
  const stream = `G${randomBytes(5).toString("hex")}`;
  let a: FlotillaProcess;
  let b: FlotillaProcess;
  let token: string;
  let dataDir: string;
  let upstream: Server;
  let upstreamUrl: string;

  const hubEnv = () => ({
    FLOTILLA_DATABASE_URL: database.url,
    FLOTILLA_SESSION_SECRET: SECRET_A,
    FLOTILLA_ADMIN_EMAIL: ADMIN.email,
    FLOTILLA_ADMIN_PASSWORD: ADMIN.password,
    FLOTILLA_NATS_URL: natsUrl,
    FLOTILLA_NATS_STREAM: stream,
    FLOTILLA_NATS_SUBJECT_ROOT: stream.toLowerCase(),
    FLOTILLA_DB_POOL_MAX: "4",
    FLOTILLA_LOG_LEVEL: "info",
  });

  async function createRest(hub: FlotillaProcess, name: string) {
    const r = await rpc(
      hub.url,
      "ApiService/CreateApi",
      {
        name,
        kind: "API_KIND_REST_API",
        definitionJson: JSON.stringify({ contextPath: `/${name}`, upstream: { url: upstreamUrl } }),
      },
      token,
    );
    return (r.api as { id: string }).id;
  }

  const status = async (gw: GatewayProcess, path: string) =>
    (await fetch(`${gw.url}${path}`)).status;

  beforeAll(async () => {
    database = await createTestDatabase("mp_gateway_fanout");
    natsDir = mkdtempSync(join(tmpdir(), "flotilla-nats-fanout-"));
    dataDir = mkdtempSync(join(tmpdir(), "flotilla-gw-fanout-"));
    const natsPort = (await freePorts(1))[0]!;
    natsUrl = `nats://127.0.0.1:${natsPort}`;
    nats = spawn(
      "/usr/sbin/nats-server",
      ["-a", "127.0.0.1", "-p", String(natsPort), "-js", "-sd", natsDir],
      { stdio: "ignore" },
    );
    await untilNatsAnswers(natsUrl);
    a = await startFlotilla("hub", { env: hubEnv() });
    await a.waitReady(60_000);
    b = await startFlotilla("hub", { env: hubEnv() });
    await b.waitReady(60_000);
    token = String((await rpc(a.url, "IdentityService/Login", ADMIN)).sessionToken);
    const u = await startUpstream("fanout");
    upstream = u.server;
    upstreamUrl = u.url;
  }, 180_000);

  afterAll(async () => {
    await killGateways();
    await killAll();
    upstream?.close();
    if (nats && nats.exitCode === null && nats.signalCode === null) {
      const exited = new Promise((r) => nats.once("exit", r));
      nats.kill("SIGKILL");
      await exited;
    }
    await database?.drop();
    if (natsDir) rmSync(natsDir, { recursive: true, force: true });
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it("a deploy through replica A reaches a gateway held by replica B through B's own durable; B SIGKILLed, the gateway moves to A and converges", async () => {
    const created = await rpc(
      a.url,
      "GatewayService/CreateGateway",
      { name: "edge-fanout" },
      token,
    );
    const gatewayId = (created.gateway as { id: string }).id;
    const orders = await createRest(a, "orders");
    const carts = await createRest(a, "carts");

    // B first in the list: the gateway's event stream is on B.
    const gw = await startGatewayProcess({
      hub: `${b.url},${a.url}`,
      token: String(created.token),
      dataDir,
      extra: ["--hash-check-seconds", HASH_CHECK_SECONDS],
    });
    await b.waitForLog((r) => r.msg === "gateway connected" && r.gatewayId === gatewayId, 20_000);
    // The connect-time pass has run (an empty set, converged); from here on the reconcile count
    // must not move.
    await eventually(async () => {
      const f = await syncFacts(gw);
      return (f.reconciles ?? 0) >= 1 && f.converged === 1;
    }, "connect-time reconcile");
    const before = await syncFacts(gw);

    await rpc(a.url, "ApiService/DeployApi", { api: orders, gateway: gatewayId }, token);
    await eventually(async () => (await status(gw, "/orders/x")) === 200, "orders served");
    const after = await syncFacts(gw);
    expect(after.reconciles).toBe(before.reconciles);
    expect(after.events_applied).toBe(before.events_applied! + 1);
    // B handed it over from its per-replica durable (not A, which holds no socket of it).
    const handled = b
      .logs()
      .find(
        (r) =>
          r.msg === "event handled" &&
          r.event_type === "api.deployed" &&
          String(r.consumer).startsWith("gateway-fanout-"),
      );
    expect(handled, b.describe()).toBeDefined();
    expect(a.logs().some((r) => r.msg === "gateway connected" && r.gatewayId === gatewayId)).toBe(
      false,
    );

    // The fleet view, asked of each replica: B pings the stream it holds, A knows the gateway
    // only from its last request.
    const member = async (hub: FlotillaProcess) => {
      const r = await rpc(
        hub.url,
        "FleetService/GetFleetStatus",
        { kinds: ["gateway"], refresh: true },
        token,
      );
      return (r.members as Array<Record<string, unknown>>).find((m) => m.id === gatewayId);
    };
    expect(await member(b)).toMatchObject({ kind: "gateway", health: "ok", probe: "channel" });
    expect(await member(a)).toMatchObject({ health: "online", probe: "heartbeat" });

    // B dies; a change made meanwhile through A is recovered by the reconcile on reconnect.
    b.child.kill("SIGKILL");
    await b.exited;
    await rpc(a.url, "ApiService/UndeployApi", { api: orders, gateway: gatewayId }, token);
    await a.waitForLog((r) => r.msg === "gateway connected" && r.gatewayId === gatewayId, 30_000);
    await eventually(async () => (await status(gw, "/orders/x")) === 404, "orders undeployed");
    await eventually(async () => (await gw.ready()).converged === true, "converged on A");

    // (A refresh within a second of A's last probe round is answered from that round.)
    const onA = await eventually(async () => {
      const m = await member(a);
      return m?.probe === "channel" ? m : null;
    }, "A probes the gateway over the stream it now holds");
    expect(onA).toMatchObject({ health: "ok" });

    // Held by A now: A's own durable delivers, again without a reconcile.
    const settled = await syncFacts(gw);
    await rpc(a.url, "ApiService/DeployApi", { api: carts, gateway: gatewayId }, token);
    await eventually(async () => (await status(gw, "/carts/1")) === 200, "carts served via A");
    const last = await syncFacts(gw);
    expect(last.reconciles).toBe(settled.reconciles);
    expect(last.events_applied).toBe(settled.events_applied! + 1);
    await gw.kill("SIGTERM");
  }, 120_000);
});
