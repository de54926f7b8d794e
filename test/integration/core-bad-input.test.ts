// Bad input gets a typed error and changes nothing (doctrine 7): every refusal below carries its
// stable code (and the offending field where there is one), and leaves the projects, environments,
// services, deployments, config and outbox and audit tables exactly as they were. Another
// tenant's objects answer not-found everywhere.
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigKind, ConfigScope } from "../../src/gen/flotilla/v1/config_pb.js";
import {
  Driver,
  type RestartPolicy,
  type ServiceSpec,
  Visibility,
} from "../../src/gen/flotilla/v1/services_pb.js";
import {
  type Api,
  api,
  createFixture,
  execSpec,
  type Fixture,
  rejection,
  secondTenant,
  suffix,
  tableState,
} from "../support/core.js";
import { bootstrapOwner, startTestHub, type TestHub } from "../support/hub.js";

const ENV = ConfigScope.ENVIRONMENT;
const SVC = ConfigScope.SERVICE;
const UNKNOWN = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

type SpecInit = Parameters<Api["services"]["createService"]>[0]["spec"];

/** What one tenant owns, by id. */
interface Tenant extends Fixture {
  api: Api;
  projectSlug: string;
  stagingId: string;
  deploymentId: string;
  otherServiceId: string;
  otherDeploymentId: string;
}

async function populate(a: Api): Promise<Tenant> {
  const f = await createFixture(a, "bad");
  const { project } = await a.projects.getProject({ project: f.projectId });
  const { environment: staging } = await a.projects.createEnvironment({
    project: f.projectId,
    name: "Staging",
  });
  const { deployment } = await a.services.deploy({ serviceId: f.serviceId });
  const other = await a.services.createService({
    environmentId: f.productionId,
    name: "Worker",
    slug: "worker",
    visibility: Visibility.PRIVATE,
    spec: execSpec({ port: 9090 }),
    deployNow: true,
  });
  for (const [scope, id] of [
    [SVC, f.serviceId],
    [ENV, f.productionId],
  ] as const) {
    await a.config.setConfig({
      target: { scope, id },
      key: "PLAIN",
      value: "1",
      kind: ConfigKind.VARIABLE,
    });
    await a.config.setConfig({
      target: { scope, id },
      key: "SECRET",
      value: "s",
      kind: ConfigKind.SECRET,
    });
  }
  return {
    ...f,
    api: a,
    projectSlug: project!.slug,
    stagingId: staging!.id,
    deploymentId: deployment!.id,
    otherServiceId: other.service!.id,
    otherDeploymentId: other.deployment!.id,
  };
}

