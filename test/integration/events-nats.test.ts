// The NATS backbone against the real server on 127.0.0.1:4222: stream contracts at startup
// (create, validate untouched, refuse naming the field, never delete), the relay's headers and
// dedupe, the audit projection, poison messages quarantined and replayed once.
import { randomBytes } from "node:crypto";
import { jetstreamManager, RetentionPolicy, type StreamConfig } from "@nats-io/jetstream";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  EventsService,
  ensureStream,
  eventsStreamContract,
  nanos,
  SERVER_MAX_DELIVER,
  streamConfig,
} from "../../src/hub/events/index.js";
import { createLogger, FlotillaError, traceIdOf } from "../../src/shared/index.js";
import { api, createFixture, eventually, suffix } from "../support/core.js";
import { bootstrapOwner, startTestHub, type TestHub } from "../support/hub.js";

const NATS_URL = "nats://127.0.0.1:4222";
const unique = () => `T${randomBytes(5).toString("hex")}`;

let nc: NatsConnection;
const created: string[] = [];

beforeAll(async () => {
  nc = await connect({ servers: NATS_URL });
});
afterAll(async () => {
  const jsm = await jetstreamManager(nc);
  for (const s of created) await jsm.streams.delete(s).catch(() => {});
  await nc.close();
});

describe("stream contracts against the real server", () => {
  it("creates a missing stream with the contract's config", async () => {
    const jsm = await jetstreamManager(nc);
    const name = unique();
    created.push(name);
    const contract = eventsStreamContract({ name, subjectRoot: name.toLowerCase() });
    expect(await ensureStream(jsm, contract)).toBe("created");
    const info = await jsm.streams.info(name);
    expect(info.config.subjects).toEqual([`${name.toLowerCase()}.>`]);
    expect(info.config.duplicate_window).toBe(nanos(contract.duplicateWindowMs));
    expect(info.config.retention).toBe(RetentionPolicy.Limits);
  });

  it("leaves a compatible stream untouched (config identical before and after)", async () => {
    const jsm = await jetstreamManager(nc);
    const name = unique();
    created.push(name);
    const root = name.toLowerCase();
    // Compatible but not what Flotilla would create: wider subject, other limits, longer window.
    await jsm.streams.add({
      ...streamConfig(eventsStreamContract({ name, subjectRoot: root })),
      subjects: [`${root}.>`, `${root}x.>`],
      max_age: 0,
      duplicate_window: nanos(10 * 60_000),
      description: "operator-tuned",
    });
    const before = (await jsm.streams.info(name)).config;
    expect(await ensureStream(jsm, eventsStreamContract({ name, subjectRoot: root }))).toBe(
      "validated",
    );
    const after = (await jsm.streams.info(name)).config;
    expect(after).toEqual(before);
  });

  const incompatible: Array<[string, Partial<StreamConfig>]> = [
    ["duplicate_window", { duplicate_window: nanos(5_000) }],
    ["max_age", { max_age: nanos(120_000), duplicate_window: nanos(60_000) }],
    ["retention", { retention: RetentionPolicy.Interest }],
  ];
  for (const [field, change] of incompatible) {
    it(`refuses an existing stream with an incompatible ${field}, naming it, and keeps the stream`, async () => {
      const jsm = await jetstreamManager(nc);
      const name = unique();
      created.push(name);
      const contract = eventsStreamContract({ name, subjectRoot: name.toLowerCase() });
      await jsm.streams.add({ ...streamConfig(contract), ...change });
      const before = (await jsm.streams.info(name)).config;
      const err = await ensureStream(jsm, contract).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(FlotillaError);
      expect((err as FlotillaError).code).toBe("events.stream_incompatible");
      expect((err as FlotillaError).field).toBe(field);
      expect((err as FlotillaError).message).toContain(field);
      expect((await jsm.streams.info(name)).config).toEqual(before);
    });
  }

  it("refuses a stream that does not capture the event subjects", async () => {
    const jsm = await jetstreamManager(nc);
    const name = unique();
    created.push(name);
    const root = name.toLowerCase();
    await jsm.streams.add({
      ...streamConfig(eventsStreamContract({ name, subjectRoot: root })),
      subjects: [`${root}.only.>`],
    });
    await expect(
      ensureStream(jsm, eventsStreamContract({ name, subjectRoot: root })),
    ).rejects.toMatchObject({
      code: "events.stream_incompatible",
      field: "subjects",
    });
  });
});

