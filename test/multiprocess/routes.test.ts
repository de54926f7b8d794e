// route() across real hub replicas and agents: local, forward, direct (the agent's signed admin
// endpoint, exactly once by its ledger) and undeliverable (pending until the agent reconnects);
// the server-side synchronous wait on a replica that does not hold the agent, its timeout naming
// the dispatch; and the intent's correlation id and trace in the executing replica's logs.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  AGENT_DIRECT_DISPATCH_PATH,
  directKey,
  directSealKey,
  openDirectAnswer,
  sealDirectRequest,
  signDirect,
} from "../../src/shared/index.js";
import { createTestDatabase, type TestDatabase, testPool } from "../support/pg.js";
import {
  CLI,
  type FlotillaProcess,
  freePorts,
  killAll,
  ROOT,
  SECRET_A,
  sleep,
  startFlotilla,
  TEST_MASTER_KEY,
} from "./procs.js";

const ADMIN = { email: "routes@example.com", password: "routes-password-1" };
const TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT = `00-${TRACE_ID}-00f067aa0ba902b7-01`;

describe("route() and the synchronous wait across replicas", () => {
  let database: TestDatabase;
  let db: pg.Pool;
  let dir: string;
  let token: string;
  let environmentId: string;
  let hubA: FlotillaProcess;
  let hubB: FlotillaProcess;
  let hubZ: FlotillaProcess;
  let zPorts: [number, number];
  const agents: Record<string, FlotillaProcess> = {};
  const services: Record<string, string> = {};
  const serverIds: Record<string, string> = {};

  const hubEnv = () => ({
    FLOTILLA_DATABASE_URL: database.url,
    FLOTILLA_SESSION_SECRET: SECRET_A,
    FLOTILLA_MASTER_KEY: TEST_MASTER_KEY,
    FLOTILLA_ADMIN_EMAIL: ADMIN.email,
    FLOTILLA_ADMIN_PASSWORD: ADMIN.password,
    FLOTILLA_SWEEP_INTERVAL_MS: "500",
    FLOTILLA_LOG_LEVEL: "info",
  });

  async function call(
    hub: FlotillaProcess,
    path: string,
    body: unknown,
    headers: Record<string, string> = {},
  ) {
    const res = await fetch(`${hub.url}/flotilla.v1.${path}`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        authorization: `Bearer ${token}`,
        ...headers,
      },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(60_000),
    });
    return {
      status: res.status,
      code: res.headers.get("flotilla-error-code"),
      // biome-ignore lint/suspicious/noExplicitAny: a test reads Connect JSON answers field by field
      json: (await res.json()) as Record<string, any>,
    };
  }
  async function rpc(hub: FlotillaProcess, path: string, body: unknown, headers = {}) {
    const r = await call(hub, path, body, headers);
    if (r.status !== 200)
      throw new Error(`${path} on ${hub.url}: ${r.status} ${JSON.stringify(r.json)}`);
    return r.json;
  }
  async function routes(hub: FlotillaProcess): Promise<Record<string, number>> {
    const text = await (await fetch(`${hub.url}/metrics`)).text();
    const out: Record<string, number> = {};
    for (const m of text.matchAll(/^flotilla_dispatch_routes_total\{route="(\w+)"\} (\d+)/gm))
      out[m[1]!] = Number(m[2]);
    return out;
  }
  const latestDispatch = async (serviceId: string) =>
    (
      await db.query<{ id: string; state: string; error: string | null }>(
        "SELECT id, state, error FROM dispatches WHERE service_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
        [serviceId],
      )
    ).rows[0]!;
  async function until<T>(what: string, probe: () => Promise<T | undefined>, ms = 30_000) {
    const deadline = Date.now() + ms;
    for (;;) {
      const v = await probe();
      if (v !== undefined) return v;
      if (Date.now() > deadline)
        throw new Error(`timed out waiting for ${what} (A: ${JSON.stringify(await routes(hubA))})`);
      await sleep(100);
    }
  }
  const ledgerStarts = (name: string, id: string) =>
    readFileSync(join(dir, name, "dispatches.jsonl"), "utf8")
      .split("\n")
      .filter((l) => l && JSON.parse(l).id === id && JSON.parse(l).started).length;

  async function startAgent(name: string, hubUrl: string, advertise: boolean) {
    const join_ = await rpc(hubA, "ServerService/CreateJoinToken", { name });
    const agent = await startFlotilla("agent", {
      args: [
        "--hub",
        hubUrl,
        "--join-token",
        String(join_.token),
        "--data-dir",
        join(dir, name),
        ...(advertise ? ["--admin-advertise-url", "http://127.0.0.1:{port}"] : []),
      ],
      env: { FLOTILLA_LOG_LEVEL: "info" },
    });
    await agent.waitForLog((r) => r.msg === "connected to the hub", 20_000);
    agents[name] = agent;
    serverIds[name] = JSON.parse(readFileSync(join(dir, name, "agent.json"), "utf8")).server_id;
    const created = await rpc(hubA, "ServicesService/CreateService", {
      environmentId,
      name: `svc-${name}`,
      visibility: "VISIBILITY_PRIVATE",
      serverId: serverIds[name],
      spec: { driver: "DRIVER_EXEC", exec: { command: "sleep", args: ["600"] } },
    });
    services[name] = created.service.id;
  }

  beforeAll(async () => {
    database = await createTestDatabase("mp_routes");
    db = testPool(database.url, 2);
    // The database is dropped WITH (FORCE) at the end: an idle client cut then is expected.
    db.on("error", () => {});
    dir = mkdtempSync(join(tmpdir(), "flotilla-routes-"));
    hubA = await startFlotilla("hub", { env: hubEnv() });
    await hubA.waitReady(60_000);
    hubB = await startFlotilla("hub", { env: hubEnv() });
    zPorts = (await freePorts(2)) as [number, number];
    hubZ = await startFlotilla("hub", { env: hubEnv(), port: zPorts[0], grpcPort: zPorts[1] });
    await Promise.all([hubB.waitReady(60_000), hubZ.waitReady(60_000)]);
    const login = await fetch(`${hubA.url}/flotilla.v1.IdentityService/Login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(ADMIN),
    });
    token = ((await login.json()) as { sessionToken: string }).sessionToken;
    const project = await rpc(hubA, "ProjectService/CreateProject", { name: "Routes" });
    environmentId = project.production.id;
    // x: held by replica B, advertises its admin endpoint; y: held by Z (stopped later),
    // advertises one; w: held by Z, advertises none.
    await startAgent("x", hubB.url, true);
    await startAgent("y", hubZ.url, true);
    await startAgent("w", hubZ.url, false);
  }, 240_000);

  afterAll(async () => {
    await killAll();
    await db?.end();
    await database?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("local: the replica holding the agent sends at once; the wait returns the outcome", async () => {
    const before = (await routes(hubB)).local ?? 0;
    const r = await rpc(hubB, "ServicesService/StopService", {
      serviceId: services.x,
      waitSeconds: 30,
    });
    expect(r.dispatch).toMatchObject({ state: "done" });
    await until("the local route to be counted", async () =>
      (await routes(hubB)).local === before + 1 ? true : undefined,
    );
  });

  it("forward: a deploy asked of a replica that does not hold the agent waits for the agent, like one that does", async () => {
    const before = (await routes(hubA)).forward ?? 0;
    const viaA = await rpc(
      hubA,
      "ServicesService/Deploy",
      { serviceId: services.x, waitSeconds: 60 },
      { traceparent: TRACEPARENT, "x-correlation-id": "routes-forward-deploy" },
    );
    await until("the forward route to be counted", async () =>
      (await routes(hubA)).forward === before + 1 ? true : undefined,
    );
    expect(viaA.dispatch).toMatchObject({ id: expect.any(String), state: "done" });
    expect(viaA.deployment.status).toBe("running");
    const viaB = await rpc(hubB, "ServicesService/Deploy", {
      serviceId: services.x,
      waitSeconds: 60,
    });
    expect(viaB.dispatch.state).toBe(viaA.dispatch.state);
    expect(viaB.deployment.status).toBe(viaA.deployment.status);

    // The replica that executed it (B) logs the intent's correlation id and trace.
    const sent = await hubB.waitForLog(
      (l) => l.msg === "dispatch sent" && l.dispatch === viaA.dispatch.id,
      10_000,
    );
    expect(sent).toMatchObject({ correlation_id: "routes-forward-deploy", trace_id: TRACE_ID });
    const result = await hubB.waitForLog(
      (l) => l.msg === "dispatch result" && l.dispatch === viaA.dispatch.id,
      10_000,
    );
    expect(result).toMatchObject({ correlation_id: "routes-forward-deploy", trace_id: TRACE_ID });
    // And so does the agent that ran it.
    const ran = await agents.x!.waitForLog(
      (l) => l.msg === "executing dispatch" && l.dispatch === viaA.dispatch.id,
      10_000,
    );
    expect(ran).toMatchObject({ correlation_id: "routes-forward-deploy", trace_id: TRACE_ID });
  }, 120_000);

  it("a wait that sees no progress ends with dispatch.timeout naming the dispatch, and the work goes on", async () => {
    // Drained through replica A, which does not hold x: the admin call goes to x's endpoint.
    const drained = await rpc(hubA, "ServerService/ControlAgent", {
      server: serverIds.x,
      action: "AGENT_ACTION_DRAIN",
    });
    expect(JSON.parse(drained.resultJson)).toMatchObject({ drained: true });
    const r = await call(hubA, "ServicesService/StartService", {
      serviceId: services.x,
      waitSeconds: 1,
    });
    expect(r.status).toBe(504);
    expect(r.code).toBe("dispatch.timeout");
    const pending = await latestDispatch(services.x!);
    expect(pending.state).toBe("pending");
    expect(r.json.message).toContain(pending.id);
    await rpc(hubA, "ServerService/ControlAgent", {
      server: serverIds.x,
      action: "AGENT_ACTION_RESUME",
    });
    const finished = await until("the timed-out start to finish", async () => {
      const d = await latestDispatch(services.x!);
      return d.id === pending.id && d.state === "done" ? d : undefined;
    });
    expect(finished.state).toBe("done");
  }, 60_000);

  it("rejects a bad wait_seconds before writing anything", async () => {
    const before = await latestDispatch(services.x!);
    for (const waitSeconds of [-1, 3601]) {
      const r = await call(hubA, "ServicesService/StopService", {
        serviceId: services.x,
        waitSeconds,
      });
      expect(r.code).toBe("validation.failed");
      expect(r.json.message).toContain("wait_seconds");
    }
    const r = await call(hubA, "ServicesService/StopService", {
      serviceId: services.x,
      waitSeconds: "soon",
    });
    expect(r.status).toBe(400);
    expect((await latestDispatch(services.x!)).id).toBe(before.id);
  });

  it("direct: with no live replica holding the agent, the dispatch goes to its signed admin endpoint, once", async () => {
    // Z stops cleanly: it releases y and w (offline); they keep dialling Z's address.
    await hubZ.stop();
    await until("y and w offline", async () => {
      const { rows } = await db.query(
        "SELECT count(*)::int AS n FROM servers WHERE id = ANY($1) AND status = 'offline'",
        [[serverIds.y, serverIds.w]],
      );
      return rows[0].n === 2 ? true : undefined;
    });
    const before = (await routes(hubA)).direct ?? 0;
    const r = await rpc(
      hubA,
      "ServicesService/StopService",
      { serviceId: services.y, waitSeconds: 30 },
      { "x-correlation-id": "routes-direct-stop" },
    );
    expect(r.dispatch.state).toBe("done");
    await until("the direct route to be counted", async () =>
      (await routes(hubA)).direct === before + 1 ? true : undefined,
    );
    expect(ledgerStarts("y", r.dispatch.id)).toBe(1);
    const ran = await agents.y!.waitForLog(
      (l) => l.msg === "executing dispatch" && l.dispatch === r.dispatch.id,
      10_000,
    );
    expect(ran.correlation_id).toBe("routes-direct-stop");

    // A job through the direct route returns its output through the row, to the waiting caller.
    const job = await rpc(hubA, "ServicesService/RunJob", {
      serviceId: services.y,
      command: "echo",
      args: ["via-direct"],
      waitSeconds: 30,
    });
    expect(job.job).toMatchObject({ state: "done", stdout: "via-direct\n" });

    // An intent no request routed (written straight into the table) is delivered by the sweep.
    const swept = "00000000-0000-4000-8000-00000000beef";
    await db.query(
      `INSERT INTO dispatches (id, organization_id, server_id, service_id, op, args, correlation_id, traceparent)
       SELECT $1, organization_id, id, $2, 'stop', '{}', 'routes-swept', $3 FROM servers WHERE id = $4`,
      [swept, services.y, TRACEPARENT, serverIds.y],
    );
    await until("the sweep to deliver it directly", async () => {
      const { rows } = await db.query("SELECT state FROM dispatches WHERE id = $1", [swept]);
      return rows[0].state === "done" ? true : undefined;
    });
    expect(ledgerStarts("y", swept)).toBe(1);

    // Replayed by someone holding the signed request: answered from the ledger, not run again.
    const adminUrl = (
      await db.query<{ admin_url: string }>("SELECT admin_url FROM servers WHERE id = $1", [
        serverIds.y,
      ])
    ).rows[0]!.admin_url;
    const secret = JSON.parse(readFileSync(join(dir, "y", "agent.json"), "utf8")).secret as string;
    const key = directKey(secret, serverIds.y!);
    const sealKey = directSealKey(secret, serverIds.y!);
    const seal = (text: string) => sealDirectRequest(sealKey, AGENT_DIRECT_DISPATCH_PATH, text);
    const frame = seal(
      JSON.stringify({
        v: 1,
        type: "dispatch",
        id: r.dispatch.id,
        ctx: { correlation: "replay", traceparent: TRACEPARENT },
        op: "stop",
        service_id: services.y,
        deployment_id: null,
        args: {},
      }),
    );
    const post = (headers: Record<string, string>, body = frame) =>
      fetch(new URL(AGENT_DIRECT_DISPATCH_PATH, adminUrl), {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body,
      });
    const replay = await post(signDirect(key, "POST", AGENT_DIRECT_DISPATCH_PATH, frame));
    expect(replay.status).toBe(200);
    // The answer is sealed for this dispatch: it opens under the server's key, and only for it.
    const answer = await replay.text();
    expect(openDirectAnswer(sealKey, r.dispatch.id, answer)).toMatchObject({
      outcome: { ok: true },
    });
    expect(openDirectAnswer(sealKey, swept, answer)).toHaveProperty("refused");
    expect(ledgerStarts("y", r.dispatch.id)).toBe(1);

    // Unsigned, mis-signed, stale, or signed over another body: refused, nothing run.
    expect((await post({})).status).toBe(401);
    const wrong = directKey("not-the-secret", serverIds.y!);
    expect((await post(signDirect(wrong, "POST", AGENT_DIRECT_DISPATCH_PATH, frame))).status).toBe(
      401,
    );
    const stale = signDirect(key, "POST", AGENT_DIRECT_DISPATCH_PATH, frame, Date.now() - 120_000);
    expect((await post(stale)).status).toBe(401);
    const other = seal(
      JSON.stringify({
        v: 1,
        type: "dispatch",
        id: "00000000-0000-4000-8000-000000000001",
        ctx: { correlation: "replay", traceparent: TRACEPARENT },
        op: "stop",
        service_id: services.y,
        deployment_id: null,
        args: {},
      }),
    );
    expect(
      (await post(signDirect(key, "POST", AGENT_DIRECT_DISPATCH_PATH, frame), other)).status,
    ).toBe(401);
    // Signed and sealed, but not a dispatch frame: a clear 400.
    const junk = seal('{"v":1,"type":"dispatch"}');
    const bad = await post(signDirect(key, "POST", AGENT_DIRECT_DISPATCH_PATH, junk), junk);
    expect(bad.status).toBe(400);
    // Signed, but the frame in clear (its secrets would have crossed unsealed): refused too.
    const plain = '{"v":1,"type":"dispatch"}';
    expect(
      (await post(signDirect(key, "POST", AGENT_DIRECT_DISPATCH_PATH, plain), plain)).status,
    ).toBe(400);
    expect(ledgerStarts("y", "00000000-0000-4000-8000-000000000001")).toBe(0);
  }, 90_000);

  it("undeliverable: no replica and no endpoint, the dispatch waits pending and is drained on reconnect", async () => {
    const before = (await routes(hubA)).undeliverable ?? 0;
    await rpc(hubA, "ServicesService/StopService", { serviceId: services.w });
    await until("the undeliverable route to be counted", async () =>
      (await routes(hubA)).undeliverable === before + 1 ? true : undefined,
    );
    const waiting = await latestDispatch(services.w!);
    await sleep(1500); // three sweeps: nothing can deliver it
    expect((await latestDispatch(services.w!)).state).toBe("pending");
    // Z comes back on the address w dials: w reconnects, and its pending dispatch is drained.
    hubZ = await startFlotilla("hub", { env: hubEnv(), port: zPorts[0], grpcPort: zPorts[1] });
    await hubZ.waitReady(60_000);
    const done = await until("w's dispatch to be drained", async () => {
      const d = await latestDispatch(services.w!);
      return d.id === waiting.id && d.state === "done" ? d : undefined;
    });
    expect(done.state).toBe("done");
    expect(ledgerStarts("w", waiting.id)).toBe(1);
  }, 120_000);

  it("the CLI waits on whichever replica it asks, and fleet status shows how each agent was probed", async () => {
    await until("w and y back online through Z", async () => {
      const { rows } = await db.query(
        "SELECT count(*)::int AS n FROM servers WHERE id = ANY($1) AND status = 'online'",
        [[serverIds.y, serverIds.w]],
      );
      return rows[0].n === 2 ? true : undefined;
    });
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, [CLI, ...args], {
        cwd: ROOT,
        env: { ...process.env, FLOTILLA_HUB: hubA.url, FLOTILLA_TOKEN: token },
        encoding: "utf8",
        timeout: 60_000,
      });
    const stopped = cli("services", "stop", services.x!);
    expect(stopped.status, stopped.stderr).toBe(0);
    expect(stopped.stdout).toContain("svc-x stopped.");
    expect((await latestDispatch(services.x!)).state).toBe("done");

    const fleet = cli("fleet", "status", "--json", "--refresh");
    expect(fleet.status, fleet.stderr).toBe(0);
    const members = new Map(
      (JSON.parse(fleet.stdout).members as Array<Record<string, string>>).map((m) => [m.name, m]),
    );
    // A holds none of them: x (on B) and y (on Z) are probed at their signed endpoints; w
    // advertises none, so only its heartbeat through Z speaks for it.
    expect(members.get("x")).toMatchObject({ health: "ok", probe: "direct" });
    expect(members.get("y")).toMatchObject({ health: "ok", probe: "direct" });
    expect(members.get("w")).toMatchObject({ health: "online", probe: "heartbeat" });
  }, 90_000);
});