for (const engine of ["pglite", "postgres"] as const) {
  describe(`bad input is refused with a typed error and writes nothing [${engine}]`, () => {
    let t: TestHub;
    let a: Api;
    let mine: Tenant;
    let theirs: Tenant;

    beforeAll(async () => {
      t = await startTestHub(engine);
      const { token } = await bootstrapOwner(t.hub);
      a = api(t.hub.url, token);
      mine = await populate(a);
      const b = await secondTenant(t.hub, token);
      theirs = await populate(api(t.hub.url, b.token));
    });
    afterAll(async () => {
      await t?.stop();
    });

    /**
     * Runs the call, expects it refused with `code` (and `field`: a name, or null for none), and
     * the core tables unchanged, rows and content.
     */
    async function refused(
      label: string,
      call: () => Promise<unknown>,
      code: string,
      field?: string | null,
    ) {
      const before = await tableState(t.hub.db);
      let err: Awaited<ReturnType<typeof rejection>>;
      try {
        err = await rejection(call());
      } catch (e) {
        throw new Error(`${label}: ${(e as Error).message}`);
      }
      const got = {
        label,
        code: err.metadata.get("flotilla-error-code"),
        ...(field !== undefined ? { field: err.metadata.get("flotilla-error-field") } : {}),
      };
      expect(got, err.message).toEqual({
        label,
        code,
        ...(field !== undefined ? { field } : {}),
      });
      expect(await tableState(t.hub.db), `${label} wrote something`).toEqual(before);
      return err;
    }

    const service = (environmentId: string, slug: string, ...spec: [SpecInit] | []) =>
      a.services.createService({
        environmentId,
        name: "Svc",
        slug,
        visibility: Visibility.PRIVATE,
        spec: spec.length ? spec[0] : execSpec(),
      });

    it("invalid slugs (uppercase, too long, leading or trailing dash, other characters) are refused on field slug", async () => {
      for (const slug of ["Acme", "a".repeat(41), "-lead", "trail-", "has space", "ünï", "a_b"]) {
        await refused(
          `project ${slug}`,
          () => a.projects.createProject({ name: "P", slug }),
          "validation.failed",
          "slug",
        );
        await refused(
          `environment ${slug}`,
          () => a.projects.createEnvironment({ project: mine.projectId, name: "E", slug }),
          "validation.failed",
          "slug",
        );
        await refused(
          `service ${slug}`,
          () => service(mine.productionId, slug),
          "validation.failed",
          "slug",
        );
      }
      // The boundary: 40 characters is a valid slug.
      const long = `p${suffix()}`.padEnd(40, "x");
      expect((await a.projects.createProject({ name: "P", slug: long })).project!.slug).toBe(long);
    });

    it("empty, overlong or control-character names are refused on field name", async () => {
      for (const name of ["", "   ", "n".repeat(101), "bell\u0007"]) {
        await refused(
          `project ${JSON.stringify(name)}`,
          () => a.projects.createProject({ name }),
          "validation.failed",
          "name",
        );
        await refused(
          `rename ${JSON.stringify(name)}`,
          () => a.projects.renameProject({ project: mine.projectId, name }),
          "validation.failed",
          "name",
        );
        await refused(
          `rename environment ${JSON.stringify(name)}`,
          () => a.projects.renameEnvironment({ environmentId: mine.stagingId, name }),
          "validation.failed",
          "name",
        );
        await refused(
          `service ${JSON.stringify(name)}`,
          () =>
            a.services.createService({
              environmentId: mine.productionId,
              name,
              slug: "named",
              visibility: Visibility.PRIVATE,
              spec: execSpec(),
            }),
          "validation.failed",
          "name",
        );
      }
    });

    it("duplicate project, environment and service slugs answer resource.already_exists on field slug", async () => {
      const err = await refused(
        "project",
        () => a.projects.createProject({ name: "Again", slug: mine.projectSlug }),
        "resource.already_exists",
        "slug",
      );
      expect(Code[err.code]).toBe(Code[Code.AlreadyExists]);
      await refused(
        "environment production",
        () =>
          a.projects.createEnvironment({ project: mine.projectId, name: "P", slug: "production" }),
        "resource.already_exists",
        "slug",
      );
      await refused(
        "environment slug derived from the name",
        () => a.projects.createEnvironment({ project: mine.projectId, name: "Staging" }),
        "resource.already_exists",
        "slug",
      );
      await refused(
        "service",
        () => service(mine.productionId, "web"),
        "resource.already_exists",
        "slug",
      );
      // The same slug is free in another environment, and in another tenant.
      expect((await service(mine.stagingId, "web")).service!.slug).toBe("web");
      expect(
        (await theirs.api.projects.createProject({ name: "Theirs", slug: mine.projectSlug }))
          .project!.slug,
      ).toBe(mine.projectSlug);
    });

    it("unknown ids answer resource.not_found in every RPC that takes one", async () => {
      const calls: Array<[string, () => Promise<unknown>]> = [
        ["GetProject", () => a.projects.getProject({ project: UNKNOWN })],
        ["GetProject by slug", () => a.projects.getProject({ project: "no-such-project" })],
        ["RenameProject", () => a.projects.renameProject({ project: UNKNOWN, name: "X" })],
        ["DeleteProject", () => a.projects.deleteProject({ project: UNKNOWN, force: true })],
        ["CreateEnvironment", () => a.projects.createEnvironment({ project: UNKNOWN, name: "X" })],
        ["ListEnvironments", () => a.projects.listEnvironments({ project: UNKNOWN })],
        [
          "RenameEnvironment",
          () => a.projects.renameEnvironment({ environmentId: UNKNOWN, name: "X" }),
        ],
        [
          "DeleteEnvironment",
          () => a.projects.deleteEnvironment({ environmentId: UNKNOWN, force: true }),
        ],
        ["CreateService", () => service(UNKNOWN, "ghost")],
        ["ListServices", () => a.services.listServices({ project: UNKNOWN })],
        ["GetService", () => a.services.getService({ serviceId: UNKNOWN })],
        [
          "UpdateService",
          () =>
            a.services.updateService({
              serviceId: UNKNOWN,
              name: "X",
              visibility: Visibility.PRIVATE,
              spec: execSpec(),
            }),
        ],
        ["DeleteService", () => a.services.deleteService({ serviceId: UNKNOWN })],
        ["Deploy", () => a.services.deploy({ serviceId: UNKNOWN })],
        ["ListDeployments", () => a.services.listDeployments({ serviceId: UNKNOWN })],
        ["GetDeployment", () => a.services.getDeployment({ deploymentId: UNKNOWN })],
        ["Rollback", () => a.services.rollback({ serviceId: UNKNOWN })],
        [
          "Rollback to an unknown deployment",
          () => a.services.rollback({ serviceId: mine.serviceId, deploymentId: UNKNOWN }),
        ],
        ["ListEvents", () => a.services.listEvents({ serviceId: UNKNOWN })],
        ["WatchEvents", () => firstWatched(a, UNKNOWN)],
        ...configCalls(a, UNKNOWN, UNKNOWN),
        [
          "UnsetConfig of a key that is not set",
          () =>
            a.config.unsetConfig({ target: { scope: SVC, id: mine.serviceId }, key: "NOT_SET" }),
        ],
        [
          "RevealSecret of a key that is not set",
          () =>
            a.config.revealSecret({ target: { scope: SVC, id: mine.serviceId }, key: "NOT_SET" }),
        ],
      ];
      for (const [label, call] of calls) await refused(label, call, "resource.not_found");
    });

    it("another tenant's ids answer resource.not_found in every RPC, and its objects stay unseen and unchanged", async () => {
      const b = theirs;
      const calls: Array<[string, () => Promise<unknown>]> = [
        ["GetProject", () => a.projects.getProject({ project: b.projectId })],
        ["GetProject by slug", () => a.projects.getProject({ project: b.projectSlug })],
        ["RenameProject", () => a.projects.renameProject({ project: b.projectId, name: "Mine" })],
        ["DeleteProject", () => a.projects.deleteProject({ project: b.projectId, force: true })],
        [
          "CreateEnvironment",
          () => a.projects.createEnvironment({ project: b.projectId, name: "Intruder" }),
        ],
        ["ListEnvironments", () => a.projects.listEnvironments({ project: b.projectId })],
        [
          "RenameEnvironment",
          () => a.projects.renameEnvironment({ environmentId: b.productionId, name: "Mine" }),
        ],
        [
          "DeleteEnvironment",
          () => a.projects.deleteEnvironment({ environmentId: b.stagingId, force: true }),
        ],
        ["CreateService", () => service(b.productionId, "intruder")],
        ["ListServices by project", () => a.services.listServices({ project: b.projectId })],
        ["GetService", () => a.services.getService({ serviceId: b.serviceId })],
        [
          "UpdateService",
          () =>
            a.services.updateService({
              serviceId: b.serviceId,
              name: "Mine",
              visibility: Visibility.PUBLIC,
              spec: execSpec(),
            }),
        ],
        ["DeleteService", () => a.services.deleteService({ serviceId: b.serviceId })],
        ["Deploy", () => a.services.deploy({ serviceId: b.serviceId })],
        ["ListDeployments", () => a.services.listDeployments({ serviceId: b.serviceId })],
        ["GetDeployment", () => a.services.getDeployment({ deploymentId: b.deploymentId })],
        ["Rollback", () => a.services.rollback({ serviceId: b.serviceId })],
        [
          "Rollback of their service to their deployment",
          () => a.services.rollback({ serviceId: b.serviceId, deploymentId: b.deploymentId }),
        ],
        [
          "Rollback of my service to their deployment",
          () => a.services.rollback({ serviceId: mine.serviceId, deploymentId: b.deploymentId }),
        ],
        ["ListEvents", () => a.services.listEvents({ serviceId: b.serviceId })],
        ["WatchEvents", () => firstWatched(a, b.serviceId)],
        ...configCalls(a, b.productionId, b.serviceId),
      ];
      for (const [label, call] of calls) await refused(label, call, "resource.not_found");

      // Lists never show them.
      const projects = await a.projects.listProjects({});
      expect(projects.projects.map((p) => p.id)).not.toContain(b.projectId);
      expect((await a.services.listServices({ environmentId: b.productionId })).services).toEqual(
        [],
      );
      const events = (await a.services.listEvents({ limit: 500 })).events;
      const theirIds = [b.projectId, b.productionId, b.stagingId, b.serviceId, b.deploymentId];
      expect(events.filter((e) => theirIds.includes(e.subjectId))).toEqual([]);

      // And the other tenant still sees its own objects as they were.
      const still = await b.api.services.getService({ serviceId: b.serviceId });
      expect(still.service!.name).toBe("Web");
      expect(still.service!.desiredDeploymentId).toBe(b.deploymentId);
      const env = await b.api.config.getEffectiveConfig({ serviceId: b.serviceId });
      expect(env.entries.map((e) => e.key)).toEqual(["PLAIN", "SECRET"]);
    });

    it("malformed ids answer validation.failed naming the field", async () => {
      await refused(
        "GetService",
        () => a.services.getService({ serviceId: "not-a-uuid" }),
        "validation.failed",
        "service_id",
      );
      await refused(
        "CreateService",
        () => service("prod", "x"),
        "validation.failed",
        "environment_id",
      );
      await refused(
        "GetDeployment",
        () => a.services.getDeployment({ deploymentId: "1" }),
        "validation.failed",
        "deployment_id",
      );
      await refused(
        "Rollback",
        () => a.services.rollback({ serviceId: mine.serviceId, deploymentId: "latest" }),
        "validation.failed",
        "deployment_id",
      );
      await refused(
        "SetConfig",
        () =>
          a.config.setConfig({
            target: { scope: SVC, id: "web" },
            key: "K",
            value: "v",
            kind: ConfigKind.VARIABLE,
          }),
        "validation.failed",
        "target.id",
      );
      await refused(
        "ListEvents after_id",
        () => a.services.listEvents({ afterId: "yesterday" }),
        "validation.failed",
        "after_id",
      );
      await refused(
        "WatchEvents since_id",
        () => firstWatched(a, mine.serviceId, "yesterday"),
        "validation.failed",
        "since_id",
      );
      await refused(
        "CreateService server_id",
        () =>
          a.services.createService({
            environmentId: mine.productionId,
            name: "S",
            slug: "with-server",
            visibility: Visibility.PRIVATE,
            serverId: "server-1",
            spec: execSpec(),
          }),
        "validation.failed",
        "server_id",
      );
    });

    it("config keys with '=', a NUL byte, a dash, a leading digit, or over 256 characters are refused on field key", async () => {
      for (const key of ["A=B", "A\0B", "WITH-DASH", "1ABC", "", "K".repeat(257), "SP ACE"]) {
        await refused(
          `SetConfig ${JSON.stringify(key)}`,
          () =>
            a.config.setConfig({
              target: { scope: SVC, id: mine.serviceId },
              key,
              value: "v",
              kind: ConfigKind.SECRET,
            }),
          "validation.failed",
          "key",
        );
        await refused(
          `UnsetConfig ${JSON.stringify(key)}`,
          () => a.config.unsetConfig({ target: { scope: ENV, id: mine.productionId }, key }),
          "validation.failed",
          "key",
        );
        await refused(
          `RevealSecret ${JSON.stringify(key)}`,
          () => a.config.revealSecret({ target: { scope: SVC, id: mine.serviceId }, key }),
          "validation.failed",
          "key",
        );
      }
    });

    it("a value over 64 KiB (in bytes) or with a NUL byte is refused on field value; exactly 64 KiB is accepted", async () => {
      const set = (value: string) =>
        a.config.setConfig({
          target: { scope: SVC, id: mine.serviceId },
          key: "BIG",
          value,
          kind: ConfigKind.VARIABLE,
        });
      await refused("64 KiB + 1", () => set("x".repeat(65_537)), "validation.failed", "value");
      // 32,769 two-byte characters: under the limit in characters, over it in bytes.
      await refused("multibyte", () => set("é".repeat(32_769)), "validation.failed", "value");
      await refused("NUL", () => set("a\0b"), "validation.failed", "value");
      const ok = await set("x".repeat(65_536));
      expect(ok.entry!.value).toHaveLength(65_536);
    });

    it("a malformed .env import is refused whole, naming the line, and sets none of its keys", async () => {
      const imp = (dotenv: string) =>
        a.config.importConfig({ target: { scope: SVC, id: mine.serviceId }, dotenv });
      const cases: Array<[string, string, string]> = [
        ["a line without =", "GOOD_ONE=1\nJUST_A_WORD\n", "dotenv:2"],
        ["a line starting with =", "GOOD_ONE=1\n=novalue", "dotenv:2"],
        ["an invalid key", "# header\nGOOD_ONE=1\n1BAD=x", "dotenv:3"],
        ["a key with a dash", "GOOD_ONE=1\nMY-KEY=x", "dotenv:2"],
        ["a NUL in a value", "GOOD_ONE=1\nB=a\0b", "dotenv:2"],
        ["an oversized value", `GOOD_ONE=${"x".repeat(65_537)}`, "dotenv:1"],
        ["no entries", "# only a comment\n\n", "dotenv"],
        ["empty text", "", "dotenv"],
      ];
      for (const [label, text, field] of cases)
        await refused(label, () => imp(text), "validation.failed", field);
      const listed = await a.config.listConfig({ target: { scope: SVC, id: mine.serviceId } });
      expect(listed.entries.map((e) => e.key)).not.toContain("GOOD_ONE");
    });

    it("config targets need a known scope and kind: enum value 0 or unknown values are refused", async () => {
      await refused(
        "scope 0",
        () =>
          a.config.setConfig({
            target: { scope: ConfigScope.UNSPECIFIED, id: mine.serviceId },
            key: "K",
            value: "v",
            kind: ConfigKind.VARIABLE,
          }),
        "validation.failed",
        "target.scope",
      );
      await refused(
        "no target",
        () => a.config.listConfig({}),
        "validation.failed",
        "target.scope",
      );
      await refused(
        "unknown kind",
        () =>
          a.config.setConfig({
            target: { scope: SVC, id: mine.serviceId },
            key: "K",
            value: "v",
            kind: 99 as ConfigKind,
          }),
        "validation.failed",
        "kind",
      );
      // An environment id given as a service (and the reverse) is not found, not confused.
      await refused(
        "environment id as a service",
        () => a.config.listConfig({ target: { scope: SVC, id: mine.productionId } }),
        "resource.not_found",
      );
      await refused(
        "service id as an environment",
        () => a.config.listConfig({ target: { scope: ENV, id: mine.serviceId } }),
        "resource.not_found",
      );
      await refused(
        "reveal of a variable",
        () => a.config.revealSecret({ target: { scope: SVC, id: mine.serviceId }, key: "PLAIN" }),
        "resource.conflict",
        "key",
      );
    });

    it("a rollback to another service's deployment, or with nothing earlier, answers resource.conflict on deployment_id", async () => {
      const err = await refused(
        "another service's deployment",
        () =>
          a.services.rollback({
            serviceId: mine.serviceId,
            deploymentId: mine.otherDeploymentId,
          }),
        "resource.conflict",
        "deployment_id",
      );
      expect(Code[err.code]).toBe(Code[Code.FailedPrecondition]);
      // The service has one deployment: there is none before the desired one.
      await refused(
        "nothing earlier",
        () => a.services.rollback({ serviceId: mine.otherServiceId }),
        "resource.conflict",
        "deployment_id",
      );
      const { service: fresh } = await service(mine.stagingId, `fresh-${suffix()}`);
      await refused(
        "never deployed",
        () => a.services.rollback({ serviceId: fresh!.id }),
        "resource.conflict",
        "deployment_id",
      );
    });

    it("invalid spec fields are refused on CreateService and UpdateService, naming the field", async () => {
      const exec = execSpec();
      const cases: Array<[string, SpecInit, string]> = [
        ["no spec", undefined, "spec"],
        ["driver 0", { ...exec, driver: Driver.UNSPECIFIED }, "spec.driver"],
        ["driver 99", { ...exec, driver: 99 as Driver }, "spec.driver"],
        ["exec missing", { driver: Driver.EXEC }, "spec.exec"],
        ["no command", { ...exec, exec: { ...exec.exec, command: "" } }, "spec.exec.command"],
        ["port 70000", { ...exec, exec: { ...exec.exec, port: 70_000 } }, "spec.exec.port"],
        ["port -1", { ...exec, exec: { ...exec.exec, port: -1 } }, "spec.exec.port"],
        [
          "relative working directory",
          { ...exec, exec: { ...exec.exec, workingDirectory: "srv/app" } },
          "spec.exec.working_directory",
        ],
        [
          "NUL in an argument",
          { ...exec, exec: { ...exec.exec, args: ["a\0b"] } },
          "spec.exec.args[0]",
        ],
        ["docker missing", { driver: Driver.DOCKER }, "spec.docker"],
        [
          "bad docker image",
          { driver: Driver.DOCKER, docker: { image: "Not A Valid Image!", port: 80 } },
          "spec.docker.image",
        ],
        [
          "uppercase docker image",
          { driver: Driver.DOCKER, docker: { image: "Library/Nginx:1", port: 80 } },
          "spec.docker.image",
        ],
        [
          "docker port 65536",
          { driver: Driver.DOCKER, docker: { image: "nginx:1.27", port: 65_536 } },
          "spec.docker.port",
        ],
        [
          "http health check without a path",
          { ...exec, healthCheck: { type: "http", path: "" } },
          "spec.health_check.path",
        ],
        [
          "unknown health check type",
          { ...exec, healthCheck: { type: "udp" } },
          "spec.health_check.type",
        ],
        [
          "tcp health check without a port",
          { ...exec, exec: { ...exec.exec, port: 0 }, healthCheck: { type: "tcp" } },
          "spec.health_check.type",
        ],
        [
          "unknown restart policy",
          { ...exec, restartPolicy: 99 as RestartPolicy },
          "spec.restart_policy",
        ],
        [
          "bad volume name",
          { ...exec, volumes: [{ name: "Data", mountPath: "/data" }] },
          "spec.volumes[0].name",
        ],
        [
          "relative mount path",
          { ...exec, volumes: [{ name: "data", mountPath: "data" }] },
          "spec.volumes[0].mount_path",
        ],
        [
          "mount path used twice",
          {
            ...exec,
            volumes: [
              { name: "a", mountPath: "/data" },
              { name: "b", mountPath: "/data" },
            ],
          },
          "spec.volumes[1].mount_path",
        ],
      ];
      for (const [label, spec, field] of cases) {
        await refused(
          `create: ${label}`,
          () => service(mine.stagingId, "specced", spec),
          "validation.failed",
          field,
        );
        await refused(
          `update: ${label}`,
          () =>
            a.services.updateService({
              serviceId: mine.serviceId,
              name: "Web",
              visibility: Visibility.PRIVATE,
              spec,
            }),
          "validation.failed",
          field,
        );
      }
      // Visibility is an enum too: 0 and unknown values are refused.
      for (const visibility of [Visibility.UNSPECIFIED, 7 as Visibility]) {
        await refused(
          `visibility ${visibility}`,
          () =>
            a.services.createService({
              environmentId: mine.stagingId,
              name: "V",
              slug: "visible",
              visibility,
              spec: execSpec(),
            }),
          "validation.failed",
          "visibility",
        );
      }
      // The valid docker spec the cases vary is accepted.
      const ok: ServiceSpec | undefined = (
        await service(mine.stagingId, "docker-ok", {
          driver: Driver.DOCKER,
          docker: { image: "ghcr.io/acme/web:1.2.3", port: 8080 },
          healthCheck: { type: "tcp" },
        })
      ).service!.spec;
      expect(ok!.docker!.image).toBe("ghcr.io/acme/web:1.2.3");
    });

    it("out-of-range list limits are refused on field limit", async () => {
      for (const limit of [201, -1]) {
        await refused(
          `ListDeployments ${limit}`,
          () => a.services.listDeployments({ serviceId: mine.serviceId, limit }),
          "validation.failed",
          "limit",
        );
      }
      await refused(
        "ListEvents 501",
        () => a.services.listEvents({ limit: 501 }),
        "validation.failed",
        "limit",
      );
    });

    // Runs last: every refusal above was a typed error, none an internal one.
    it("no request above reached an internal error", () => {
      const rpcs = t.logs.filter((l) => l.msg === "rpc");
      expect(rpcs.length).toBeGreaterThan(100);
      expect(rpcs.filter((l) => l.code === "internal")).toEqual([]);
      expect(t.logs.filter((l) => (l.level as number) >= 50)).toEqual([]);
    });
  });
}