describe("hub startup against NATS", () => {
  it("refuses to start against an incompatible events stream, naming the field, and leaves the stream as it was", async () => {
    const jsm = await jetstreamManager(nc);
    const name = unique();
    created.push(name);
    const root = name.toLowerCase();
    await jsm.streams.add({
      ...streamConfig(eventsStreamContract({ name, subjectRoot: root })),
      duplicate_window: nanos(2_000),
    });
    const before = (await jsm.streams.info(name)).config;
    const err = await startTestHub("postgres", {
      nats: { url: NATS_URL, stream: name, subjectRoot: root },
    }).then(
      async (t) => {
        await t.stop();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: "events.stream_incompatible", field: "duplicate_window" });
    expect((err as Error).message).toMatch(
      /duplicate_window is 2000 ms; it must be at least 60000 ms/,
    );
    expect((await jsm.streams.info(name)).config).toEqual(before);
  });

  it("creates the durables with the configured ack_wait and max_ack_pending and an unlimited server-side max_deliver, and updates them on a restart (an older hub's finite max_deliver too)", async () => {
    const jsm = await jetstreamManager(nc);
    const stream = unique();
    created.push(stream);
    const nats = { url: NATS_URL, stream, subjectRoot: stream.toLowerCase() };
    const first = await startTestHub("postgres", {
      nats: { ...nats, consumer: { ackWaitMs: 20_000, maxDeliver: 7, concurrency: 4 } },
    });
    await first.stop();
    for (const durable of ["audit", "webhooks"]) {
      const c = (await jsm.consumers.info(stream, durable)).config;
      expect([c.ack_policy, c.ack_wait, c.max_deliver, c.max_ack_pending]).toEqual([
        "explicit",
        nanos(20_000),
        SERVER_MAX_DELIVER,
        4,
      ]);
    }
    // A durable an older hub created with a finite max_deliver (which drops messages past it).
    await jsm.consumers.update(stream, "audit", { max_deliver: 7 });
    const second = await startTestHub("postgres", {
      nats: { ...nats, consumer: { ackWaitMs: 45_000, maxDeliver: 3, concurrency: 9 } },
    });
    await second.stop();
    const c = (await jsm.consumers.info(stream, "audit")).config;
    expect([c.ack_wait, c.max_deliver, c.max_ack_pending]).toEqual([
      nanos(45_000),
      SERVER_MAX_DELIVER,
      9,
    ]);
  });

  it("refuses to start when NATS cannot be reached, naming the setting", async () => {
    const err = await startTestHub("postgres", {
      nats: { url: "nats://127.0.0.1:1", stream: unique(), connectTimeoutMs: 1000 },
    }).then(
      async (t) => {
        await t.stop();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: "events.unavailable", field: "nats_url" });
    expect((err as Error).message).toContain("FLOTILLA_NATS_URL");
  });
});

