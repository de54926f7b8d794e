// Managed databases through the API on both engines, with a server that never connects (its
// agent's part is faked by completing its dispatch rows, as an agent's result would): creation
// from the catalogue in one transaction, credentials as config with the password sealed and
// silent, never PUBLIC (API and database), connection info by role, backups settling from their
// jobs, restore, schedules and retention, and the bad-input set (each refused, nothing written).
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigKind, ConfigScope } from "../../src/gen/flotilla/v1/config_pb.js";
import { DatabasesService } from "../../src/gen/flotilla/v1/databases_pb.js";
import { Role } from "../../src/gen/flotilla/v1/identity_pb.js";
import { ServerService } from "../../src/gen/flotilla/v1/servers_pb.js";
import { Driver, Visibility } from "../../src/gen/flotilla/v1/services_pb.js";
import { addMember, api, expectError, secondTenant, suffix, tableState } from "../support/core.js";
import { ENGINES } from "../support/engines.js";
import { listTables } from "../support/fixtures.js";
import { bootstrapOwner, startTestHub, type TestHub } from "../support/hub.js";

function databasesApi(baseUrl: string, token: string) {
  const transport = createConnectTransport({
    baseUrl,
    httpVersion: "1.1",
    interceptors: [
      (next) => async (req) => {
        req.header.set("authorization", `Bearer ${token}`);
        return next(req);
      },
    ],
  });
  return {
    databases: createClient(DatabasesService, transport),
    servers: createClient(ServerService, transport),
  };
}

/** Enrols a server through the join endpoint; its agent never connects. */
async function enrol(baseUrl: string, token: string): Promise<string> {
  const { servers } = databasesApi(baseUrl, token);
  const join = await servers.createJoinToken({ name: `db-${suffix()}` });
  const res = await fetch(`${baseUrl}/agent/v1/join`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token: join.token }),
  });
  return ((await res.json()) as { server_id: string }).server_id;
}