/** The config RPCs, each aimed at an environment or service id. */
function configCalls(
  a: Api,
  environmentId: string,
  serviceId: string,
): Array<[string, () => Promise<unknown>]> {
  const targets = [
    ["environment", { scope: ENV, id: environmentId }],
    ["service", { scope: SVC, id: serviceId }],
  ] as const;
  return [
    ...targets.flatMap(
      ([name, target]): Array<[string, () => Promise<unknown>]> => [
        [
          `SetConfig ${name}`,
          () => a.config.setConfig({ target, key: "K", value: "v", kind: ConfigKind.VARIABLE }),
        ],
        [`ImportConfig ${name}`, () => a.config.importConfig({ target, dotenv: "K=v\n" })],
        [`ListConfig ${name}`, () => a.config.listConfig({ target })],
        [`UnsetConfig ${name}`, () => a.config.unsetConfig({ target, key: "PLAIN" })],
        [`RevealSecret ${name}`, () => a.config.revealSecret({ target, key: "SECRET" })],
      ],
    ),
    ["GetEffectiveConfig", () => a.config.getEffectiveConfig({ serviceId })],
  ];
}

/** Opens WatchEvents and resolves with the first event; the stream's error rejects it. */
async function firstWatched(a: Api, serviceId: string, sinceId = ""): Promise<unknown> {
  const ac = new AbortController();
  try {
    for await (const r of a.services.watchEvents({ serviceId, sinceId }, { signal: ac.signal }))
      return r;
    return undefined;
  } finally {
    ac.abort();
  }
}