describe("a hub on NATS", () => {
  let t: TestHub;
  let token: string;
  let stream: string;
  let root: string;
  const flaky = { broken: true, calls: new Map<string, number>() };

  beforeAll(async () => {
    stream = unique();
    root = stream.toLowerCase();
    created.push(stream);
    t = await startTestHub("postgres", {
      nats: { url: NATS_URL, stream, subjectRoot: root },
    });
    token = (await bootstrapOwner(t.hub)).token;
    await t.hub.eventsService.addConsumer({
      name: "flaky",
      maxDeliver: 3,
      retryDelayMs: 20,
      ackWaitMs: 2000,
      accepts: (type) => type === "project.renamed",
      handler: async (e) => {
        flaky.calls.set(e.id, (flaky.calls.get(e.id) ?? 0) + 1);
        if (flaky.broken) throw new Error("flaky handler is broken");
      },
    });
  });
  afterAll(async () => {
    await t?.stop();
  });

  it("publishes each event once with Nats-Msg-Id = event id and the context headers, and /ready reports NATS", async () => {
    const traceparent = `00-${randomBytes(16).toString("hex")}-${randomBytes(8).toString("hex")}-01`;
    const a = api(t.hub.url, token, () => ({ traceparent, "x-correlation-id": "corr-nats-1" }));
    await createFixture(a, "pub");
    const { rows } = await t.hub.db.query<{ id: string; type: string }>(
      "SELECT id, type FROM outbox_events WHERE correlation_id = 'corr-nats-1' ORDER BY id",
    );
    expect(rows.length).toBeGreaterThan(0);
    await eventually(async () => {
      const r = await t.hub.db.query("SELECT 1 FROM outbox_events WHERE published_at IS NULL");
      return r.rows.length === 0;
    });
    const jsm = await jetstreamManager(nc);
    // Every outbox row is in the stream exactly once, found by its id.
    const info = await jsm.streams.info(stream);
    const total = (
      await t.hub.db.query<{ n: number }>("SELECT count(*)::int AS n FROM outbox_events")
    ).rows[0]!.n;
    expect(info.state.messages).toBe(total);
    const first = await jsm.streams.getMessage(stream, { seq: info.state.last_seq });
    const id = first!.header.get("Nats-Msg-Id");
    const stored = (
      await t.hub.db.query<{ id: string; organization_id: string; correlation_id: string }>(
        "SELECT id, organization_id, correlation_id FROM outbox_events WHERE id = $1",
        [id],
      )
    ).rows[0]!;
    expect(stored).toBeDefined();
    expect(first!.header.get("tenant-id")).toBe(stored.organization_id);
    expect(first!.header.get("correlation-id")).toBe(stored.correlation_id);
    expect(traceIdOf(first!.header.get("traceparent"))).toBe(traceIdOf(traceparent));
    expect(first!.subject.startsWith(`${root}.${stored.organization_id}.`)).toBe(true);
    const ready = await fetch(`${t.hub.url}/ready`);
    expect(ready.status).toBe(200);
    expect(((await ready.json()) as { nats: { ok: boolean; stream: string } }).nats).toMatchObject({
      ok: true,
      stream,
    });
  });

  it("live subscribers on the replica hear new events through the stream", async () => {
    const heard: string[] = [];
    const off = t.hub.events.subscribe((e) => heard.push(e.id));
    try {
      // The feed starts with the first subscriber; events from then on arrive.
      await eventually(async () => {
        const { project } = await api(t.hub.url, token).projects.createProject({
          name: `Live ${suffix()}`,
        });
        const ids = (
          await t.hub.db.query<{ id: string }>(
            "SELECT id FROM outbox_events WHERE subject_id = $1",
            [project!.id],
          )
        ).rows.map((r) => r.id);
        await new Promise((r) => setTimeout(r, 300));
        return ids.some((id) => heard.includes(id));
      }, 20_000);
    } finally {
      off();
    }
  });

  it("a republished event (same Nats-Msg-Id) is stored once", async () => {
    const before = (await (await jetstreamManager(nc)).streams.info(stream)).state.messages;
    const [e] = (
      await t.hub.db.query<{ id: string }>("SELECT id FROM outbox_events ORDER BY id LIMIT 1")
    ).rows;
    // The relay after a crash between publish and mark: the row is unpublished again.
    await t.hub.db.query("UPDATE outbox_events SET published_at = NULL WHERE id = $1", [e!.id]);
    await t.hub.relay.drainAll();
    const after = await (await jetstreamManager(nc)).streams.info(stream);
    expect(after.state.messages).toBe(before);
  });

  it("the audit projection records every event once, as the system, with the event's correlation", async () => {
    const a = api(t.hub.url, token, () => ({ "x-correlation-id": "corr-audit-1" }));
    await a.projects.createProject({ name: `Audit ${suffix()}` });
    const events = await t.hub.db.query<{ id: string }>(
      "SELECT id FROM outbox_events WHERE correlation_id = 'corr-audit-1'",
    );
    await eventually(async () => {
      const r = await t.hub.db.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM audit_log WHERE actor_type = 'system' AND correlation_id = 'corr-audit-1'",
      );
      return r.rows[0]!.n === events.rows.length;
    });
    // A redelivery of the same events changes nothing.
    for (const e of events.rows) {
      await t.hub.db.query(
        "DELETE FROM event_processed WHERE consumer = 'audit' AND event_id = $1",
        [e.id],
      );
    }
    const jsm = await jetstreamManager(nc);
    const info = await jsm.consumers.info(stream, "audit");
    expect(info.config.max_ack_pending).toBe(16);
    const n = await t.hub.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM audit_log WHERE id = ANY($1::uuid[])",
      [events.rows.map((e) => e.id)],
    );
    expect(n.rows[0]!.n).toBe(events.rows.length);
  });

  it("a poison event is terminated after max_deliver attempts, quarantined with its reason, and a replay after the fix delivers it once", async () => {
    const a = api(t.hub.url, token);
    const { project } = await a.projects.createProject({ name: `Poison ${suffix()}` });
    await a.projects.renameProject({ project: project!.id, name: `Poisoned ${suffix()}` });
    const [renamed] = (
      await t.hub.db.query<{ id: string; organization_id: string }>(
        "SELECT id, organization_id FROM outbox_events WHERE type = 'project.renamed' AND subject_id = $1",
        [project!.id],
      )
    ).rows;
    const caller = {
      organizationId: renamed!.organization_id,
      actor: { type: "user" as const, id: "x" },
    };
    const [q] = (await eventually(
      async () => {
        const list = await t.hub.eventsService.listQuarantined(caller, { consumer: "flaky" });
        return list.length > 0 ? list : undefined;
      },
      20_000,
      "the poison event in quarantine",
    ))!;
    expect(q!).toMatchObject({
      consumer: "flaky",
      stream,
      eventId: renamed!.id,
      eventType: "project.renamed",
      deliveries: 3,
      state: "quarantined",
    });
    expect(q!.reason).toContain("flaky handler is broken");
    expect(q!.payloadRef).toContain(`outbox_events:${renamed!.id}`);
    expect(q!.subject.startsWith(`${root}.${renamed!.organization_id}.project.renamed.`)).toBe(
      true,
    );
    expect(flaky.calls.get(renamed!.id)).toBe(3);

    // Still broken: the replay fails and changes nothing.
    await expect(t.hub.eventsService.replay(caller, q!.id)).rejects.toThrow(/broken/);
    expect(
      (await t.hub.eventsService.listQuarantined(caller, { consumer: "flaky" }))[0]!.state,
    ).toBe("quarantined");

    flaky.broken = false;
    const replayed = await t.hub.eventsService.replay(caller, q!.id);
    expect(replayed.state).toBe("replayed");
    expect(flaky.calls.get(renamed!.id)).toBe(5);
    // A second replay is refused; the effect stays at one success.
    await expect(t.hub.eventsService.replay(caller, q!.id)).rejects.toMatchObject({
      code: "resource.conflict",
    });
    const processed = await t.hub.db.query(
      "SELECT 1 FROM event_processed WHERE consumer = 'flaky' AND event_id = $1",
      [renamed!.id],
    );
    expect(processed.rows).toHaveLength(1);
    // Another tenant cannot see or replay it.
    const other = { organizationId: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", actor: caller.actor };
    expect(await t.hub.eventsService.listQuarantined(other, { includeReplayed: true })).toEqual([]);
    await expect(t.hub.eventsService.replay(other, q!.id)).rejects.toMatchObject({
      code: "resource.not_found",
    });
    // The outcomes are counted in /metrics.
    const metrics = await (await fetch(`${t.hub.url}/metrics`)).text();
    expect(metrics).toMatch(
      /flotilla_events_consumed_total\{consumer="flaky",outcome="quarantined"\} 1/,
    );
    expect(metrics).toMatch(
      /flotilla_events_consumed_total\{consumer="flaky",outcome="retried"\} 2/,
    );
    expect(metrics).toMatch(/flotilla_events_published_total [1-9]/);
    expect(metrics).toMatch(/flotilla_nats_connected 1/);
  });

  it("a handler running longer than ack_wait keeps its message (working()) and takes effect once", async () => {
    const seen: Array<{ id: string; deliveries: number }> = [];
    await t.hub.eventsService.addConsumer({
      name: "slow",
      ackWaitMs: 1000,
      accepts: (type) => type === "project.created",
      handler: async (e, { deliveryCount }) => {
        seen.push({ id: e.id, deliveries: deliveryCount });
        await new Promise((r) => setTimeout(r, 3000));
      },
    });
    const { project } = await api(t.hub.url, token).projects.createProject({
      name: `Slow ${suffix()}`,
    });
    const [created] = (
      await t.hub.db.query<{ id: string }>(
        "SELECT id FROM outbox_events WHERE type = 'project.created' AND subject_id = $1",
        [project!.id],
      )
    ).rows;
    await eventually(async () => {
      const r = await t.hub.db.query(
        "SELECT 1 FROM event_processed WHERE consumer = 'slow' AND event_id = $1",
        [created!.id],
      );
      return r.rows.length === 1;
    }, 20_000);
    // Give a redelivery (ack_wait 1 s) time to show up if working() did not hold the message.
    await new Promise((r) => setTimeout(r, 1500));
    expect(seen.filter((x) => x.id === created!.id)).toEqual([{ id: created!.id, deliveries: 1 }]);
    // A redelivery would be a no-op (the processed row), but it would show as a second handling.
    const handled = t.logs.filter(
      (r) => r.msg === "event handled" && r.consumer === "slow" && r.event_id === created!.id,
    );
    expect(handled.map((r) => [r.deliveries, r.duplicate])).toEqual([[1, false]]);
  });

  it("a shared consumer handles each event on one replica; a per-replica one on every replica", async () => {
    const handled = { shared: [] as string[], fanout: new Map<string, string[]>() };
    const replicas = ["replica-a", "replica-b"].map(
      (instanceId) =>
        new EventsService(t.hub.db, { eventById: async () => undefined }, t.hub.nats, {
          logger: createLogger({ level: "silent" }),
          instanceId,
        }),
    );
    for (const [i, r] of replicas.entries()) {
      await r.addConsumer({
        name: "shared-probe",
        accepts: (type) => type === "project.created",
        handler: async (e) => {
          handled.shared.push(e.id);
        },
      });
      await r.addConsumer({
        name: "fanout-probe",
        scope: "replica",
        accepts: (type) => type === "project.created",
        handler: async (e) => {
          const list = handled.fanout.get(e.id) ?? [];
          list.push(`replica-${i}`);
          handled.fanout.set(e.id, list);
        },
      });
    }
    try {
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) {
        const { project } = await api(t.hub.url, token).projects.createProject({
          name: `Fan ${suffix()}`,
        });
        const r = await t.hub.db.query<{ id: string }>(
          "SELECT id FROM outbox_events WHERE type = 'project.created' AND subject_id = $1",
          [project!.id],
        );
        ids.push(r.rows[0]!.id);
      }
      await eventually(async () =>
        ids.every((id) => handled.shared.includes(id) && handled.fanout.get(id)?.length === 2),
      );
      for (const id of ids) {
        expect(handled.shared.filter((x) => x === id)).toHaveLength(1);
        expect(handled.fanout.get(id)!.sort()).toEqual(["replica-0", "replica-1"]);
      }
    } finally {
      await Promise.all(replicas.map((r) => r.stop()));
    }
  });

  it("prunes processed-event rows only once the stream can no longer redeliver them", async () => {
    const old = "0190a1b2-c3d4-7e5f-8a9b-000000000001";
    const recent = "0190a1b2-c3d4-7e5f-8a9b-000000000002";
    await t.hub.db.query(
      `INSERT INTO event_processed (consumer, event_id, processed_at)
       VALUES ('prune', $1, now() - interval '9 days'), ('prune', $2, now() - interval '6 days')`,
      [old, recent],
    );
    expect(await t.hub.eventsService.pruneProcessed()).toBeGreaterThanOrEqual(1);
    const left = await t.hub.db.query<{ event_id: string }>(
      "SELECT event_id FROM event_processed WHERE consumer = 'prune'",
    );
    expect(left.rows.map((r) => r.event_id)).toEqual([recent]);
  });

  it("rejects bad quarantine requests with the field named", async () => {
    const orgId = (await api(t.hub.url, token).identity.whoAmI({})).organization!.id;
    const caller = { organizationId: orgId, actor: { type: "user" as const, id: "x" } };
    for (const [o, field] of [
      [{ limit: 501 }, "limit"],
      [{ limit: -1 }, "limit"],
      [{ limit: 1.5 }, "limit"],
      [{ consumer: "c".repeat(65) }, "consumer"],
    ] as const) {
      await expect(t.hub.eventsService.listQuarantined(caller, o)).rejects.toMatchObject({
        code: "validation.failed",
        field,
      });
    }
    await expect(t.hub.eventsService.replay(caller, "not-a-uuid")).rejects.toMatchObject({
      code: "validation.failed",
      field: "id",
    });
    await expect(
      t.hub.eventsService.replay(caller, "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"),
    ).rejects.toMatchObject({
      code: "resource.not_found",
    });
  });

  it("an undecodable message is terminated at once and quarantined with the reason", async () => {
    const orgId = (await api(t.hub.url, token).identity.whoAmI({})).organization!.id;
    const h = headers();
    h.set("tenant-id", orgId);
    const js = t.hub.nats!.js;
    const ack = await js.publish(`${root}.${orgId}.project.garbage.x`, Buffer.from("{not json"), {
      headers: h,
    });
    const caller = { organizationId: orgId, actor: { type: "user" as const, id: "x" } };
    const list = (await eventually(async () => {
      const l = (await t.hub.eventsService.listQuarantined(caller, { consumer: "audit" })).filter(
        (q) => q.streamSeq === ack.seq,
      );
      return l.length > 0 ? l : undefined;
    }))!;
    expect(list[0]!).toMatchObject({
      eventId: null,
      deliveries: 1,
      payloadRef: `stream:${stream}/${ack.seq}`,
    });
    expect(list[0]!.reason).toMatch(/^undecodable/);
    await expect(t.hub.eventsService.replay(caller, list[0]!.id)).rejects.toMatchObject({
      code: "resource.conflict",
    });
  });
});
