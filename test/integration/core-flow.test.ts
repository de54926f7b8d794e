// Core domain, end to end as a user over the API: projects and environments, services and
// deployments, config and its effective version, rollback, the event list and live stream,
// renames and deletes, and doctrine 1 (a late agent report never overwrites a newer truth).
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigKind, ConfigScope } from "../../src/gen/flotilla/v1/config_pb.js";
import { type Event, Visibility } from "../../src/gen/flotilla/v1/services_pb.js";
import {
  type Api,
  api,
  createFixture,
  eventually,
  execSpec,
  expectError,
  organizationIdOf,
  suffix,
} from "../support/core.js";
import { bootstrapOwner, startTestHub, type TestHub } from "../support/hub.js";

const ENV = ConfigScope.ENVIRONMENT;
const SVC = ConfigScope.SERVICE;

for (const engine of ["pglite", "postgres"] as const) {
  describe(`core flow [${engine}]`, () => {
    let t: TestHub;
    let a: Api;
    let orgId: string;

    beforeAll(async () => {
      t = await startTestHub(engine);
      const { token } = await bootstrapOwner(t.hub);
      a = api(t.hub.url, token);
      orgId = await organizationIdOf(t.hub, token);
    });
    afterAll(async () => {
      await t?.stop();
    });

    const setVar = (scope: ConfigScope, id: string, key: string, value: string) =>
      a.config.setConfig({ target: { scope, id }, key, value, kind: ConfigKind.VARIABLE });
    const setSecret = (scope: ConfigScope, id: string, key: string, value: string) =>
      a.config.setConfig({ target: { scope, id }, key, value, kind: ConfigKind.SECRET });
    const describeService = (serviceId: string) => a.services.getService({ serviceId });

    it("CreateProject makes a production environment, CreateEnvironment adds one, and both are listed", async () => {
      const s = suffix();
      const { project, production } = await a.projects.createProject({ name: `Shop ${s}` });
      expect(project!.slug).toBe(`shop-${s}`);
      expect(production!.slug).toBe("production");
      expect(production!.projectId).toBe(project!.id);

      const { environment: staging } = await a.projects.createEnvironment({
        project: project!.slug,
        name: "Staging",
      });
      expect(staging!.slug).toBe("staging");
      expect(staging!.projectId).toBe(project!.id);

      const got = await a.projects.getProject({ project: project!.id });
      expect(got.project!.slug).toBe(`shop-${s}`);
      expect(got.environments.map((e) => e.slug).sort()).toEqual(["production", "staging"]);
      const listed = await a.projects.listEnvironments({ project: project!.slug });
      expect(listed.environments.map((e) => e.id).sort()).toEqual(
        [production!.id, staging!.id].sort(),
      );
      const projects = await a.projects.listProjects({});
      expect(projects.projects.map((p) => p.id)).toContain(project!.id);

      // The events tell the story in id order: the project, then its environments.
      const mine = (await a.services.listEvents({ limit: 500 })).events.filter((e) =>
        [project!.id, production!.id, staging!.id].includes(e.subjectId),
      );
      expect(mine.map((e) => `${e.type}:${e.subjectId}`)).toEqual([
        `project.created:${project!.id}`,
        `environment.created:${production!.id}`,
        `environment.created:${staging!.id}`,
      ]);
    });

    it("a service keeps its exec spec, and each deploy is listed newest first with number, reason, config version and the desired flag", async () => {
      const f = await createFixture(a, "deploys");
      const before = await describeService(f.serviceId);
      expect(before.service!.spec!.exec).toMatchObject({
        command: "/usr/bin/node",
        args: ["server.js"],
        workingDirectory: "/srv/app",
        port: 8080,
      });
      expect(before.service!.desiredDeploymentId).toBe("");
      expect(before.configChanged).toBe(false);
      expect(before.effectiveConfigVersion).toBe("e0.s0");
      expect((await a.services.listDeployments({ serviceId: f.serviceId })).deployments).toEqual(
        [],
      );

      await setVar(SVC, f.serviceId, "PORT", "8080");
      const version = (await describeService(f.serviceId)).effectiveConfigVersion;
      expect(version).toBe("e0.s1");

      const { deployment: d1 } = await a.services.deploy({ serviceId: f.serviceId });
      expect(d1).toMatchObject({
        serviceId: f.serviceId,
        number: 1,
        reason: "deploy",
        configVersion: version,
        sourceDeploymentId: "",
        status: "pending",
        desired: true,
      });
      expect(d1!.createdBy).toMatch(/^user:/);
      const { deployment: d2 } = await a.services.deploy({ serviceId: f.serviceId });
      expect(d2!.number).toBe(2);

      const listed = (await a.services.listDeployments({ serviceId: f.serviceId })).deployments;
      expect(listed.map((d) => [d.id, d.number, d.reason, d.configVersion, d.desired])).toEqual([
        [d2!.id, 2, "deploy", version, true],
        [d1!.id, 1, "deploy", version, false],
      ]);
      expect((await describeService(f.serviceId)).service!.desiredDeploymentId).toBe(d2!.id);
      expect((await a.services.getDeployment({ deploymentId: d1!.id })).deployment!.desired).toBe(
        false,
      );

      // deploy_now makes the first deployment in the same call, with reason "create".
      const created = await a.services.createService({
        environmentId: f.productionId,
        name: "Now",
        visibility: Visibility.PUBLIC,
        spec: execSpec(),
        deployNow: true,
      });
      expect(created.service!.slug).toBe("now");
      expect(created.deployment).toMatchObject({ number: 1, reason: "create", desired: true });
      expect(created.service!.desiredDeploymentId).toBe(created.deployment!.id);
    });

    it("a config change after a deploy sets configChanged with a new effectiveConfigVersion, and deploying again clears it", async () => {
      const f = await createFixture(a, "drift");
      await a.services.deploy({ serviceId: f.serviceId });
      const v0 = await describeService(f.serviceId);
      expect(v0.configChanged).toBe(false);

      await setSecret(SVC, f.serviceId, "API_KEY", "k-1");
      const v1 = await describeService(f.serviceId);
      expect(v1.configChanged).toBe(true);
      expect(v1.effectiveConfigVersion).not.toBe(v0.effectiveConfigVersion);

      const { deployment } = await a.services.deploy({ serviceId: f.serviceId });
      expect(deployment!.configVersion).toBe(v1.effectiveConfigVersion);
      const v2 = await describeService(f.serviceId);
      expect(v2.configChanged).toBe(false);
      expect(v2.effectiveConfigVersion).toBe(v1.effectiveConfigVersion);

      // The environment's config is part of the service's effective config too.
      await setVar(ENV, f.productionId, "LOG_LEVEL", "debug");
      const v3 = await describeService(f.serviceId);
      expect(v3.configChanged).toBe(true);
      expect(v3.effectiveConfigVersion).not.toBe(v2.effectiveConfigVersion);
      await a.services.deploy({ serviceId: f.serviceId });
      expect((await describeService(f.serviceId)).configChanged).toBe(false);

      // Removing an entry is a change as well.
      await a.config.unsetConfig({ target: { scope: SVC, id: f.serviceId }, key: "API_KEY" });
      const v4 = await describeService(f.serviceId);
      expect(v4.configChanged).toBe(true);
      expect(v4.effectiveConfigVersion).not.toBe(v3.effectiveConfigVersion);
    });

    it("effective config is the environment's entries overlaid by the service's: the service wins on a shared key, secrets come by name only", async () => {
      const f = await createFixture(a, "overlay");
      const { service: other } = await a.services.createService({
        environmentId: f.productionId,
        name: "Other",
        visibility: Visibility.PRIVATE,
        spec: execSpec(),
      });
      await setVar(ENV, f.productionId, "SHARED", "from-env");
      await setVar(ENV, f.productionId, "ENV_ONLY", "e");
      await setVar(ENV, f.productionId, "TOKEN", "plain-env-token");
      await setSecret(ENV, f.productionId, "DB_PASSWORD", "env-db-pass");
      await setVar(SVC, f.serviceId, "SHARED", "from-service");
      await setVar(SVC, f.serviceId, "SVC_ONLY", "s");
      await setSecret(SVC, f.serviceId, "TOKEN", "service-token");

      const eff = await a.config.getEffectiveConfig({ serviceId: f.serviceId });
      const byKey = Object.fromEntries(
        eff.entries.map((e) => [e.key, { value: e.value, kind: e.kind, scope: e.scope }]),
      );
      expect(byKey).toEqual({
        DB_PASSWORD: { value: "", kind: ConfigKind.SECRET, scope: ENV },
        ENV_ONLY: { value: "e", kind: ConfigKind.VARIABLE, scope: ENV },
        SHARED: { value: "from-service", kind: ConfigKind.VARIABLE, scope: SVC },
        SVC_ONLY: { value: "s", kind: ConfigKind.VARIABLE, scope: SVC },
        TOKEN: { value: "", kind: ConfigKind.SECRET, scope: SVC },
      });
      expect(eff.version).toBe((await describeService(f.serviceId)).effectiveConfigVersion);

      // A sibling service sees the environment's entries only.
      const sibling = await a.config.getEffectiveConfig({ serviceId: other!.id });
      expect(Object.fromEntries(sibling.entries.map((e) => [e.key, e.value]))).toEqual({
        DB_PASSWORD: "",
        ENV_ONLY: "e",
        SHARED: "from-env",
        TOKEN: "plain-env-token",
      });

      // What a deployment receives at the moment of use: the same overlay, secrets opened.
      const runtime = await t.hub.config.resolveForRuntime(orgId, f.productionId, f.serviceId);
      expect(runtime.env).toEqual({
        DB_PASSWORD: "env-db-pass",
        ENV_ONLY: "e",
        SHARED: "from-service",
        SVC_ONLY: "s",
        TOKEN: "service-token",
      });
      // The agent masks these keys' values in what it reports, however short.
      expect(runtime.secretKeys.sort()).toEqual(["DB_PASSWORD", "TOKEN"]);
    });

    it("Rollback by default restores the deployment before the desired one, or an explicit one, as a new deployment with reason rollback and its source", async () => {
      const f = await createFixture(a, "rollback");
      const deployWithArgs = async (arg: string) => {
        await a.services.updateService({
          serviceId: f.serviceId,
          name: "Web",
          visibility: Visibility.PRIVATE,
          spec: execSpec({ args: [arg] }),
        });
        return (await a.services.deploy({ serviceId: f.serviceId })).deployment!;
      };
      const d1 = await deployWithArgs("v1");
      const d2 = await deployWithArgs("v2");
      const d3 = await deployWithArgs("v3");
      expect([d1.number, d2.number, d3.number]).toEqual([1, 2, 3]);

      const { deployment: r1 } = await a.services.rollback({ serviceId: f.serviceId });
      expect(r1).toMatchObject({
        number: 4,
        reason: "rollback",
        sourceDeploymentId: d2.id,
        desired: true,
      });
      expect(r1!.spec!.exec!.args).toEqual(["v2"]);
      const listed = (await a.services.listDeployments({ serviceId: f.serviceId })).deployments;
      expect(listed.map((d) => [d.number, d.desired])).toEqual([
        [4, true],
        [3, false],
        [2, false],
        [1, false],
      ]);
      expect((await describeService(f.serviceId)).service!.desiredDeploymentId).toBe(r1!.id);

      // An explicit deployment id; the rollback is built with the current config.
      await setVar(SVC, f.serviceId, "FEATURE", "on");
      const current = (await describeService(f.serviceId)).effectiveConfigVersion;
      expect(current).not.toBe(d1.configVersion);
      const { deployment: r2 } = await a.services.rollback({
        serviceId: f.serviceId,
        deploymentId: d1.id,
      });
      expect(r2).toMatchObject({
        number: 5,
        reason: "rollback",
        sourceDeploymentId: d1.id,
        configVersion: current,
        desired: true,
      });
      expect(r2!.spec!.exec!.args).toEqual(["v1"]);
      expect(
        (await a.services.getDeployment({ deploymentId: r2!.id })).deployment!.sourceDeploymentId,
      ).toBe(d1.id);
    });

    it("ListEvents returns a service's own and its deployments' events oldest first, and after_id only the later ones", async () => {
      const f = await createFixture(a, "events");
      const { service: other } = await a.services.createService({
        environmentId: f.productionId,
        name: "Other",
        visibility: Visibility.PRIVATE,
        spec: execSpec(),
      });
      const { deployment } = await a.services.deploy({ serviceId: f.serviceId });
      await a.services.deploy({ serviceId: other!.id });
      await a.services.updateService({
        serviceId: f.serviceId,
        name: "Web 2",
        visibility: Visibility.PRIVATE,
        spec: execSpec(),
      });
      await setVar(SVC, f.serviceId, "A", "1");
      await t.hub.services.recordObservation(orgId, {
        serviceId: f.serviceId,
        deploymentId: deployment!.id,
        status: "running",
      });

      const { events } = await a.services.listEvents({ serviceId: f.serviceId });
      expect(events.map((e) => e.type)).toEqual([
        "service.created",
        "deployment.created",
        "service.updated",
        "config.changed",
        "service.status_changed",
      ]);
      expect(events.map((e) => e.id)).toEqual(events.map((e) => e.id).sort());
      for (const e of events) {
        const payload = JSON.parse(e.payloadJson) as Record<string, unknown>;
        expect(e.subjectId === f.serviceId || payload.service_id === f.serviceId).toBe(true);
      }
      expect(events[1]!.subjectId).toBe(deployment!.id);

      const after = await a.services.listEvents({
        serviceId: f.serviceId,
        afterId: events[1]!.id,
      });
      expect(after.events.map((e) => e.id)).toEqual(events.slice(2).map((e) => e.id));

      // Unfiltered: the organization's events, including the other service's.
      const all = await a.services.listEvents({ limit: 500 });
      const types = all.events.map((e) => `${e.type}:${e.subjectId}`);
      expect(types).toContain(`service.created:${other!.id}`);
      expect(types).toContain(`project.created:${f.projectId}`);
    });

    it("WatchEvents streams the watched service's service and deployment events live, and not another service's", async () => {
      const f = await createFixture(a, "watch");
      const { service: other } = await a.services.createService({
        environmentId: f.productionId,
        name: "Other",
        visibility: Visibility.PRIVATE,
        spec: execSpec(),
      });
      const watch = startWatch({ serviceId: f.serviceId });
      try {
        // The stream is live once a change made after it started arrives.
        for (let i = 0; watch.received.length === 0; i++) {
          if (i > 100) throw new Error("WatchEvents delivered nothing");
          await setVar(SVC, f.serviceId, "PROBE", String(i));
          await watch.waitFor((r) => r.length > 0, 300).catch(() => {});
        }
        await a.services.updateService({
          serviceId: other!.id,
          name: "Other 2",
          visibility: Visibility.PRIVATE,
          spec: execSpec(),
        });
        await a.services.deploy({ serviceId: other!.id });
        const { deployment } = await a.services.deploy({ serviceId: f.serviceId });
        await a.services.updateService({
          serviceId: f.serviceId,
          name: "Web 2",
          visibility: Visibility.PRIVATE,
          spec: execSpec(),
        });
        await t.hub.services.recordObservation(orgId, {
          serviceId: f.serviceId,
          deploymentId: deployment!.id,
          status: "running",
        });
        const got = await watch.waitFor(
          (r) =>
            r.some((e) => e.type === "deployment.created" && e.subjectId === deployment!.id) &&
            r.some((e) => e.type === "service.updated") &&
            r.some((e) => e.type === "service.status_changed"),
        );
        for (const e of got) {
          const payload = JSON.parse(e.payloadJson) as Record<string, unknown>;
          expect(e.subjectId === f.serviceId || payload.service_id === f.serviceId).toBe(true);
        }
        expect(new Set(got.map((e) => e.id)).size).toBe(got.length);
      } finally {
        await watch.stop();
      }
    });

    it("WatchEvents with since_id replays the service's events after that id in order, then continues live", async () => {
      const f = await createFixture(a, "replay");
      await a.services.deploy({ serviceId: f.serviceId });
      await setVar(SVC, f.serviceId, "A", "1");
      await a.services.deploy({ serviceId: f.serviceId });
      const { events } = await a.services.listEvents({ serviceId: f.serviceId });
      expect(events.length).toBe(4);

      const watch = startWatch({ serviceId: f.serviceId, sinceId: events[0]!.id });
      try {
        const replayed = await watch.waitFor((r) => r.length >= 3);
        expect(replayed.slice(0, 3).map((e) => e.id)).toEqual(events.slice(1).map((e) => e.id));
        const { deployment } = await a.services.deploy({ serviceId: f.serviceId });
        const live = await watch.waitFor((r) => r.some((e) => e.subjectId === deployment!.id));
        // Nothing replayed twice, nothing from before since_id.
        expect(live.map((e) => e.id)).not.toContain(events[0]!.id);
        expect(new Set(live.map((e) => e.id)).size).toBe(live.length);
      } finally {
        await watch.stop();
      }
    });

    it("RenameProject and RenameEnvironment change names but keep slugs, and record events", async () => {
      const s = suffix();
      const { project, production } = await a.projects.createProject({
        name: "Before",
        slug: `rename-${s}`,
      });
      const renamed = await a.projects.renameProject({ project: `rename-${s}`, name: "After" });
      expect(renamed.project).toMatchObject({
        id: project!.id,
        slug: `rename-${s}`,
        name: "After",
      });
      expect((await a.projects.getProject({ project: project!.id })).project!.name).toBe("After");

      const env = await a.projects.renameEnvironment({
        environmentId: production!.id,
        name: "Live",
      });
      expect(env.environment).toMatchObject({ slug: "production", name: "Live" });
      const listed = await a.projects.listEnvironments({ project: project!.id });
      expect(listed.environments.map((e) => [e.slug, e.name])).toEqual([["production", "Live"]]);

      const all = (await a.services.listEvents({ limit: 500 })).events;
      expect(all.some((e) => e.type === "project.renamed" && e.subjectId === project!.id)).toBe(
        true,
      );
      expect(
        all.some((e) => e.type === "environment.renamed" && e.subjectId === production!.id),
      ).toBe(true);
    });

    /** A project with a staging environment holding a running service, a stopped one, and config. */
    async function populated(label: string) {
      const s = suffix();
      const { project, production } = await a.projects.createProject({
        name: label,
        slug: `${label}-${s}`,
      });
      const { environment: staging } = await a.projects.createEnvironment({
        project: project!.id,
        name: "Staging",
      });
      const make = async (slug: string, status: "running" | "stopped") => {
        const { service, deployment } = await a.services.createService({
          environmentId: staging!.id,
          name: slug,
          slug,
          visibility: Visibility.PRIVATE,
          spec: execSpec(),
          deployNow: true,
        });
        const r = await t.hub.services.recordObservation(orgId, {
          serviceId: service!.id,
          deploymentId: deployment!.id,
          status,
        });
        expect(r.applied).toBe(true);
        await setSecret(SVC, service!.id, "SERVICE_SECRET", "x");
        return service!.id;
      };
      const api1 = await make("api", "running");
      const worker = await make("worker", "stopped");
      await setVar(ENV, staging!.id, "REGION", "eu");
      return {
        projectId: project!.id,
        productionId: production!.id,
        stagingId: staging!.id,
        serviceIds: [api1, worker],
      };
    }

    async function leftovers(ids: string[]) {
      const q = async (sql: string) => (await t.hub.db.query<{ n: number }>(sql, [ids])).rows[0]!.n;
      return {
        projects: await q("SELECT count(*)::int AS n FROM projects WHERE id::text = ANY($1)"),
        environments: await q(
          "SELECT count(*)::int AS n FROM environments WHERE id::text = ANY($1)",
        ),
        services: await q(
          "SELECT count(*)::int AS n FROM services WHERE id::text = ANY($1) OR environment_id::text = ANY($1)",
        ),
        deployments: await q(
          "SELECT count(*)::int AS n FROM deployments WHERE service_id::text = ANY($1)",
        ),
        configScopes: await q(
          "SELECT count(*)::int AS n FROM config_scopes WHERE scope_id::text = ANY($1)",
        ),
        configEntries: await q(
          "SELECT count(*)::int AS n FROM config_entries WHERE scope_id::text = ANY($1)",
        ),
      };
    }

    it("DeleteEnvironment refuses with resource.in_use naming only the running services, and with force removes the environment, its services, deployments and config", async () => {
      const p = await populated("delenv");
      const err = await expectError(
        a.projects.deleteEnvironment({ environmentId: p.stagingId }),
        "resource.in_use",
        null,
        Code.FailedPrecondition,
      );
      expect(err.message).toContain("api");
      expect(err.message).not.toContain("worker");
      const kept = await leftovers([p.stagingId, ...p.serviceIds]);
      expect(kept).toEqual({
        projects: 0,
        environments: 1,
        services: 2,
        deployments: 2,
        configScopes: 3,
        configEntries: 3,
      });

      await a.projects.deleteEnvironment({ environmentId: p.stagingId, force: true });
      expect(await leftovers([p.stagingId, ...p.serviceIds])).toEqual({
        projects: 0,
        environments: 0,
        services: 0,
        deployments: 0,
        configScopes: 0,
        configEntries: 0,
      });
      await expectError(
        a.services.getService({ serviceId: p.serviceIds[0]! }),
        "resource.not_found",
      );
      const envs = await a.projects.listEnvironments({ project: p.projectId });
      expect(envs.environments.map((e) => e.id)).toEqual([p.productionId]);

      // An environment without running services needs no force.
      const { environment: empty } = await a.projects.createEnvironment({
        project: p.projectId,
        name: "Empty",
      });
      await a.projects.deleteEnvironment({ environmentId: empty!.id });
      expect((await leftovers([empty!.id])).environments).toBe(0);
    });

    it("DeleteProject refuses with resource.in_use naming the running service, and with force removes the project, its environments, services and config", async () => {
      const p = await populated("delproj");
      const err = await expectError(
        a.projects.deleteProject({ project: p.projectId }),
        "resource.in_use",
        null,
        Code.FailedPrecondition,
      );
      expect(err.message).toContain("api");
      expect(err.message).not.toContain("worker");
      expect((await a.projects.getProject({ project: p.projectId })).environments).toHaveLength(2);

      await a.projects.deleteProject({ project: p.projectId, force: true });
      expect(await leftovers([p.projectId, p.productionId, p.stagingId, ...p.serviceIds])).toEqual({
        projects: 0,
        environments: 0,
        services: 0,
        deployments: 0,
        configScopes: 0,
        configEntries: 0,
      });
      await expectError(a.projects.getProject({ project: p.projectId }), "resource.not_found");
      const all = (await a.services.listEvents({ limit: 500 })).events;
      expect(all.some((e) => e.type === "project.deleted" && e.subjectId === p.projectId)).toBe(
        true,
      );

      // A project whose services are not running needs no force.
      const f = await createFixture(a, "idle");
      await a.services.deploy({ serviceId: f.serviceId });
      await a.projects.deleteProject({ project: f.projectId });
      expect((await leftovers([f.projectId, f.serviceId])).projects).toBe(0);
    });

    it("a late observation about an older deployment updates that deployment but never the service's observed state (doctrine 1)", async () => {
      const f = await createFixture(a, "late");
      const { deployment: d1 } = await a.services.deploy({ serviceId: f.serviceId });
      const { deployment: d2 } = await a.services.deploy({ serviceId: f.serviceId });
      const fresh = await t.hub.services.recordObservation(orgId, {
        serviceId: f.serviceId,
        deploymentId: d2!.id,
        status: "running",
        endpoint: "127.0.0.1:41000",
      });
      expect(fresh.applied).toBe(true);
      const running = (await describeService(f.serviceId)).service!.observed!;
      expect(running).toMatchObject({
        status: "running",
        deploymentId: d2!.id,
        endpoint: "127.0.0.1:41000",
      });

      const late = await t.hub.services.recordObservation(orgId, {
        serviceId: f.serviceId,
        deploymentId: d1!.id,
        status: "failed",
        reason: "exit code 1",
      });
      expect(late.applied).toBe(false);
      const after = (await describeService(f.serviceId)).service!.observed!;
      expect(after).toMatchObject({ status: "running", deploymentId: d2!.id, reason: "" });
      const old = (await a.services.getDeployment({ deploymentId: d1!.id })).deployment!;
      expect(old).toMatchObject({ status: "failed", statusReason: "exit code 1" });
      expect((await a.services.getDeployment({ deploymentId: d2!.id })).deployment!.status).toBe(
        "running",
      );

      // A new desired deployment does not touch observed state: only the agent path writes it.
      const { deployment: d3 } = await a.services.deploy({ serviceId: f.serviceId });
      const s3 = (await describeService(f.serviceId)).service!;
      expect(s3.desiredDeploymentId).toBe(d3!.id);
      expect(s3.observed).toMatchObject({ status: "running", deploymentId: d2!.id });
      // ...and now d2 is the old one: its late "stopped" changes nothing on the service.
      const stale = await t.hub.services.recordObservation(orgId, {
        serviceId: f.serviceId,
        deploymentId: d2!.id,
        status: "stopped",
      });
      expect(stale.applied).toBe(false);
      expect((await describeService(f.serviceId)).service!.observed!.status).toBe("running");

      const statusEvents = (await a.services.listEvents({ serviceId: f.serviceId })).events.filter(
        (e) => e.type === "service.status_changed",
      );
      expect(statusEvents).toHaveLength(1);
      expect(JSON.parse(statusEvents[0]!.payloadJson)).toMatchObject({
        deployment_id: d2!.id,
        status: "running",
      });
    });

    /** Opens WatchEvents and collects what arrives until stop(). */
    function startWatch(req: { serviceId: string; sinceId?: string }) {
      const ac = new AbortController();
      const received: Event[] = [];
      let failure: unknown;
      const pump = (async () => {
        try {
          for await (const r of a.services.watchEvents(req, { signal: ac.signal })) {
            received.push(r.event!);
          }
        } catch (err) {
          if (!ac.signal.aborted) failure = err;
        }
      })();
      return {
        received,
        async waitFor(pred: (r: Event[]) => boolean, ms = 10_000): Promise<Event[]> {
          await eventually(
            async () => {
              if (failure) throw failure;
              return pred(received);
            },
            ms,
            "watched events",
          );
          return [...received];
        },
        async stop() {
          ac.abort();
          await pump;
        },
      };
    }
  });
}
