// The outbox (doctrine 2): every change's event is written in the change's own transaction, so a
// failure after the business write leaves neither; the relay publishes each committed event,
// marks it published, and subscribers hear it exactly once, with the request's correlation id
// and traceparent.
import { randomBytes } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigKind, ConfigScope } from "../../src/gen/flotilla/v1/config_pb.js";
import { Visibility } from "../../src/gen/flotilla/v1/services_pb.js";
import { nextEventId } from "../../src/hub/outbox/events.js";
import type { StoredEvent } from "../../src/hub/outbox/index.js";
import type { Queryable } from "../../src/store/index.js";
import {
  type Api,
  api,
  createFixture,
  eventually,
  execSpec,
  expectError,
  rejection,
  suffix,
} from "../support/core.js";
import { bootstrapOwner, startTestHub, type TestHub } from "../support/hub.js";

const SVC = ConfigScope.SERVICE;

/**
 * Makes every insert into `table` whose `column` equals `value` raise, for the duration of fn:
 * a failure injected after the business write, inside the same transaction.
 */
async function failingInsert<T>(
  db: Queryable,
  table: "outbox_events" | "audit_log",
  column: "type" | "action",
  value: string,
  fn: () => Promise<T>,
): Promise<T> {
  const name = `flotilla_test_fail_${randomBytes(4).toString("hex")}`;
  await db.query(
    `CREATE FUNCTION ${name}() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN RAISE EXCEPTION 'injected failure on % %', TG_TABLE_NAME, NEW.${column}; END $$`,
  );
  await db.query(
    `CREATE TRIGGER ${name} BEFORE INSERT ON ${table} FOR EACH ROW
     WHEN (NEW.${column} = '${value}') EXECUTE FUNCTION ${name}()`,
  );
  try {
    return await fn();
  } finally {
    await db.query(`DROP TRIGGER ${name} ON ${table}`);
    await db.query(`DROP FUNCTION ${name}()`);
  }
}

const count = async (db: Queryable, sql: string, params: unknown[] = []) =>
  (await db.query<{ n: number }>(sql, params)).rows[0]!.n;

describe("event ids", () => {
  it("increase strictly within one millisecond, past the 12-bit counter, and stay UUIDv7", () => {
    const now = Date.now();
    const ids = Array.from({ length: 5_000 }, () => nextEventId(now));
    for (let i = 1; i < ids.length; i++) expect(ids[i]! > ids[i - 1]!, ids[i]).toBe(true);
    for (const id of [ids[0]!, ids[4_999]!])
      expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    // A clock that steps back does not make ids go back either.
    expect(nextEventId(now - 10_000) > ids[4_999]!).toBe(true);
  });
});

