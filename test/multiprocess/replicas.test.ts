// Three hub replicas and three agents on one PostgreSQL, as real processes: 1,000 mixed operations
// (jobs, and every fourth a stop: a lifecycle dispatch, queued behind the service's others) sent to
// replicas chosen at random, one replica killed with SIGKILL and the LISTEN connections cut in the
// middle. Every job reaches a terminal state, and each ran exactly once (the agents' ledgers, their
// execution logs, are read back); the agent of the dead replica comes back through another one.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase, testPool } from "../support/pg.js";
import { type FlotillaProcess, killAll, SECRET_A, sleep, startFlotilla } from "./procs.js";

const ADMIN = { email: "replicas@example.com", password: "replicas-password-1" };
const JOBS = 1000;
const CONCURRENCY = 16;

describe("three hub replicas, three agents, a replica killed mid-run", () => {
  let database: TestDatabase;
  let db: pg.Pool;
  let dir: string;
  const hubs: FlotillaProcess[] = [];
  const agents: FlotillaProcess[] = [];
  const serviceIds: string[] = [];
  let token: string;

  async function rpc(hub: FlotillaProcess, path: string, body: unknown) {
    const res = await fetch(`${hub.url}/flotilla.v1.${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(15_000),
    });
    const json = (await res.json()) as Record<string, unknown>;
    if (res.status !== 200)
      throw new Error(`${path} on ${hub.url}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  }

  beforeAll(async () => {
    database = await createTestDatabase("mp_replicas");
    db = testPool(database.url, 2);
    // An idle client the server drops must not become an uncaught error of the test process.
    db.on("error", () => {});
    dir = mkdtempSync(join(tmpdir(), "flotilla-replicas-"));
    for (let i = 0; i < 3; i++) {
      const hub = await startFlotilla("hub", {
        env: {
          FLOTILLA_DATABASE_URL: database.url,
          FLOTILLA_SESSION_SECRET: SECRET_A,
          FLOTILLA_ADMIN_EMAIL: ADMIN.email,
          FLOTILLA_ADMIN_PASSWORD: ADMIN.password,
          FLOTILLA_SWEEP_INTERVAL_MS: "500",
          FLOTILLA_LOG_LEVEL: "warn",
        },
      });
      await hub.waitReady(60_000);
      hubs.push(hub);
    }
    const login = await fetch(`${hubs[0]!.url}/flotilla.v1.IdentityService/Login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(ADMIN),
    });
    token = ((await login.json()) as { sessionToken: string }).sessionToken;
    const project = await rpc(hubs[0]!, "ProjectService/CreateProject", { name: "Replicas" });
    const environmentId = (project.production as { id: string }).id;
    for (let i = 0; i < 3; i++) {
      // Agent i dials replica i first, and the others in turn when it loses it.
      const order = [0, 1, 2].map((k) => hubs[(i + k) % 3]!.url).join(",");
      const join_ = await rpc(hubs[i]!, "ServerService/CreateJoinToken", { name: `box-${i}` });
      const agent = await startFlotilla("agent", {
        args: [
          "--hub",
          order,
          "--join-token",
          String(join_.token),
          "--data-dir",
          join(dir, `agent-${i}`),
        ],
        env: { FLOTILLA_LOG_LEVEL: "info" },
      });
      await agent.waitForLog((r) => r.msg === "connected to the hub", 20_000);
      agents.push(agent);
      const serverId = JSON.parse(
        readFileSync(join(dir, `agent-${i}`, "agent.json"), "utf8"),
      ).server_id;
      const created = await rpc(hubs[i]!, "ServicesService/CreateService", {
        environmentId,
        name: `svc-${i}`,
        visibility: "VISIBILITY_PRIVATE",
        serverId,
        spec: { driver: "DRIVER_EXEC", exec: { command: "true" } },
      });
      serviceIds.push((created.service as { id: string }).id);
    }
  }, 180_000);

  afterAll(async () => {
    await killAll();
    await db?.end();
    await database?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("1,000 jobs and stops through random replicas all finish, each run exactly once, across a SIGKILL and cut listeners", async () => {
    const alive = new Set([0, 1, 2]);
    let sent = 0;
    let killedAt = 0;
    const submit = async () => {
      for (;;) {
        const n = sent++;
        if (n >= JOBS) return;
        if (n === Math.floor(JOBS * 0.3) && !killedAt) {
          // The replica holding agent 1's socket dies without a goodbye.
          alive.delete(1);
          hubs[1]!.child.kill("SIGKILL");
          killedAt = Date.now();
        }
        if (n === Math.floor(JOBS * 0.6)) {
          // And every LISTEN connection is cut (the replicas reconnect and re-drain).
          await db.query(
            `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'flotilla' AND query ILIKE 'LISTEN%'`,
          );
        }
        const serviceId = serviceIds[n % 3]!;
        // A replica chosen at random among the live ones; a call lost with a dying replica is
        // not retried (its intent may or may not have committed: either way it is accounted).
        const choices = [...alive];
        const hub = hubs[choices[Math.floor(Math.random() * choices.length)]!]!;
        const op =
          n % 4 === 3
            ? rpc(hub, "ServicesService/StopService", { serviceId })
            : rpc(hub, "ServicesService/RunJob", { serviceId, command: "true" });
        await op.catch(() => {});
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, submit));

    // Every intent that was written reaches a terminal state.
    const deadline = Date.now() + 120_000;
    let open = Number.POSITIVE_INFINITY;
    while (open > 0 && Date.now() < deadline) {
      const { rows } = await db.query(
        "SELECT count(*)::int AS n FROM dispatches WHERE op IN ('job', 'stop') AND state NOT IN ('done', 'failed')",
      );
      open = rows[0].n;
      if (open > 0) await sleep(250);
    }
    expect(open).toBe(0);
    const { rows: all } = await db.query<{ id: string; state: string; op: string }>(
      "SELECT id, state, op FROM dispatches WHERE op IN ('job', 'stop')",
    );
    expect(all.filter((d) => d.op === "stop").length).toBeGreaterThanOrEqual((JOBS / 4) * 0.95);
    expect(all.length).toBeGreaterThanOrEqual(JOBS * 0.95);
    expect(all.filter((d) => d.state !== "done")).toEqual([]);

    // Each ran exactly once: every dispatch id is started once in exactly one agent's ledger.
    const started = new Map<string, number>();
    for (let i = 0; i < 3; i++) {
      for (const line of readFileSync(join(dir, `agent-${i}`, "dispatches.jsonl"), "utf8").split(
        "\n",
      )) {
        if (!line) continue;
        const entry = JSON.parse(line) as { id: string; started?: boolean };
        if (entry.started) started.set(entry.id, (started.get(entry.id) ?? 0) + 1);
      }
    }
    expect([...started.values()].filter((n) => n !== 1)).toEqual([]);
    expect(all.every((d) => started.get(d.id) === 1)).toBe(true);

    // The agent of the dead replica came back through another one.
    const back = await agents[1]!.waitForLog(
      (r) => r.msg === "connected to the hub" && Date.parse(String(r.time)) > killedAt,
      30_000,
    );
    const recoveryMs = Date.parse(String(back.time)) - killedAt;
    console.log(JSON.stringify({ operations: all.length, recoveryMs }));
    expect(recoveryMs).toBeLessThan(30_000);
  }, 300_000);
});
