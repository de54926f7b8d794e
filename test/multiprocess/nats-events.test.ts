// The NATS backbone as real processes: a NATS server of this test's own (stopped and restarted
// mid-run), two hub replicas sharing the durable consumers, one of them SIGKILLed by its relay
// between a publish and the mark. 10,000 events go through the API; every one reaches the audit
// projection, none takes effect twice, the stream holds each once; the survivor takes over the
// dead replica's share; a request's traceparent shows in the logs of the replica that handled the
// resulting event when that is another replica.
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase, testPool } from "../support/pg.js";
import {
  type FlotillaProcess,
  freePorts,
  killAll,
  SECRET_A,
  sleep,
  startFlotilla,
} from "./procs.js";

const ADMIN = { email: "nats-events@example.com", password: "nats-events-password-1" };
const EVENTS = 10_000;
const CONCURRENCY = 16;
const PROJECTS = 16;
/** Replica A's relay SIGKILLs its own process once it has published this many events. */
const KILL_AFTER_PUBLISHED = 1000;

/** The machine's NATS server binary, run on a port and store of this test's own. */
function startNats(port: number, storeDir: string): ChildProcess {
  return spawn(
    "/usr/sbin/nats-server",
    ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", storeDir],
    {
      stdio: "ignore",
    },
  );
}

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

const stopped = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", () => resolve());
    child.kill("SIGKILL");
  });

