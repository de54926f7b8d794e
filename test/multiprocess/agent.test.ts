// Agents as real processes against real hub replicas on PostgreSQL: joining with a one-time token,
// the control channel's challenge-response, the reconnect race, dispatches executed exactly once
// (also when the hub sends one again), and malformed frames thrown at both ends.
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket, { WebSocketServer } from "ws";
import { AGENT_CONNECT_PATH, authProof } from "../../src/shared/index.js";
import { createTestDatabase, type TestDatabase, testPool } from "../support/pg.js";
import { type FlotillaProcess, killAll, SECRET_A, sleep, startFlotilla } from "./procs.js";

const ADMIN = { email: "ops@example.com", password: "ops-password-123" };

async function rpc(hub: FlotillaProcess, path: string, body: unknown, token?: string) {
  const res = await fetch(`${hub.url}/flotilla.v1.${path}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: JSON.stringify(body),
  });
  const json = (await res.json()) as Record<string, never>;
  if (res.status !== 200) throw new Error(`${path}: ${res.status} ${JSON.stringify(json)}`);
  return json as Record<string, unknown>;
}

describe("agents on real hub replicas", () => {
  let database: TestDatabase;
  let db: pg.Pool;
  let hubA: FlotillaProcess;
  let hubB: FlotillaProcess;
  let token: string;
  let dir: string;
  let organizationId: string;

  const hubEnv = () => ({
    FLOTILLA_DATABASE_URL: database.url,
    FLOTILLA_SESSION_SECRET: SECRET_A,
    FLOTILLA_ADMIN_EMAIL: ADMIN.email,
    FLOTILLA_ADMIN_PASSWORD: ADMIN.password,
    // Sweeps twice a second, so a test sees a dispatch past its deadline handed out again.
    FLOTILLA_SWEEP_INTERVAL_MS: "500",
  });

  async function enrol(name: string, hub: FlotillaProcess = hubA) {
    const join = await rpc(hub, "ServerService/CreateJoinToken", { name }, token);
    const dataDir = join_(dir, name);
    const agent = await startFlotilla("agent", {
      args: ["--hub", hub.url, "--join-token", String(join.token), "--data-dir", dataDir],
    });
    const connected = await agent.waitForLog((r) => r.msg === "connected to the hub");
    const creds = JSON.parse(readFileSync(join_(dataDir, "agent.json"), "utf8"));
    return { agent, dataDir, serverId: creds.server_id as string, session: connected.session };
  }
  const join_ = join;

  /** An empty file the workload user (not root) may append to: a job's visible effect. */
  function workloadFile(name: string): string {
    const path = join(dir, name);
    writeFileSync(path, "");
    chmodSync(path, 0o666);
    return path;
  }

  /** An agent whose saved credentials point at a fake hub on this port (no join needed). */
  async function agentOfFakeHub(name: string, port: number) {
    const dataDir = join(dir, `${name}-hub-agent`);
    mkdirSync(dataDir, { recursive: true });
    writeFileSync(
      join(dataDir, "agent.json"),
      JSON.stringify({
        hub: `http://127.0.0.1:${port}`,
        server_id: "00000000-0000-4000-8000-000000000000",
        organization_id: "00000000-0000-4000-8000-000000000000",
        name,
        secret: "s",
      }),
    );
    return startFlotilla("agent", { args: ["--data-dir", dataDir] });
  }

  async function serverRow(id: string) {
    const { rows } = await db.query(
      "SELECT status, connected_hub_id, session_id FROM servers WHERE id = $1",
      [id],
    );
    return rows[0] as {
      status: string;
      connected_hub_id: string | null;
      session_id: string | null;
    };
  }

  /** Writes a job intent the way the hub does: the row and its wake-up in one transaction. */
  async function dispatchJob(
    serverId: string,
    command: string,
    args: string[],
    extra: Record<string, unknown> = {},
  ) {
    const client = await db.connect();
    try {
      await client.query("BEGIN");
      const { rows } = await client.query(
        `INSERT INTO dispatches (id, organization_id, server_id, op, args, correlation_id, traceparent)
         VALUES (gen_random_uuid(), $1, $2, 'job', $3, 'test-correlation', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01')
         RETURNING id`,
        [organizationId, serverId, JSON.stringify({ command, args, ...extra })],
      );
      await client.query("SELECT pg_notify('flotilla_dispatch', $1)", [serverId]);
      await client.query("COMMIT");
      return rows[0].id as string;
    } finally {
      client.release();
    }
  }

  async function waitForState(id: string, states: string[], timeoutMs = 15_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { rows } = await db.query(
        "SELECT state, result, error, attempts FROM dispatches WHERE id = $1",
        [id],
      );
      if (states.includes(rows[0]?.state)) return rows[0];
      if (Date.now() > deadline)
        throw new Error(`dispatch ${id} is ${rows[0]?.state}, not ${states}`);
      await sleep(50);
    }
  }

  beforeAll(async () => {
    database = await createTestDatabase("mp_agent");
    db = testPool(database.url, 3);
    // An idle client the server drops must not become an uncaught error of the test process.
    db.on("error", () => {});
    dir = mkdtempSync(join(tmpdir(), "flotilla-agents-"));
    // Jobs run as the unprivileged workload user: give it a place to write.
    chmodSync(dir, 0o777);
    hubA = await startFlotilla("hub", { env: hubEnv() });
    await hubA.waitReady(30_000);
    hubB = await startFlotilla("hub", { env: hubEnv() });
    await hubB.waitReady(30_000);
    const login = await rpc(hubA, "IdentityService/Login", ADMIN);
    token = String(login.sessionToken);
    organizationId = String((login.organization as { id: string }).id);
  }, 120_000);

  afterAll(async () => {
    await killAll();
    await db?.end();
    await database?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("an agent joins with a one-time token, proves its secret, and shows online", async () => {
    const { agent, serverId } = await enrol("box-join");
    const listed = await rpc(hubA, "ServerService/ListServers", {}, token);
    const server = (listed.servers as Array<Record<string, unknown>>).find(
      (s) => s.id === serverId,
    );
    expect(server).toMatchObject({ name: "box-join", status: "online", agentVersion: "0.1.0" });
    // The secret never crossed the control channel: it is in neither process's output.
    const secret = JSON.parse(readFileSync(join(dir, "box-join", "agent.json"), "utf8")).secret;
    expect(hubA.stdout() + agent.stdout()).not.toContain(secret);
    await agent.stop();
  });

  it("a join token works once, and a wrong proof is refused", async () => {
    const join = await rpc(hubA, "ServerService/CreateJoinToken", { name: "box-once" }, token);
    const first = await fetch(`${hubA.url}/agent/v1/join`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: join.token }),
    });
    expect(first.status).toBe(200);
    const { server_id } = (await first.json()) as { server_id: string };
    const again = await fetch(`${hubA.url}/agent/v1/join`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: join.token }),
    });
    expect(again.status).toBe(401);

    const ws = new WebSocket(`${hubA.url.replace("http", "ws")}${AGENT_CONNECT_PATH}`);
    const closed = new Promise<number>((resolve) => ws.once("close", (code) => resolve(code)));
    ws.on("message", (data) => {
      const frame = JSON.parse(String(data));
      if (frame.type === "challenge")
        ws.send(
          JSON.stringify({
            v: 1,
            type: "auth",
            proof: authProof("not-the-secret", server_id, frame.nonce),
          }),
        );
    });
    ws.once("open", () =>
      ws.send(
        JSON.stringify({
          v: 1,
          type: "hello",
          server_id,
          agent_version: "x",
          drivers: [],
          cores: 1,
          memory_bytes: 1,
          disk_free_bytes: 1,
        }),
      ),
    );
    expect(await closed).toBe(4001);
    expect((await serverRow(server_id)).status).toBe("offline");
  });

  it("the reconnect race: an old connection's late disconnect leaves the server online on its new replica", async () => {
    const { agent: first, serverId, dataDir } = await enrol("box-flap");
    expect((await serverRow(serverId)).connected_hub_id).not.toBeNull();
    const before = await serverRow(serverId);
    // The same agent (same credentials) connects to replica B while its connection to A is alive.
    const second = await startFlotilla("agent", {
      args: ["--hub", hubB.url, "--data-dir", dataDir],
    });
    await second.waitForLog((r) => r.msg === "connected to the hub");
    const moved = await serverRow(serverId);
    expect(moved.session_id).not.toBe(before.session_id);
    // The old connection now drops (SIGKILL: no goodbye), and A sees its late disconnect.
    first.child.kill("SIGKILL");
    await first.exited;
    await hubA.waitForLog(
      (r) =>
        r.msg === "agent disconnected" && r.server === serverId && r.session === before.session_id,
    );
    const after = await serverRow(serverId);
    expect(after).toEqual({
      status: "online",
      connected_hub_id: moved.connected_hub_id,
      session_id: moved.session_id,
    });
    await second.stop();
    // B releases the server when it sees the close, which may be after the agent has exited.
    await hubB.waitForLog(
      (r) =>
        r.msg === "agent disconnected" && r.server === serverId && r.session === moved.session_id,
    );
    const offline = await serverRow(serverId);
    expect(offline.status).toBe("offline");
  }, 60_000);

  it("a dispatch written while the agent is away is delivered when it connects, and runs once", async () => {
    const { agent, serverId, dataDir } = await enrol("box-jobs");
    await agent.stop();
    const out = workloadFile("jobs.log");
    const ids = [];
    for (let i = 0; i < 3; i++)
      ids.push(await dispatchJob(serverId, "sh", ["-c", `echo run-${i} >> ${out}`]));
    const again = await startFlotilla("agent", { args: ["--data-dir", dataDir] });
    for (const id of ids) expect((await waitForState(id, ["done", "failed"])).state).toBe("done");
    expect(readFileSync(out, "utf8").trim().split("\n")).toEqual(["run-0", "run-1", "run-2"]);
    // The job ran as the unprivileged workload user, not as root.
    const whoami = await dispatchJob(serverId, "id", ["-u"]);
    const done = await waitForState(whoami, ["done"]);
    expect(done.result.stdout.trim()).not.toBe("0");
    await again.stop();
  }, 60_000);

  it("a dispatch the hub sends again is acknowledged as a duplicate and not run twice", async () => {
    const { agent, serverId } = await enrol("box-resend");
    const out = workloadFile("resend.log");
    const id = await dispatchJob(serverId, "sh", ["-c", `echo once >> ${out}`]);
    await waitForState(id, ["done"]);
    // As if the result had been lost and the reaper handed the dispatch out again.
    await db.query("UPDATE dispatches SET state = 'pending' WHERE id = $1", [id]);
    await db.query("SELECT pg_notify('flotilla_dispatch', $1)", [serverId]);
    const redone = await waitForState(id, ["done"]);
    expect(redone.attempts).toBe(2);
    await agent.waitForLog((r) => r.msg === "executing dispatch" && r.dispatch === id);
    expect(
      agent.logs().filter((r) => r.msg === "executing dispatch" && r.dispatch === id),
    ).toHaveLength(1);
    expect(readFileSync(out, "utf8")).toBe("once\n");
    await agent.stop();
  }, 60_000);

  it("a job's claim deadline covers its own timeout, so a long job is not handed out again while it runs", async () => {
    const { agent, serverId } = await enrol("box-long");
    const long = await dispatchJob(serverId, "true", [], { timeout_ms: 1_800_000 });
    const short = await dispatchJob(serverId, "true", []);
    await waitForState(long, ["done"]);
    await waitForState(short, ["done"]);
    const { rows } = await db.query<{ id: string; seconds: number }>(
      "SELECT id, extract(epoch FROM deadline_at - created_at)::int AS seconds FROM dispatches WHERE id = ANY($1)",
      [[long, short]],
    );
    const seconds = Object.fromEntries(rows.map((r) => [r.id, r.seconds]));
    // 30 minutes of timeout plus a minute; anything else gets 5 minutes.
    expect(seconds[long]).toBeGreaterThanOrEqual(1860 - 5);
    expect(seconds[short]).toBeLessThanOrEqual(300 + 5);
    await agent.stop();
  }, 30_000);

  it("a failing command ends the dispatch failed with the reason", async () => {
    const { agent, serverId } = await enrol("box-fail");
    const missing = await dispatchJob(serverId, "/no/such/command", []);
    const row = await waitForState(missing, ["done", "failed"]);
    expect(row.state).toBe("failed");
    expect(row.error).toContain("/no/such/command");
    const nonzero = await dispatchJob(serverId, "sh", ["-c", "exit 3"]);
    const row2 = await waitForState(nonzero, ["failed"]);
    expect(row2.error).toContain("exited with 3");
    await agent.stop();
  }, 30_000);

  it("drain: /ready turns 503, new dispatches wait pending, and resume delivers them; status through the hub", async () => {
    const { agent, serverId } = await enrol("box-drain");
    const admin = String(
      (await agent.waitForLog((r) => r.msg === "agent admin API listening")).url,
    );
    expect((await fetch(`${admin}/ready`)).status).toBe(200);
    const status = await rpc(hubA, "ServerService/GetAgentStatus", { server: serverId }, token);
    expect(JSON.parse(String(status.statusJson))).toMatchObject({
      server_id: serverId,
      connected: true,
      draining: false,
    });

    // Drain through the hub; the agent's own port shows it too.
    const drained = await rpc(
      hubA,
      "ServerService/ControlAgent",
      { server: serverId, action: "AGENT_ACTION_DRAIN" },
      token,
    );
    expect(JSON.parse(String(drained.resultJson))).toMatchObject({ drained: true });
    expect((await fetch(`${admin}/ready`)).status).toBe(503);
    const held = await dispatchJob(serverId, "true", []);
    await sleep(1000);
    expect((await waitForState(held, ["pending"])).state).toBe("pending");

    // Resume on the agent's own admin port: the held dispatch is delivered and runs.
    const resumed = await fetch(`${admin}/resume`, { method: "POST" });
    expect(resumed.status).toBe(200);
    expect((await waitForState(held, ["done"])).state).toBe("done");
    expect((await fetch(`${admin}/ready`)).status).toBe(200);
    // Reload re-reads the credentials; unchanged, the channel stays as it is.
    const reloaded = await (await fetch(`${admin}/reload`, { method: "POST" })).json();
    expect(reloaded).toMatchObject({ reloaded: true, reconnecting: false });
    const metrics = await (await fetch(`${admin}/metrics`)).text();
    expect(metrics).toContain("flotilla_agent_connected 1");
    const audit = await rpc(hubA, "OrganizationService/ListAuditEvents", { limit: 20 }, token);
    expect((audit.events as Array<{ action: string }>).map((e) => e.action)).toContain(
      "server.drain",
    );
    await agent.stop();
  }, 60_000);

  it("an agent's status report about a service placed on another server changes nothing", async () => {
    const { agent, serverId } = await enrol("box-owner");
    const project = await rpc(
      hubA,
      "ProjectService/CreateProject",
      { name: `Placed ${Date.now()}` },
      token,
    );
    const created = await rpc(
      hubA,
      "ServicesService/CreateService",
      {
        environmentId: (project.production as { id: string }).id,
        name: "placed",
        visibility: "VISIBILITY_PRIVATE",
        serverId,
        spec: { driver: "DRIVER_EXEC", exec: { command: "/no/such/thing" } },
      },
      token,
    );
    const service = created.service as { id: string };
    const deployed = await rpc(hubA, "ServicesService/Deploy", { serviceId: service.id }, token);
    const deploymentId = (deployed.deployment as { id: string }).id;
    await sleep(1000);
    const before = (
      (await rpc(hubA, "ServicesService/GetService", { serviceId: service.id }, token)).service as {
        observed: unknown;
      }
    ).observed;

    // Another server of the same organization, speaking for itself over a raw channel.
    const join = await rpc(hubA, "ServerService/CreateJoinToken", { name: "box-intruder" }, token);
    const joined = (await (
      await fetch(`${hubA.url}/agent/v1/join`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ token: join.token }),
      })
    ).json()) as { server_id: string; secret: string };
    const ws = new WebSocket(`${hubA.url.replace("http", "ws")}${AGENT_CONNECT_PATH}`);
    const welcomed = new Promise<void>((resolve) =>
      ws.on("message", (data) => {
        const frame = JSON.parse(String(data));
        if (frame.type === "challenge")
          ws.send(
            JSON.stringify({
              v: 1,
              type: "auth",
              proof: authProof(joined.secret, joined.server_id, frame.nonce),
            }),
          );
        if (frame.type === "welcome") resolve();
      }),
    );
    ws.once("open", () =>
      ws.send(
        JSON.stringify({
          v: 1,
          type: "hello",
          server_id: joined.server_id,
          agent_version: "x",
          drivers: ["exec"],
          cores: 1,
          memory_bytes: 1,
          disk_free_bytes: 1,
        }),
      ),
    );
    await welcomed;
    ws.send(
      JSON.stringify({
        v: 1,
        type: "status",
        service_id: service.id,
        deployment_id: deploymentId,
        status: "running",
        endpoint: "203.0.113.7:5432",
      }),
    );
    await sleep(1000);
    ws.close();
    const after = (
      (await rpc(hubA, "ServicesService/GetService", { serviceId: service.id }, token)).service as {
        observed: unknown;
      }
    ).observed;
    expect(after).toEqual(before);
    await agent.stop();
  }, 60_000);

  it("the sweep hands out again a dispatch whose result was lost (claimed by a dead hub), and fails one out of attempts", async () => {
    const { agent, serverId } = await enrol("box-sweep");
    const out = workloadFile("sweep.log");
    const again = await dispatchJob(serverId, "sh", ["-c", `echo swept >> ${out}`]);
    const tired = await dispatchJob(serverId, "true", []);
    await waitForState(again, ["done"]);
    await waitForState(tired, ["done"]);
    // Rewind two finished rows to "in progress, past the deadline, claimed by a dead hub".
    await db.query(
      `UPDATE dispatches SET state = 'in_progress', claimed_by = 'dead-hub', attempts = 1,
              deadline_at = now() - interval '1 second', result = NULL WHERE id = $1`,
      [again],
    );
    await db.query(
      `UPDATE dispatches SET state = 'in_progress', claimed_by = 'dead-hub', attempts = 5,
              deadline_at = now() - interval '1 second' WHERE id = $1`,
      [tired],
    );
    const redone = await waitForState(again, ["done"], 10_000);
    expect(redone.attempts).toBe(2);
    // Answered from the agent's ledger: the command did not run a second time.
    expect(readFileSync(out, "utf8")).toBe("swept\n");
    const failed = await waitForState(tired, ["failed"], 10_000);
    expect(failed.error).toContain("gave up after 5 attempts");
    await agent.stop();
  }, 60_000);

  it("a LISTEN connection cut with pg_terminate_backend comes back, and dispatches keep flowing", async () => {
    const { agent, serverId } = await enrol("box-listen");
    const before = await dispatchJob(serverId, "true", []);
    await waitForState(before, ["done"]);
    const cut = await db.query(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
       WHERE datname = current_database() AND application_name = 'flotilla' AND query ILIKE 'LISTEN%'`,
    );
    expect(cut.rowCount).toBeGreaterThan(0);
    await sleep(1500);
    const after = await dispatchJob(serverId, "true", []);
    // Delivered through the reopened listener, well before any sweep or reconnect would.
    expect((await waitForState(after, ["done"], 5_000)).state).toBe("done");
    const metrics = await (await fetch(`${hubA.url}/metrics`)).text();
    expect(metrics).toMatch(/flotilla_db_listener_reconnects_total [1-9]/);
    // Dispatch counters and timings of the replica that delivered them.
    expect(metrics).toMatch(/flotilla_dispatches_total\{op="job",event="claimed"\} [1-9]/);
    expect(metrics).toMatch(/flotilla_dispatches_total\{op="job",event="done"\} [1-9]/);
    expect(metrics).toMatch(
      /flotilla_dispatch_intent_to_done_seconds_count\{op="job",outcome="done"\} [1-9]/,
    );
    expect(metrics).toMatch(/flotilla_dispatch_drain_seconds_count [1-9]/);
    await agent.stop();
  }, 60_000);

  it("malformed and oversized frames at the hub are rejected and logged; the hub keeps serving", async () => {
    const ws = new WebSocket(`${hubA.url.replace("http", "ws")}${AGENT_CONNECT_PATH}`);
    await new Promise((resolve) => ws.once("open", resolve));
    const answers: Array<Record<string, unknown>> = [];
    ws.on("message", (data) => answers.push(JSON.parse(String(data))));
    const bad = [
      "not json",
      "[]",
      "null",
      JSON.stringify({ v: 2, type: "hello" }),
      JSON.stringify({ v: 1, type: "bogus" }),
      JSON.stringify({ v: 1, type: "hello", server_id: 5 }),
      JSON.stringify({ v: 1, type: "__proto__" }),
      JSON.stringify({ v: 1, type: "auth", proof: "zz" }),
      Buffer.from([0xff, 0x00, 0x01]),
    ];
    for (const frame of bad) ws.send(frame);
    const deadline = Date.now() + 5_000;
    while (answers.length < bad.length && Date.now() < deadline) await sleep(20);
    expect(answers).toHaveLength(bad.length);
    expect(answers.every((a) => a.type === "error" && String(a.code).startsWith("frame."))).toBe(
      true,
    );
    // Beyond the 1 MiB frame limit the socket is closed with "message too big".
    const closed = new Promise<number>((resolve) => ws.once("close", (code) => resolve(code)));
    ws.send("x".repeat(1024 * 1024 + 1));
    expect(await closed).toBe(1009);
    expect(hubA.exitStatus()).toBeNull();
    expect((await fetch(`${hubA.url}/ready`)).status).toBe(200);
    await hubA.waitForLog((r) => r.msg === "malformed agent frame rejected");
  });

  it("a hub that stops answering pings (a vanished host) is dropped after two silent heartbeats, and the agent reconnects", async () => {
    // A fake hub that welcomes the agent and then never answers a ping, as a dead host would.
    const fake = new WebSocketServer({ host: "127.0.0.1", port: 0, autoPong: false });
    await new Promise((resolve) => fake.once("listening", resolve));
    const port = (fake.address() as { port: number }).port;
    let connections = 0;
    fake.on("connection", (ws) => {
      connections++;
      ws.on("message", (data) => {
        const frame = JSON.parse(String(data));
        if (frame.type === "hello")
          ws.send(JSON.stringify({ v: 1, type: "challenge", nonce: "a".repeat(64) }));
        if (frame.type === "auth")
          ws.send(
            JSON.stringify({ v: 1, type: "welcome", session_id: "s", heartbeat_interval_ms: 500 }),
          );
      });
    });
    const agent = await agentOfFakeHub("silent", port);
    try {
      await agent.waitForLog((r) => r.msg === "the hub answers no ping; reconnecting", 20_000);
      const until = Date.now() + 10_000;
      while (connections < 2 && Date.now() < until) await sleep(50);
      expect(connections).toBeGreaterThanOrEqual(2);
    } finally {
      await agent.stop();
      fake.close();
    }
  }, 60_000);

  it("malformed frames from a hub are rejected and logged by the agent, which stays up", async () => {
    // A fake hub: the one thing here that is not the real one, because the real hub never
    // sends malformed frames.
    const fake = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    await new Promise((resolve) => fake.once("listening", resolve));
    const port = (fake.address() as { port: number }).port;
    const received: Array<Record<string, unknown>> = [];
    let connections = 0;
    fake.on("connection", (ws) => {
      connections++;
      ws.on("message", (data) => received.push(JSON.parse(String(data))));
      for (const frame of [
        "{",
        "42",
        JSON.stringify({ v: 1, type: "dispatch", id: "x" }),
        JSON.stringify({ v: 9 }),
      ])
        ws.send(frame);
    });
    const agent = await agentOfFakeHub("fake", port);
    try {
      const deadline = Date.now() + 5_000;
      while (received.filter((f) => f.type === "error").length < 4 && Date.now() < deadline)
        await sleep(20);
      expect(received[0]).toMatchObject({ type: "hello" });
      expect(received.filter((f) => f.type === "error")).toHaveLength(4);
      expect(agent.exitStatus()).toBeNull();
      // The agent's log lines travel a pipe of their own: give them the moment the frames had.
      const rejected = () => agent.logs().filter((r) => r.msg === "malformed hub frame rejected");
      const logDeadline = Date.now() + 5_000;
      while (rejected().length < 4 && Date.now() < logDeadline) await sleep(20);
      expect(rejected()).toHaveLength(4);
      // An oversized frame closes the channel (1009, message too big); the agent reconnects.
      for (const client of fake.clients) client.send("x".repeat(1024 * 1024 + 1));
      const until = Date.now() + 10_000;
      while (connections < 2 && Date.now() < until) await sleep(50);
      expect(connections).toBe(2);
      expect(agent.exitStatus()).toBeNull();
    } finally {
      await agent.stop();
      fake.close();
    }
  });
});