for (const engine of ENGINES) {
  describe(`managed databases [${engine}]`, () => {
    let t: TestHub;
    let owner: string;
    let environmentId: string;
    let serverId: string;
    const all = () => api(t.hub.url, owner);
    const dbs = () => databasesApi(t.hub.url, owner).databases;
    /** Every table's rows as JSON text: where a plaintext password must never be. */
    const everything = async () => {
      const out: string[] = [];
      for (const table of await listTables(t.hub.db)) {
        const { rows } = await t.hub.db.query<{ j: string }>(
          `SELECT row_to_json(x)::text AS j FROM ${table} x`,
        );
        out.push(...rows.map((r) => r.j));
      }
      return out.join("\n");
    };
    /** The core tables plus this feature's and the dispatches: a refusal changes none of them. */
    const state = async () => {
      const extra: Record<string, string> = {};
      for (const table of ["dispatches", "database_backups", "database_backup_schedules"]) {
        const { rows } = await t.hub.db.query<{ d: string }>(
          `SELECT count(*)::text || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') AS d FROM ${table} x`,
        );
        extra[table] = rows[0]!.d;
      }
      return { ...(await tableState(t.hub.db)), ...extra };
    };
    /** Completes a job dispatch as its agent would (the result frame's path). */
    const finishJob = async (id: string, ok: boolean, result: unknown, error = "") => {
      expect(await t.hub.dispatches.claim(id, "test-hub")).not.toBeNull();
      expect(
        ok
          ? await t.hub.dispatches.complete(id, "test-hub", result)
          : await t.hub.dispatches.fail(id, "test-hub", error, result),
      ).toBe(true);
    };
    const createDb = (name: string, extra: Record<string, unknown> = {}) =>
      dbs().createDatabaseService({
        environmentId,
        name,
        templateId: "postgres16",
        serverId,
        deployNow: true,
        ...extra,
      });

    beforeAll(async () => {
      t = await startTestHub(engine, { databaseSweepIntervalMs: 3_600_000 });
      owner = (await bootstrapOwner(t.hub)).token;
      serverId = await enrol(t.hub.url, owner);
      const { production } = await all().projects.createProject({ name: `Data ${suffix()}` });
      environmentId = production!.id;
    }, 60_000);

    afterAll(async () => {
      await t?.stop();
    });

    it("creates a PRIVATE postgres16 database with its config and first deployment in one transaction, audited without the password", async () => {
      const r = await createDb("Orders");
      const s = r.service!;
      expect(s.kind).toBe("database");
      expect(s.templateId).toBe("postgres16");
      expect(s.visibility).toBe(Visibility.PRIVATE);
      expect(s.spec?.driver).toBe(Driver.EXEC);
      expect(s.spec?.exec?.port).toBe(5432);
      expect(s.spec?.volumes.map((v) => v.name)).toEqual(["data"]);
      expect(r.deploymentId).toBe(s.desiredDeploymentId);
      // The endpoint is the agent's to report: no URI before it does.
      expect(r.connectionUri).toBe("");
      const { rows: stored } = await t.hub.db.query<{ spec: { template: string } }>(
        "SELECT spec FROM services WHERE id = $1",
        [s.id],
      );
      expect(stored[0]!.spec.template).toBe("postgres16");

      const config = await all().config.listConfig({
        target: { scope: ConfigScope.SERVICE, id: s.id },
      });
      const byKey = Object.fromEntries(config.entries.map((e) => [e.key, e]));
      expect(byKey.POSTGRES_USER?.value).toBe("orders");
      expect(byKey.POSTGRES_DB?.value).toBe("orders");
      expect(byKey.POSTGRES_PASSWORD?.kind).toBe(ConfigKind.SECRET);
      expect(byKey.POSTGRES_PASSWORD?.value).toBe("");
      const password = await all().config.revealSecret({
        target: { scope: ConfigScope.SERVICE, id: s.id },
        key: "POSTGRES_PASSWORD",
      });
      expect(password.value).toMatch(/^[A-Za-z0-9_-]{32}$/);

      const deployments = await all().services.listDeployments({ serviceId: s.id });
      expect(deployments.deployments.map((d) => d.reason)).toEqual(["create"]);
      const { rows: dispatches } = await t.hub.db.query<{ op: string; args: unknown }>(
        "SELECT op, args FROM dispatches WHERE service_id = $1",
        [s.id],
      );
      expect(dispatches.map((d) => d.op)).toEqual(["deploy"]);

      const { rows: audit } = await t.hub.db.query<{ details: Record<string, unknown> }>(
        "SELECT details FROM audit_log WHERE action = 'service.create_database' AND target_id = $1",
        [s.id],
      );
      expect(audit).toHaveLength(1);
      expect(audit[0]!.details).toMatchObject({ template_id: "postgres16", user: "orders" });
      // Sealed at rest, and in no row, event, audit detail or dispatch in plaintext; nor in a log.
      expect(await everything()).not.toContain(password.value);
      expect(JSON.stringify(t.logs)).not.toContain(password.value);
    });

    it("service row, config and first deployment commit together: a failure at the last write leaves none of them", async () => {
      // A trigger that refuses the deployment row: the service and its credentials were already
      // written in the same transaction, and must be gone with it.
      await t.hub.db.tx(async (tx) => {
        await tx.query(
          `CREATE FUNCTION test_refuse_deployment() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'refused by the test'; END $$`,
        );
        await tx.query(
          `CREATE TRIGGER test_refuse_deployment BEFORE INSERT ON deployments
           FOR EACH ROW EXECUTE FUNCTION test_refuse_deployment()`,
        );
      });
      try {
        const before = await state();
        await expectError(createDb(`atomic-${suffix()}`), "internal");
        expect(await state()).toEqual(before);
      } finally {
        await t.hub.db.tx(async (tx) => {
          await tx.query("DROP TRIGGER test_refuse_deployment ON deployments");
          await tx.query("DROP FUNCTION test_refuse_deployment()");
        });
      }
    });

    it("two databases get different passwords from the CSPRNG", async () => {
      const reveal = async (id: string) =>
        (
          await all().config.revealSecret({
            target: { scope: ConfigScope.SERVICE, id },
            key: "POSTGRES_PASSWORD",
          })
        ).value;
      const a = await createDb(`pw-a-${suffix()}`);
      const b = await createDb(`pw-b-${suffix()}`);
      expect(await reveal(a.service!.id)).not.toBe(await reveal(b.service!.id));
    });

    it("connection info comes from the observed endpoint; the password only for config.reveal, and revealing it is audited", async () => {
      const s = (await createDb(`conn-${suffix()}`)).service!;
      const before = await dbs().getConnectionInfo({ serviceId: s.id });
      expect(before.uri).toBe("");
      expect(before.user).toBe(s.slug.replace(/-/g, "_"));
      // The agent-report path (the only writer of observed state) reports the endpoint.
      await t.hub.services.recordObservation(await orgOf(), {
        serverId,
        serviceId: s.id,
        deploymentId: s.desiredDeploymentId,
        status: "running",
        endpoint: "127.0.0.1:45678",
      });
      const info = await dbs().getConnectionInfo({ serviceId: s.id });
      expect(info).toMatchObject({ host: "127.0.0.1", port: 45678, passwordIncluded: true });
      expect(info.uri).toBe(
        `postgresql://${info.user}:${info.password}@127.0.0.1:45678/${info.database}`,
      );
      const { rows } = await t.hub.db.query(
        "SELECT 1 FROM audit_log WHERE action = 'config.reveal' AND target_id = $1",
        [s.id],
      );
      expect(rows.length).toBeGreaterThan(0);

      for (const role of [Role.VIEWER, Role.DEVELOPER]) {
        const member = await addMember(t.hub, owner, role);
        const seen = await databasesApi(t.hub.url, member.token).databases.getConnectionInfo({
          serviceId: s.id,
        });
        expect(seen.passwordIncluded).toBe(false);
        expect(seen.password).toBe("");
        expect(seen.uri).toBe(`postgresql://${info.user}@127.0.0.1:45678/${info.database}`);
        expect(seen.uri).not.toContain(info.password);
      }
    });

    it("under the docker driver the image runs it and it is reached at {slug}:5432 on the environment network", async () => {
      const r = await createDb(`dock-${suffix()}`, { driver: Driver.DOCKER });
      const s = r.service!;
      expect(s.spec?.driver).toBe(Driver.DOCKER);
      expect(s.spec?.docker).toMatchObject({ image: "postgres:16-alpine", port: 5432 });
      expect(s.spec?.volumes).toEqual([
        expect.objectContaining({ name: "data", mountPath: "/var/lib/postgresql/data" }),
      ]);
      // Known at once: the slug is its name on the environment network.
      expect(r.connectionUri).toBe(
        `postgresql://${s.slug.replace(/-/g, "_")}@${s.slug}:5432/${s.slug.replace(/-/g, "_")}`,
      );
    });

    const orgOf = async () => (await all().identity.whoAmI({})).organization!.id;

    it("a database can never be made PUBLIC: the API refuses it, and so does the database itself", async () => {
      const s = (await createDb(`priv-${suffix()}`)).service!;
      const before = await state();
      await expectError(
        all().services.updateService({
          serviceId: s.id,
          name: s.name,
          visibility: Visibility.PUBLIC,
          spec: s.spec,
        }),
        "validation.failed",
        "visibility",
      );
      // Its spec is the template's: a changed one is refused too.
      await expectError(
        all().services.updateService({
          serviceId: s.id,
          name: s.name,
          visibility: Visibility.PRIVATE,
          spec: { driver: Driver.EXEC, exec: { ...s.spec!.exec!, command: "/bin/sh" } },
        }),
        "resource.conflict",
        "spec",
      );
      expect(await state()).toEqual(before);
      // The same spec (what `services update --name` sends) is accepted and keeps the template.
      await all().services.updateService({
        serviceId: s.id,
        name: "Renamed",
        visibility: Visibility.PRIVATE,
        spec: s.spec,
      });
      const { rows } = await t.hub.db.query<{ spec: { template?: string } }>(
        "SELECT spec FROM services WHERE id = $1",
        [s.id],
      );
      expect(rows[0]!.spec.template).toBe("postgres16");

      // Straight at the database, as any writer that skipped the API would.
      const refused = async (sql: string, params: unknown[]) => {
        const err = await t.hub.db.query(sql, params).then(
          () => null,
          (e: { code?: string }) => e,
        );
        expect(err?.code, sql).toBe("23514");
      };
      await refused("UPDATE services SET visibility = 'PUBLIC' WHERE id = $1", [s.id]);
      // Turning it into an app first (then public) is refused: kind and template are fixed.
      await refused("UPDATE services SET kind = 'app', template_id = NULL WHERE id = $1", [s.id]);
      await refused(
        `INSERT INTO services (id, organization_id, project_id, environment_id, slug, name, kind, template_id, visibility, spec)
         SELECT gen_random_uuid(), organization_id, project_id, environment_id, 'public-db', 'x', 'database', 'postgres16', 'PUBLIC', spec
         FROM services WHERE id = $1`,
        [s.id],
      );
      await refused(
        `INSERT INTO services (id, organization_id, project_id, environment_id, slug, name, kind, template_id, visibility, spec)
         SELECT gen_random_uuid(), organization_id, project_id, environment_id, 'no-template', 'x', 'database', NULL, 'PRIVATE', spec
         FROM services WHERE id = $1`,
        [s.id],
      );
      const { rows: after } = await t.hub.db.query<{ visibility: string; kind: string }>(
        "SELECT visibility, kind FROM services WHERE id = $1",
        [s.id],
      );
      expect(after[0]).toEqual({ visibility: "PRIVATE", kind: "database" });
    });

    describe("bad input: a typed error, and nothing written", () => {
      it.each([
        ["an unknown template", { templateId: "mysql8" }, "validation.failed", "template_id"],
        ["no template", { templateId: "" }, "validation.failed", "template_id"],
        ["an empty name", { name: "  " }, "validation.failed", "name"],
        ["a name of 101 characters", { name: "x".repeat(101) }, "validation.failed", "name"],
        ["a malformed slug", { slug: "Not A Slug" }, "validation.failed", "slug"],
        ["a malformed server id", { serverId: "srv-1" }, "validation.failed", "server_id"],
        ["an unknown driver", { driver: 7 }, "validation.failed", "driver"],
        [
          "a server that does not exist",
          { serverId: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b" },
          "resource.not_found",
          undefined,
        ],
        [
          "an environment that does not exist",
          { environmentId: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b" },
          "resource.not_found",
          undefined,
        ],
      ])("%s", async (_what, change, code, field) => {
        const before = await state();
        await expectError(createDb(`bad-${suffix()}`, change), code, field);
        expect(await state()).toEqual(before);
      });

      it("a duplicate name in the environment", async () => {
        const name = `dup-${suffix()}`;
        await createDb(name);
        const before = await state();
        await expectError(createDb(name), "resource.already_exists", "slug");
        expect(await state()).toEqual(before);
      });

      it("another tenant's server or environment answers not-found", async () => {
        const b = await secondTenant(t.hub, owner);
        const foreignServer = await enrol(t.hub.url, b.token);
        const before = await state();
        await expectError(
          createDb(`foreign-${suffix()}`, { serverId: foreignServer }),
          "resource.not_found",
        );
        // B naming A's environment.
        await expectError(
          databasesApi(t.hub.url, b.token).databases.createDatabaseService({
            environmentId,
            name: "stolen",
            templateId: "postgres16",
            serverId: foreignServer,
          }),
          "resource.not_found",
        );
        expect(await state()).toEqual(before);
      });

      it("developers and viewers may not create databases (databases.manage), and their refusal writes nothing", async () => {
        for (const role of [Role.DEVELOPER, Role.VIEWER]) {
          const member = await addMember(t.hub, owner, role);
          const before = await state();
          await expectError(
            databasesApi(t.hub.url, member.token).databases.createDatabaseService({
              environmentId,
              name: `denied-${suffix()}`,
              templateId: "postgres16",
              serverId,
              deployNow: true,
            }),
            "auth.permission_denied",
          );
          expect(await state()).toEqual(before);
        }
      });

      it("database RPCs on an app service, or on unknown ids, are refused", async () => {
        const { service: app } = await all().services.createService({
          environmentId,
          name: `app-${suffix()}`,
          visibility: Visibility.PRIVATE,
          spec: { driver: Driver.EXEC, exec: { command: "node", args: [], port: 3000 } },
          serverId,
        });
        await expectError(
          dbs().createBackup({ serviceId: app!.id }),
          "resource.conflict",
          "service_id",
        );
        await expectError(
          dbs().getConnectionInfo({ serviceId: app!.id }),
          "resource.conflict",
          "service_id",
        );
        await expectError(
          dbs().getBackup({ backupId: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b" }),
          "resource.not_found",
        );
        await expectError(
          dbs().listBackups({ serviceId: "nope" }),
          "validation.failed",
          "service_id",
        );
      });
    });

    it("a backup is a job on the database's server; it settles done with size and checksum, or failed with the job's reason", async () => {
      const s = (await createDb(`bk-${suffix()}`)).service!;
      const { backup } = await dbs().createBackup({ serviceId: s.id });
      expect(backup).toMatchObject({ state: "pending", origin: "manual", serverId });
      const { rows } = await t.hub.db.query<{ dispatch_id: string }>(
        "SELECT dispatch_id FROM database_backups WHERE id = $1",
        [backup!.id],
      );
      const jobId = rows[0]!.dispatch_id;
      const { rows: job } = await t.hub.db.query<{ op: string; args: Record<string, unknown> }>(
        "SELECT op, args FROM dispatches WHERE id = $1",
        [jobId],
      );
      expect(job[0]!.op).toBe("job");
      expect(job[0]!.args).toMatchObject({ task: "postgres.backup", backup_id: backup!.id });
      // Secrets never live in a dispatch row: the hub adds the config when it sends the frame.
      expect(job[0]!.args.env).toBeUndefined();

      const sha256 = "ab".repeat(32);
      await finishJob(jobId, true, {
        exit_code: 0,
        file: `${backup!.id}.dump`,
        size_bytes: 12345,
        sha256,
        duration_ms: 42,
      });
      const done = (await dbs().getBackup({ backupId: backup!.id })).backup!;
      expect(done).toMatchObject({ state: "done", sizeBytes: 12345n, sha256, durationMs: 42n });

      const { backup: second } = await dbs().createBackup({ serviceId: s.id });
      const { rows: r2 } = await t.hub.db.query<{ dispatch_id: string }>(
        "SELECT dispatch_id FROM database_backups WHERE id = $1",
        [second!.id],
      );
      await finishJob(r2[0]!.dispatch_id, false, undefined, `${s.slug} is not running`);
      const failed = (await dbs().listBackups({ serviceId: s.id })).backups;
      expect(failed.map((b) => b.state)).toEqual(["failed", "done"]);
      expect(failed[0]!.error).toContain("is not running");

      // A job that claims success without its file is a failure, never a success.
      const { backup: third } = await dbs().createBackup({ serviceId: s.id });
      const { rows: r3 } = await t.hub.db.query<{ dispatch_id: string }>(
        "SELECT dispatch_id FROM database_backups WHERE id = $1",
        [third!.id],
      );
      await finishJob(r3[0]!.dispatch_id, true, { exit_code: 0 });
      expect((await dbs().getBackup({ backupId: third!.id })).backup!.state).toBe("failed");

      // Restore: confirmation required, only finished backups, only this database's.
      const other = (await createDb(`other-${suffix()}`)).service!;
      const before = await state();
      await expectError(
        dbs().restoreBackup({ serviceId: s.id, backupId: backup!.id, confirm: false }),
        "validation.failed",
        "confirm",
      );
      await expectError(
        dbs().restoreBackup({ serviceId: s.id, backupId: second!.id, confirm: true }),
        "resource.conflict",
        "backup_id",
      );
      await expectError(
        dbs().restoreBackup({ serviceId: other.id, backupId: backup!.id, confirm: true }),
        "resource.conflict",
        "backup_id",
      );
      expect(await state()).toEqual(before);
      const { jobId: restoreJob } = await dbs().restoreBackup({
        serviceId: s.id,
        backupId: backup!.id,
        confirm: true,
      });
      const { rows: rj } = await t.hub.db.query<{ args: Record<string, unknown> }>(
        "SELECT args FROM dispatches WHERE id = $1",
        [restoreJob],
      );
      expect(rj[0]!.args).toMatchObject({
        task: "postgres.restore",
        file: `${backup!.id}.dump`,
        sha256,
      });
    });

    it("schedules: a bad cron is refused; a due schedule takes a backup at the sweep and moves on; retention prunes older ones", async () => {
      const s = (await createDb(`sch-${suffix()}`)).service!;
      for (const [cron, field] of [
        ["every day", "cron"],
        ["61 * * * *", "cron"],
        ["* * * *", "cron"],
        ["0 0 31 2 *", "cron"],
        [`0 0 * * ${"1,".repeat(100)}1`, "cron"],
      ] as const)
        await expectError(
          dbs().setBackupSchedule({ serviceId: s.id, cron, retention: 2 }),
          "validation.failed",
          field,
        );
      await expectError(
        dbs().setBackupSchedule({ serviceId: s.id, cron: "@daily", retention: 1001 }),
        "validation.failed",
        "retention",
      );
      await expectError(
        dbs().setBackupSchedule({ serviceId: s.id, cron: "@daily", retention: -1 }),
        "validation.failed",
        "retention",
      );
      expect((await dbs().getBackupSchedule({ serviceId: s.id })).schedule).toBeUndefined();
      const set = await dbs().setBackupSchedule({
        serviceId: s.id,
        cron: "*/5 * * * *",
        retention: 2,
      });
      expect(set.schedule?.cron).toBe("*/5 * * * *");
      const next = set.schedule!.nextRunAt!;
      expect(Number(next.seconds) * 1000).toBeGreaterThan(Date.now());

      // Three sweeps at three due times: three scheduled backups, each finished by its "agent".
      let at = new Date(Number(next.seconds) * 1000);
      for (let i = 0; i < 3; i++) {
        const swept = await t.hub.databases.sweep(at);
        expect(swept.started).toBe(1);
        // A second sweep at the same instant finds nothing due (the claim moved it on).
        expect((await t.hub.databases.sweep(at)).started).toBe(0);
        const { rows } = await t.hub.db.query<{ id: string; dispatch_id: string }>(
          "SELECT id, dispatch_id FROM database_backups WHERE service_id = $1 AND state = 'pending'",
          [s.id],
        );
        expect(rows).toHaveLength(1);
        await finishJob(rows[0]!.dispatch_id, true, {
          exit_code: 0,
          file: `${rows[0]!.id}.dump`,
          size_bytes: 10 + i,
          sha256: "cd".repeat(32),
        });
        at = new Date(at.getTime() + 5 * 60_000);
      }
      await t.hub.databases.sweep(new Date(at.getTime() - 60_000));
      const kept = (await dbs().listBackups({ serviceId: s.id })).backups;
      expect(kept.map((b) => [b.origin, b.state, Number(b.sizeBytes)])).toEqual([
        ["schedule", "done", 12],
        ["schedule", "done", 11],
      ]);
      const { rows: prune } = await t.hub.db.query<{ args: { task: string; files: string[] } }>(
        "SELECT args FROM dispatches WHERE service_id = $1 AND args->>'task' = 'postgres.prune'",
        [s.id],
      );
      expect(prune).toHaveLength(1);
      expect(prune[0]!.args.files).toHaveLength(1);

      const removed = await dbs().setBackupSchedule({ serviceId: s.id, cron: "" });
      expect(removed.schedule).toBeUndefined();
      expect((await dbs().getBackupSchedule({ serviceId: s.id })).schedule).toBeUndefined();
    });

    it("two sweeps racing at the same instant start one backup (the schedule's claim is a compare-and-set)", async () => {
      const s = (await createDb(`race-${suffix()}`)).service!;
      const set = await dbs().setBackupSchedule({ serviceId: s.id, cron: "@hourly" });
      const due = new Date(Number(set.schedule!.nextRunAt!.seconds) * 1000);
      const results = await Promise.all([t.hub.databases.sweep(due), t.hub.databases.sweep(due)]);
      expect(results.reduce((n, r) => n + r.started, 0)).toBe(1);
      const { rows } = await t.hub.db.query(
        "SELECT id FROM database_backups WHERE service_id = $1 AND origin = 'schedule'",
        [s.id],
      );
      expect(rows).toHaveLength(1);
    });

    it("deleting a database keeps its data unless purge_data is set (the agent's delete intent says which)", async () => {
      const keep = (await createDb(`keep-${suffix()}`)).service!;
      const purge = (await createDb(`purge-${suffix()}`)).service!;
      await all().services.deleteService({ serviceId: keep.id });
      await all().services.deleteService({ serviceId: purge.id, purgeData: true });
      const { rows } = await t.hub.db.query<{ service_id: string; args: { purge_data: boolean } }>(
        "SELECT service_id, args FROM dispatches WHERE op = 'delete' AND service_id = ANY($1)",
        [[keep.id, purge.id]],
      );
      const purgeOf = Object.fromEntries(rows.map((r) => [r.service_id, r.args.purge_data]));
      expect(purgeOf).toEqual({ [keep.id]: false, [purge.id]: true });
    });
  });
}