for (const engine of ["pglite", "postgres"] as const) {
  describe(`outbox [${engine}]`, () => {
    let t: TestHub;
    let token: string;
    let a: Api;
    /** Headers the next calls send (set per test). */
    let headers: Record<string, string> = {};

    beforeAll(async () => {
      t = await startTestHub(engine);
      token = (await bootstrapOwner(t.hub)).token;
      a = api(t.hub.url, token, () => headers);
    });
    afterAll(async () => {
      await t?.stop();
    });

    it("CreateProject fails whole when its event cannot be written: no project, environment, audit row or event; it succeeds once the fault is gone", async () => {
      const slug = `atomic-${suffix()}`;
      const rows = async () => ({
        projects: await count(t.hub.db, "SELECT count(*)::int AS n FROM projects WHERE slug = $1", [
          slug,
        ]),
        environments: await count(
          t.hub.db,
          "SELECT count(*)::int AS n FROM environments e JOIN projects p ON p.id = e.project_id WHERE p.slug = $1",
          [slug],
        ),
        events: await count(
          t.hub.db,
          `SELECT count(*)::int AS n FROM outbox_events WHERE payload->>'slug' = $1
           OR payload->>'project_id' IN (SELECT id::text FROM projects WHERE slug = $1)`,
          [slug],
        ),
        audit: await count(
          t.hub.db,
          "SELECT count(*)::int AS n FROM audit_log WHERE details->>'slug' = $1",
          [slug],
        ),
      });
      const err = await failingInsert(t.hub.db, "outbox_events", "type", "project.created", () =>
        rejection(a.projects.createProject({ name: "Atomic", slug })),
      );
      expect(err.code).toBe(Code.Internal);
      expect(await rows()).toEqual({ projects: 0, environments: 0, events: 0, audit: 0 });

      const ok = await a.projects.createProject({ name: "Atomic", slug });
      expect(ok.project!.slug).toBe(slug);
      expect(await rows()).toEqual({ projects: 1, environments: 1, events: 2, audit: 1 });
    });

    it("Deploy fails whole when its event cannot be written: no deployment row and the desired deployment is unchanged", async () => {
      const f = await createFixture(a, "atomic-deploy");
      const { deployment: d1 } = await a.services.deploy({ serviceId: f.serviceId });
      const state = async () => ({
        deployments: await count(
          t.hub.db,
          "SELECT count(*)::int AS n FROM deployments WHERE service_id = $1",
          [f.serviceId],
        ),
        events: await count(
          t.hub.db,
          "SELECT count(*)::int AS n FROM outbox_events WHERE type = 'deployment.created' AND payload->>'service_id' = $1",
          [f.serviceId],
        ),
        desired: (await a.services.getService({ serviceId: f.serviceId })).service!
          .desiredDeploymentId,
      });
      await failingInsert(t.hub.db, "outbox_events", "type", "deployment.created", async () => {
        await rejection(a.services.deploy({ serviceId: f.serviceId }));
        await rejection(a.services.rollback({ serviceId: f.serviceId, deploymentId: d1!.id }));
      });
      expect(await state()).toEqual({ deployments: 1, events: 1, desired: d1!.id });

      const { deployment: d2 } = await a.services.deploy({ serviceId: f.serviceId });
      expect(d2!.number).toBe(2);
      expect(await state()).toEqual({ deployments: 2, events: 2, desired: d2!.id });
    });

    it("SetConfig fails whole when its event cannot be written: no entry and the config version is unchanged", async () => {
      const f = await createFixture(a, "atomic-config");
      const set = () =>
        a.config.setConfig({
          target: { scope: SVC, id: f.serviceId },
          key: "FEATURE",
          value: "on",
          kind: ConfigKind.VARIABLE,
        });
      const version = async () =>
        (await a.services.getService({ serviceId: f.serviceId })).effectiveConfigVersion;
      const v0 = await version();
      await failingInsert(t.hub.db, "outbox_events", "type", "config.changed", () =>
        rejection(set()),
      );
      expect(
        (await a.config.listConfig({ target: { scope: SVC, id: f.serviceId } })).entries,
      ).toEqual([]);
      expect(await version()).toBe(v0);
      expect(
        await count(t.hub.db, "SELECT count(*)::int AS n FROM config_scopes WHERE scope_id = $1", [
          f.serviceId,
        ]),
      ).toBe(0);

      await set();
      expect(
        (await a.config.listConfig({ target: { scope: SVC, id: f.serviceId } })).entries.map(
          (e) => e.key,
        ),
      ).toEqual(["FEATURE"]);
      expect(await version()).not.toBe(v0);
    });

    it("CreateService and RevealSecret fail whole when their audit row cannot be written: no service, no event, no revealed value", async () => {
      const f = await createFixture(a, "atomic-audit");
      const create = () =>
        a.services.createService({
          environmentId: f.productionId,
          name: "Audited",
          slug: "audited",
          visibility: Visibility.PRIVATE,
          spec: execSpec(),
        });
      await failingInsert(t.hub.db, "audit_log", "action", "service.create", () =>
        rejection(create()),
      );
      const services = await a.services.listServices({ environmentId: f.productionId });
      expect(services.services.map((s) => s.slug)).toEqual(["web"]);
      expect(
        await count(
          t.hub.db,
          "SELECT count(*)::int AS n FROM outbox_events WHERE type = 'service.created' AND payload->>'slug' = 'audited'",
        ),
      ).toBe(0);
      const { service } = await create();
      expect(service!.slug).toBe("audited");

      await a.config.setConfig({
        target: { scope: SVC, id: f.serviceId },
        key: "API_KEY",
        value: "sealed-value",
        kind: ConfigKind.SECRET,
      });
      const reveal = () =>
        a.config.revealSecret({ target: { scope: SVC, id: f.serviceId }, key: "API_KEY" });
      const err = await failingInsert(t.hub.db, "audit_log", "action", "config.reveal", () =>
        rejection(reveal()),
      );
      expect(err.message).not.toContain("sealed-value");
      expect((await reveal()).value).toBe("sealed-value");
    });

    it("the relay marks every committed event published and each subscriber hears each one exactly once", async () => {
      const heard: StoredEvent[] = [];
      const unsubscribe = t.hub.events.subscribe((e) => heard.push(e));
      try {
        const { rows: mark } = await t.hub.db.query<{ id: string | null }>(
          "SELECT max(id::text) AS id FROM outbox_events",
        );
        const from = mark[0]!.id ?? "00000000-0000-0000-0000-000000000000";
        // Ten projects with a deployed service each, in parallel, while the test drains the relay concurrently with itself.
        const changes = Array.from({ length: 10 }, async (_, i) => {
          const f = await createFixture(a, `relay-${i}`);
          await a.services.deploy({ serviceId: f.serviceId });
        });
        const drains = Array.from({ length: 5 }, () => t.hub.relay.drainAll());
        await Promise.all([...changes, ...drains]);
        await t.hub.relay.drainAll();

        const expected = async () =>
          (
            await t.hub.db.query<{ id: string; published_at: Date | null }>(
              "SELECT id, published_at FROM outbox_events WHERE id > $1::uuid ORDER BY id",
              [from],
            )
          ).rows;
        // project.created + environment.created + service.created + deployment.created, ten times.
        expect((await expected()).length).toBe(40);
        await eventually(
          async () => (await expected()).every((r) => r.published_at !== null),
          10_000,
          "every event published",
        );
        const ids = (await expected()).map((r) => r.id);
        await eventually(
          async () => ids.every((id) => heard.some((e) => e.id === id)),
          10_000,
          "every event heard",
        );
        // More relay passes and a poll interval later, nothing is heard a second time.
        await t.hub.relay.drainAll();
        await new Promise((r) => setTimeout(r, 1_500));
        const mine = heard.filter((e) => ids.includes(e.id)).map((e) => e.id);
        expect(mine.sort()).toEqual([...ids].sort());
        expect(heard.filter((e) => e.id > from).length).toBe(ids.length);
      } finally {
        unsubscribe();
      }
    });

    it("events carry the request's correlation id and traceparent, in the row, on the bus and in ListEvents", async () => {
      const correlation = `core-outbox-${randomBytes(6).toString("hex")}`;
      const traceparent = `00-${randomBytes(16).toString("hex")}-${randomBytes(8).toString("hex")}-01`;
      const heard: StoredEvent[] = [];
      const unsubscribe = t.hub.events.subscribe((e) => heard.push(e));
      let projectId: string;
      try {
        headers = { "x-correlation-id": correlation, traceparent };
        const { project } = await a.projects.createProject({ name: `Traced ${suffix()}` });
        projectId = project!.id;
        headers = {};
        const { rows } = await t.hub.db.query<{
          type: string;
          correlation_id: string;
          traceparent: string;
        }>(
          "SELECT type, correlation_id, traceparent FROM outbox_events WHERE correlation_id = $1 ORDER BY id",
          [correlation],
        );
        // In id order: the project before its production environment.
        expect(rows).toEqual([
          { type: "project.created", correlation_id: correlation, traceparent },
          { type: "environment.created", correlation_id: correlation, traceparent },
        ]);
        const onBus = await eventually(
          async () => {
            const e = heard.find((x) => x.subjectId === projectId);
            return e;
          },
          10_000,
          "the event on the bus",
        );
        expect(onBus).toMatchObject({ correlationId: correlation, traceparent });
        const listed = (await a.services.listEvents({ limit: 500 })).events.find(
          (e) => e.subjectId === projectId,
        );
        expect(listed!.correlationId).toBe(correlation);
        const { rows: audit } = await t.hub.db.query<{
          correlation_id: string;
          traceparent: string;
        }>("SELECT correlation_id, traceparent FROM audit_log WHERE target_id = $1", [projectId]);
        expect(audit).toEqual([{ correlation_id: correlation, traceparent }]);

        // An invalid traceparent is replaced by a valid new one, never stored as sent.
        headers = { traceparent: `ff-${"0".repeat(32)}-${"0".repeat(16)}-01` };
        const { project: other } = await a.projects.createProject({ name: `Untraced ${suffix()}` });
        headers = {};
        const { rows: replaced } = await t.hub.db.query<{ traceparent: string }>(
          "SELECT traceparent FROM outbox_events WHERE subject_id = $1",
          [other!.id],
        );
        expect(replaced[0]!.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/);
        expect(replaced[0]!.traceparent).not.toContain("0".repeat(32));
      } finally {
        headers = {};
        unsubscribe();
      }
    });

    it("the events of one transaction keep their write order by id (project before its environment)", async () => {
      const projectIds: string[] = [];
      for (let i = 0; i < 20; i++) {
        const { project } = await a.projects.createProject({ name: `Ordered ${suffix()}` });
        projectIds.push(project!.id);
      }
      const { rows } = await t.hub.db.query<{ id: string; type: string; project_id: string }>(
        `SELECT id, type, coalesce(payload->>'project_id', subject_id) AS project_id
         FROM outbox_events WHERE subject_id = ANY($1) OR payload->>'project_id' = ANY($1)
         ORDER BY id`,
        [projectIds],
      );
      for (const id of projectIds) {
        expect(rows.filter((r) => r.project_id === id).map((r) => r.type)).toEqual([
          "project.created",
          "environment.created",
        ]);
      }
    });

    it("a rejected request writes no event", async () => {
      const before = await count(t.hub.db, "SELECT count(*)::int AS n FROM outbox_events");
      await expectError(
        a.projects.createProject({ name: "Bad", slug: "Bad" }),
        "validation.failed",
        "slug",
      );
      expect(await count(t.hub.db, "SELECT count(*)::int AS n FROM outbox_events")).toBe(before);
    });
  });
}