describe("two hub replicas on a NATS server that restarts", () => {
  let database: TestDatabase;
  let db: pg.Pool;
  let natsDir: string;
  let nats: ChildProcess;
  let natsUrl: string;
  let natsPort: number;
  const stream = `T${randomBytes(5).toString("hex")}`;
  const root = stream.toLowerCase();
  let a: FlotillaProcess;
  let b: FlotillaProcess;
  let token: string;
  const projectIds: string[] = [];

  const hubEnv = (extra: Record<string, string> = {}) => ({
    FLOTILLA_DATABASE_URL: database.url,
    FLOTILLA_SESSION_SECRET: SECRET_A,
    FLOTILLA_ADMIN_EMAIL: ADMIN.email,
    FLOTILLA_ADMIN_PASSWORD: ADMIN.password,
    FLOTILLA_NATS_URL: natsUrl,
    FLOTILLA_NATS_STREAM: stream,
    FLOTILLA_NATS_SUBJECT_ROOT: root,
    FLOTILLA_LOG_LEVEL: "info",
    ...extra,
  });

  async function rpc(
    hub: FlotillaProcess,
    path: string,
    body: unknown,
    headers: Record<string, string> = {},
  ) {
    const res = await fetch(`${hub.url}/flotilla.v1.${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}`, ...headers },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(15_000),
    });
    const json = (await res.json()) as Record<string, unknown>;
    if (res.status !== 200)
      throw new Error(`${path} on ${hub.url}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  }

  const count = async (sql: string, params: unknown[] = []) =>
    (await db.query<{ n: number }>(sql, params)).rows[0]!.n;

  beforeAll(async () => {
    database = await createTestDatabase("mp_nats_events");
    db = testPool(database.url, 2);
    // The database is dropped WITH (FORCE) at the end; a connection it cuts is not a failure.
    db.on("error", () => {});
    natsDir = mkdtempSync(join(tmpdir(), "flotilla-nats-"));
    natsPort = (await freePorts(1))[0]!;
    natsUrl = `nats://127.0.0.1:${natsPort}`;
    nats = startNats(natsPort!, natsDir);
    await untilNatsAnswers(natsUrl);
    a = await startFlotilla("hub", {
      env: hubEnv({ FLOTILLA_FAULT_KILL_AFTER_PUBLISHED: String(KILL_AFTER_PUBLISHED) }),
    });
    await a.waitReady(60_000);
    b = await startFlotilla("hub", { env: hubEnv() });
    await b.waitReady(60_000);
    const login = await fetch(`${b.url}/flotilla.v1.IdentityService/Login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(ADMIN),
    });
    token = ((await login.json()) as { sessionToken: string }).sessionToken;
    for (let i = 0; i < PROJECTS; i++) {
      const p = await rpc(b, "ProjectService/CreateProject", { name: `Events ${i}` });
      projectIds.push((p.project as { id: string }).id);
    }
  }, 180_000);

  afterAll(async () => {
    await killAll();
    if (nats) await stopped(nats);
    await db?.end();
    await database?.drop();
    if (natsDir) rmSync(natsDir, { recursive: true, force: true });
  });

  it("10,000 events across a NATS restart and a relay SIGKILLed between publish and mark: each reaches the consumer once, the stream holds each once, the survivor takes over", async () => {
    let sent = 0;
    let natsStoppedAt = -1;
    let readyWhileDown: { status: number; body: { nats?: { connected: boolean } } } | undefined;
    let restarted: Promise<void> | undefined;
    const submit = async (worker: number) => {
      for (;;) {
        const n = sent++;
        if (n >= EVENTS) return;
        if (n === EVENTS / 2) {
          // NATS goes away in the middle; the API keeps taking changes, the outbox holds them.
          natsStoppedAt = n;
          await stopped(nats);
          // B's /ready turns 503 while NATS is down; then NATS comes back (at least 3 s later).
          restarted = (async () => {
            const until = Date.now() + 20_000;
            while (!readyWhileDown && Date.now() < until) {
              const res = await fetch(`${b.url}/ready`, { signal: AbortSignal.timeout(2000) });
              if (res.status === 503)
                readyWhileDown = {
                  status: 503,
                  body: (await res.json()) as { nats?: { connected: boolean } },
                };
              else await res.body?.cancel();
              await sleep(200);
            }
            await sleep(3000);
            nats = startNats(natsPort, natsDir);
          })();
        }
        // Alternate replicas while A lives; after its relay killed it, B takes everything.
        const target = a.exitStatus() === null && n % 2 === 0 ? a : b;
        const projectId = projectIds[(worker + n) % PROJECTS]!;
        try {
          await rpc(target, "ProjectService/RenameProject", {
            project: projectId,
            name: `Renamed ${n}`,
          });
        } catch (err) {
          if (target !== a) throw err;
          // A died under this request (its own relay killed it): the change may or may not have
          // committed, so count what the outbox holds rather than what was sent; send it to B.
          await rpc(b, "ProjectService/RenameProject", {
            project: projectId,
            name: `Renamed ${n}`,
          });
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, (_, w) => submit(w)));
    expect(natsStoppedAt).toBe(EVENTS / 2);
    await restarted;
    await untilNatsAnswers(natsUrl);
    expect(readyWhileDown?.status).toBe(503);
    expect(readyWhileDown?.body.nats?.connected).toBe(false);

    // Replica A died by SIGKILL from its relay, after a publish and before marking the rows.
    const exit = await a.waitExit(60_000);
    expect(exit.signal).toBe("SIGKILL");

    const total = await count("SELECT count(*)::int AS n FROM outbox_events");
    expect(total).toBeGreaterThanOrEqual(EVENTS);
    const deadline = Date.now() + 180_000;
    for (;;) {
      const unpublished = await count(
        "SELECT count(*)::int AS n FROM outbox_events WHERE published_at IS NULL",
      );
      const projected = await count(
        "SELECT count(*)::int AS n FROM audit_log a JOIN outbox_events e ON e.id = a.id WHERE a.actor_type = 'system'",
      );
      if (unpublished === 0 && projected === total) break;
      if (Date.now() > deadline)
        throw new Error(
          `unpublished ${unpublished}, projected ${projected} of ${total}\n${b.describe().slice(-4000)}`,
        );
      await sleep(250);
    }
    // Ready again once NATS is back.
    await b.waitReady(30_000);
    // One processed row per event for the audit consumer, one audit row per event.
    expect(
      await count("SELECT count(*)::int AS n FROM event_processed WHERE consumer = 'audit'"),
    ).toBe(total);

    // No event took effect twice: across both replicas' logs, at most one fresh handling each.
    const fresh = new Map<string, number>();
    for (const r of [...a.logs(), ...b.logs()]) {
      if (r.msg === "event handled" && r.consumer === "audit" && r.duplicate === false) {
        const id = String(r.event_id);
        fresh.set(id, (fresh.get(id) ?? 0) + 1);
      }
    }
    expect([...fresh.values()].filter((v) => v > 1)).toEqual([]);
    // Both replicas handled a share, and B handled events after A was gone.
    const handledBy = (p: FlotillaProcess) =>
      p.logs().filter((r) => r.msg === "event handled" && r.consumer === "audit").length;
    expect(handledBy(a)).toBeGreaterThan(0);
    expect(handledBy(b)).toBeGreaterThan(0);

    // The stream holds every event exactly once: read it all back by Nats-Msg-Id.
    const nc = await connect({ servers: natsUrl });
    try {
      const jsm = await jetstreamManager(nc);
      const info = await jsm.streams.info(stream);
      expect(info.state.messages).toBe(total);
      const consumer = await jetstream(nc).consumers.get(stream, {
        deliver_policy: DeliverPolicy.All,
      });
      const seen = new Set<string>();
      const messages = await consumer.consume();
      for await (const m of messages) {
        seen.add(m.headers?.get("Nats-Msg-Id") ?? "");
        if (m.info.pending === 0) break;
      }
      expect(seen.size).toBe(total);
      const ids = (await db.query<{ id: string }>("SELECT id FROM outbox_events")).rows.map(
        (r) => r.id,
      );
      expect(ids.every((id) => seen.has(id))).toBe(true);
      // Every durable consumer (audit, webhooks) got every message and acked it.
      for (const durable of ["audit", "webhooks"]) {
        const deadline = Date.now() + 60_000;
        for (;;) {
          const c = await jsm.consumers.info(stream, durable);
          if (
            c.num_pending === 0 &&
            c.num_ack_pending === 0 &&
            c.ack_floor.stream_seq === info.state.last_seq
          )
            break;
          if (Date.now() > deadline) throw new Error(`${durable}: ${JSON.stringify(c)}`);
          await sleep(250);
        }
      }
    } finally {
      await nc.close();
    }
  }, 600_000);

  it("a request's traceparent appears in the logs of the other replica that handled its event", async () => {
    // An API-only replica takes the request; B is the only one running consumers.
    const c = await startFlotilla("hub", { env: hubEnv({ FLOTILLA_NATS_CONSUMERS: "off" }) });
    await c.waitReady(60_000);
    const traceId = randomBytes(16).toString("hex");
    const traceparent = `00-${traceId}-${randomBytes(8).toString("hex")}-01`;
    await rpc(
      c,
      "ProjectService/RenameProject",
      { project: projectIds[0], name: "Traced" },
      { traceparent },
    );
    const { rows } = await db.query<{ id: string }>(
      "SELECT id FROM outbox_events WHERE traceparent LIKE $1",
      [`00-${traceId}-%`],
    );
    expect(rows).toHaveLength(1);
    const line = await b.waitForLog(
      (r) => r.msg === "event handled" && r.event_id === rows[0]!.id && r.consumer === "audit",
      30_000,
    );
    expect(line.trace_id).toBe(traceId);
    expect(String(line.traceparent)).toContain(traceId);
    expect(c.logs().some((r) => r.msg === "event handled")).toBe(false);
    await c.stop();
  }, 120_000);
});
