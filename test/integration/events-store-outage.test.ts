// A store outage over a consumer's last delivery loses no event: on a NATS server of this test's own
// and real PostgreSQL, the handler and the quarantine insert both fail while an outage flag is set
// (a PL/pgSQL check raises); once it clears, every event ends processed or quarantined, even when
// the replica that met the outage shut down meanwhile.
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SERVER_MAX_DELIVER } from "../../src/hub/events/index.js";
import { api, eventually, suffix } from "../support/core.js";
import { bootstrapOwner, startTestHub, type TestHub } from "../support/hub.js";

const MAX_DELIVER = 2;

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (!address || typeof address === "string") throw new Error("no port assigned");
  return address.port;
}

async function untilNatsAnswers(url: string): Promise<void> {
  await eventually(
    async () => {
      try {
        const nc = await connect({ servers: url, timeout: 1000 });
        await nc.close();
        return true;
      } catch {
        return false;
      }
    },
    20_000,
    "the test's NATS server",
  );
}

describe("a store outage over a consumer's final delivery", () => {
  let natsDir: string;
  let nats: ChildProcess;
  let t: TestHub;
  let token: string;
  let natsUrl: string;
  const stream = `T${randomBytes(5).toString("hex")}`;
  /** Events whose handler has a real bug (fails even when the store is up). */
  const buggy = new Set<string>();

  beforeAll(async () => {
    natsDir = mkdtempSync(join(tmpdir(), "flotilla-outage-nats-"));
    const port = await freePort();
    nats = spawn(
      "/usr/sbin/nats-server",
      ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", natsDir],
      { stdio: "ignore" },
    );
    natsUrl = `nats://127.0.0.1:${port}`;
    await untilNatsAnswers(natsUrl);
    t = await startTestHub("postgres", {
      nats: { url: natsUrl, stream, subjectRoot: stream.toLowerCase() },
    });
    token = (await bootstrapOwner(t.hub)).token;
    // The outage: while test_store_outage.down is true, test_store_check() raises, as a query on
    // a database that went away would; the quarantine insert meets it through a trigger, whose
    // error names the event (so the hub's log shows which events failed to be quarantined).
    await t.hub.db.exec(`
      CREATE TABLE test_store_outage (down boolean NOT NULL);
      INSERT INTO test_store_outage VALUES (false);
      CREATE FUNCTION test_store_check() RETURNS void LANGUAGE plpgsql AS $$
      BEGIN
        IF (SELECT down FROM test_store_outage) THEN
          RAISE EXCEPTION 'the store is down (test outage)';
        END IF;
      END $$;
      CREATE FUNCTION test_quarantine_guard() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF (SELECT down FROM test_store_outage) THEN
          RAISE EXCEPTION 'the store is down (test outage) quarantining %', NEW.event_id;
        END IF;
        RETURN NEW;
      END $$;
      CREATE TRIGGER test_quarantine_guard BEFORE INSERT ON event_quarantine
        FOR EACH ROW EXECUTE FUNCTION test_quarantine_guard();
    `);
    await t.hub.eventsService.addConsumer({
      name: "outage",
      maxDeliver: MAX_DELIVER,
      retryDelayMs: 20,
      ackWaitMs: 2000,
      accepts: (type) => type === "project.renamed",
      handler: async (e, tools) => {
        await tools.tx.query("SELECT test_store_check()");
        if (buggy.has(e.id)) throw new Error("the handler has a bug");
      },
    });
  }, 60_000);

  afterAll(async () => {
    await t?.stop();
    if (nats && nats.exitCode === null && nats.signalCode === null) {
      const exited = new Promise((resolve) => nats.once("exit", resolve));
      nats.kill("SIGKILL");
      await exited;
    }
    if (natsDir) rmSync(natsDir, { recursive: true, force: true });
  });

  const renamedEvent = async (): Promise<string> => {
    const a = api(t.hub.url, token);
    const { project } = await a.projects.createProject({ name: `Outage ${suffix()}` });
    await a.projects.renameProject({ project: project!.id, name: `Outaged ${suffix()}` });
    const { rows } = await t.hub.db.query<{ id: string }>(
      "SELECT id FROM outbox_events WHERE type = 'project.renamed' AND subject_id = $1",
      [project!.id],
    );
    return rows[0]!.id;
  };

  it("leaves the durable's max_deliver unlimited, so the server never drops a message the consumer has not recorded", async () => {
    const nc = await connect({ servers: natsUrl });
    try {
      const info = await (await jetstreamManager(nc)).consumers.info(stream, "outage");
      expect(info.config.max_deliver).toBe(SERVER_MAX_DELIVER);
    } finally {
      await nc.close();
    }
  });

  it("an event whose last delivery and quarantine both meet the outage is processed once the store is back; a buggy one is quarantined", async () => {
    await t.hub.db.query("UPDATE test_store_outage SET down = true");
    const healthy = await renamedEvent();
    const bug = await renamedEvent();
    buggy.add(bug);
    // Both reached their final delivery during the outage, and the hub failed to quarantine each.
    const quarantineFailed = (id: string) =>
      t.logs.some(
        (l) =>
          l.msg === "cannot quarantine; redelivering" &&
          String((l.err as { message?: string } | undefined)?.message).includes(id),
      );
    await eventually(
      async () => quarantineFailed(healthy) && quarantineFailed(bug),
      30_000,
      "both events failing their final delivery and their quarantine",
    );
    await t.hub.db.query("UPDATE test_store_outage SET down = false");

    const outcome = async (id: string) => {
      const processed = await t.hub.db.query(
        "SELECT 1 FROM event_processed WHERE consumer = 'outage' AND event_id = $1",
        [id],
      );
      const quarantined = await t.hub.db.query<{ reason: string }>(
        "SELECT reason FROM event_quarantine WHERE consumer = 'outage' AND event_id = $1",
        [id],
      );
      return { processed: processed.rows.length, quarantined: quarantined.rows };
    };
    await eventually(
      async () => {
        const h = await outcome(healthy);
        const b = await outcome(bug);
        return h.processed + h.quarantined.length > 0 && b.quarantined.length > 0;
      },
      30_000,
      "each event processed or quarantined after the outage",
    );
    // The healthy event is processed (or, if the store came back between its handler failing and
    // its quarantine insert, quarantined): exactly one of the two, never neither.
    const h = await outcome(healthy);
    expect(h.processed + h.quarantined.length).toBe(1);
    // The buggy event can never be processed: quarantined, once (with the handler's reason, or the
    // outage's if the store came back between its last handler failure and its quarantine insert).
    const b = await outcome(bug);
    expect(b.processed).toBe(0);
    expect(b.quarantined).toHaveLength(1);
    expect(b.quarantined[0]!.reason).toMatch(/the handler has a bug|the store is down/);
  });

  it("a replica that shuts down during the outage, after its final delivery failed to quarantine, leaves the event to the next one", async () => {
    const spec = {
      name: "outage2",
      maxDeliver: MAX_DELIVER,
      retryDelayMs: 20,
      ackWaitMs: 2000,
      accepts: (type: string) => type === "project.renamed",
      handler: async (_e: unknown, tools: { tx: { query(sql: string): Promise<unknown> } }) => {
        await tools.tx.query("SELECT test_store_check()");
      },
    };
    await t.hub.db.query("UPDATE test_store_outage SET down = true");
    const first = await t.hub.eventsService.addConsumer(spec);
    const id = await renamedEvent();
    await eventually(
      async () =>
        t.logs.some(
          (l) =>
            l.consumer === "outage2" &&
            l.msg === "cannot quarantine; redelivering" &&
            String((l.err as { message?: string } | undefined)?.message).includes(id),
        ),
      30_000,
      "the final delivery failing to quarantine",
    );
    await first.stop();
    await t.hub.db.query("UPDATE test_store_outage SET down = false");
    // The next replica's consumer (same durable) gets the event the stopped one never recorded.
    await t.hub.eventsService.addConsumer(spec);
    await eventually(
      async () =>
        (
          await t.hub.db.query(
            "SELECT 1 FROM event_processed WHERE consumer = 'outage2' AND event_id = $1",
            [id],
          )
        ).rows.length === 1,
      30_000,
      "the event processed by the next consumer",
    );
  });
});
