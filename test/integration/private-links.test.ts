// Private links through the API on both engines, converged by the hub's controller with a
// `command` provisioner (test/fixtures/provisioner.mjs, a fake of the cloud speaking the real JSON
// contract): provisioned/failed per link, fixing a config moves the generation, a late result for
// an old generation is discarded, crashes and timeouts land on the data plane; authorization,
// the duplicate-identity message, and field errors per provider with nothing written.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Client, Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DataPlaneService, type PrivateLink } from "../../src/gen/flotilla/v1/dataplanes_pb.js";
import { Role } from "../../src/gen/flotilla/v1/identity_pb.js";
import { ServerService } from "../../src/gen/flotilla/v1/servers_pb.js";
import { DUPLICATE_IDENTITY, type ProvisionerConfig } from "../../src/hub/dataplanes/index.js";
import { ENGINES } from "../support/engines.js";
import {
  bootstrapOwner,
  clients,
  PASSWORD,
  randomEmail,
  signInToNewOrganization,
  startTestHub,
  type TestHub,
} from "../support/hub.js";

const FIXTURE = join(import.meta.dirname, "../fixtures/provisioner.mjs");

const AWS = {
  region: "us-east-1",
  az_ids: ["use1-az1", "use1-az9"],
  service_name: "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0",
};
const AZURE = { service_name: "sql.alias.azure.privatelinkservice", location: "eastus" };
const GCP = {
  service_attachment: "projects/acme/regions/us-central1/serviceAttachments/db",
  region: "us-central1",
  dns_zone_name: "db.internal.",
  dns_record_names: ["primary.db.internal."],
};

async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined>,
  ms = 30_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function failure(
  call: Promise<unknown>,
): Promise<{ code: Code; errorCode: string | null; field: string | null; message: string }> {
  try {
    await call;
  } catch (err) {
    const e = ConnectError.from(err);
    return {
      code: e.code,
      errorCode: e.metadata.get("flotilla-error-code"),
      field: e.metadata.get("flotilla-error-field"),
      message: e.rawMessage,
    };
  }
  throw new Error("the call succeeded");
}

for (const engine of ENGINES) {
  describe(`private links API [${engine}]`, () => {
    let t: TestHub;
    let dir: string;
    let owner: Client<typeof DataPlaneService>;
    let ownerToken: string;
    const as: Record<string, Client<typeof DataPlaneService>> = {};
    let other: Client<typeof DataPlaneService>;
    const api = (url: string, token: string) =>
      createClient(
        DataPlaneService,
        createConnectTransport({
          baseUrl: url,
          httpVersion: "1.1",
          interceptors: [
            (next) => async (req) => {
              req.header.set("authorization", `Bearer ${token}`);
              return next(req);
            },
          ],
        }),
      );

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), "flotilla-links-"));
      const command = (
        env: Record<string, string>,
        extra: Partial<ProvisionerConfig> = {},
      ): ProvisionerConfig => ({
        kind: "command",
        command: process.execPath,
        args: [FIXTURE],
        env,
        ...extra,
      });
      // The stuck provisioner waits in here for a go file nobody writes.
      mkdirSync(join(dir, "never"));
      t = await startTestHub(engine, {
        provisioners: {
          fixture: command({ FIXTURE_LOG: join(dir, "fixture.log") }),
          slow: command({ FIXTURE_LOG: join(dir, "slow.log"), FIXTURE_GATE_DIR: dir }),
          crash: command({ FIXTURE_MODE: "crash" }),
          garbage: command({ FIXTURE_MODE: "garbage" }),
          stuck: command(
            { FIXTURE_LOG: join(dir, "stuck.log"), FIXTURE_GATE_DIR: join(dir, "never") },
            { timeoutMs: 1000 },
          ),
        },
        dataPlaneController: {
          settleMs: 20,
          sweepIntervalMs: 250,
          backoff: { baseMs: 60_000, capMs: 60_000 },
        },
      });
      const { token } = await bootstrapOwner(t.hub);
      ownerToken = token;
      owner = api(t.hub.url, token);
      const orgs = clients(t.hub.url, { token }).orgs;
      for (const [role, proto] of [
        ["admin", Role.ADMIN],
        ["developer", Role.DEVELOPER],
        ["viewer", Role.VIEWER],
      ] as const) {
        const email = randomEmail(role);
        await orgs.addMember({ email, role: proto, initialPassword: PASSWORD });
        const login = await clients(t.hub.url).identity.login({ email, password: PASSWORD });
        as[role] = api(t.hub.url, login.sessionToken);
      }
      // Another tenant: someone who created their own organization.
      const email = randomEmail("other");
      const added = await orgs.addMember({ email, role: Role.VIEWER, initialPassword: PASSWORD });
      const first = await clients(t.hub.url).identity.login({ email, password: PASSWORD });
      other = api(
        t.hub.url,
        await signInToNewOrganization(t.hub.url, first.sessionToken, email, "Beta"),
      );
      await orgs.removeMember({ userId: added.member!.user!.id });
    });

    afterAll(async () => {
      await t?.stop();
      rmSync(dir, { recursive: true, force: true });
    });

    /** The user-owned part of each link: what a refused request must leave unchanged. */
    const desired = async (plane: string) =>
      (await links(plane)).map((l) => ({
        id: l.id,
        provider: l.provider,
        config: l.config,
        generation: l.generation,
      }));
    const links = async (plane: string) =>
      (await owner.listPrivateLinks({ dataPlane: plane })).privateLinks;
    const settled = (plane: string, n: number) =>
      waitFor(`${n} observed links on ${plane}`, async () => {
        const l = await links(plane);
        return l.length === n && l.every((x) => x.observedAt) ? l : undefined;
      });

    it("AWS, Azure and GCP links through a command provisioner: two provisioned with details, one failed with the reason; fixing it moves the generation, resets it to pending, and the next converge provisions it", async () => {
      await owner.createDataPlane({ name: "edge", region: "us-east-1", provisioner: "fixture" });
      const added: PrivateLink[] = [];
      for (const [provider, config] of [
        ["aws", AWS],
        ["azure", AZURE],
        ["gcp", GCP],
      ] as const)
        added.push(
          (await owner.addPrivateLink({ dataPlane: "edge", provider, config })).privateLink!,
        );
      expect(added.map((l) => [l.provider, l.status, Number(l.generation)])).toEqual([
        ["aws", "pending", 1],
        ["azure", "pending", 1],
        ["gcp", "pending", 1],
      ]);
      expect(added.map((l) => l.serviceIdentity)).toEqual([
        AWS.service_name,
        AZURE.service_name,
        GCP.service_attachment,
      ]);
      const seen = await settled("edge", 3);
      expect(seen.map((l) => [l.id, l.provider, l.status])).toEqual([
        [added[0]!.id, "aws", "failed"],
        [added[1]!.id, "azure", "provisioned"],
        [added[2]!.id, "gcp", "provisioned"],
      ]);
      expect(seen[0]!.error).toBe(
        `availability zone use1-az9 is not offered by ${AWS.service_name}`,
      );
      expect(seen[0]!.details).toBeUndefined();
      expect(seen[1]!.details).toEqual({
        endpoint: `azure-endpoint-${added[1]!.id.slice(-8)}.example.internal`,
        generation: 1,
      });
      expect(seen[2]!.error).toBe("");
      // The provisioner got every link with its id, generation and identity.
      const request = JSON.parse(
        readFileSync(join(dir, "fixture.log"), "utf8").trim().split("\n").at(-1)!,
      );
      expect(request).toMatchObject({
        version: 1,
        dataPlane: { name: "edge", region: "us-east-1" },
      });
      expect(
        request.links.map((l: { id: string; generation: number }) => [l.id, l.generation]),
      ).toEqual(added.map((l) => [l.id, 1]));

      const fixed = (
        await owner.updatePrivateLink({
          dataPlane: "edge",
          id: added[0]!.id,
          config: { ...AWS, az_ids: ["use1-az1", "use1-az2"] },
        })
      ).privateLink!;
      expect(fixed).toMatchObject({ generation: 2n, status: "pending", error: "" });
      expect(fixed.observedAt).toBeUndefined();
      const after = await waitFor("the fixed link provisioned", async () => {
        const l = (await links("edge"))[0]!;
        return l.status === "provisioned" ? l : undefined;
      });
      expect(after.generation).toBe(2n);
      expect(after.details).toMatchObject({ generation: 2 });
      const plane = (await owner.getDataPlane({ dataPlane: "edge" })).dataPlane!;
      expect(plane.provisioner).toBe("fixture");
      expect(plane.convergence).toMatchObject({ lastError: "", attempts: 0 });
      expect(plane.convergence!.converged).toBe(plane.convergence!.requested);
    });

    it("a late provisioner result for an old generation is discarded: a config change while a slow provisioner works leaves the link pending, and the next converge records the new generation", async () => {
      await owner.createDataPlane({ name: "slow", provisioner: "slow" });
      const link = (await owner.addPrivateLink({ dataPlane: "slow", provider: "gcp", config: GCP }))
        .privateLink!;
      await waitFor("run 1 started", async () =>
        existsSync(join(dir, "started-1")) ? true : undefined,
      );
      const changed = (
        await owner.updatePrivateLink({
          dataPlane: "slow",
          id: link.id,
          config: { ...GCP, all_ports: true },
        })
      ).privateLink!;
      expect(changed.generation).toBe(2n);
      writeFileSync(join(dir, "go-1"), "");
      // Run 1 answered for generation 1; the converge finished, and the link is still pending.
      await waitFor("converge 1 finished", async () => {
        const p = (await owner.getDataPlane({ dataPlane: "slow" })).dataPlane!;
        return p.convergence!.converged >= 1n ? true : undefined;
      });
      await waitFor("run 2 started", async () =>
        existsSync(join(dir, "started-2")) ? true : undefined,
      );
      const mid = (await links("slow"))[0]!;
      expect(mid).toMatchObject({ generation: 2n, status: "pending" });
      expect(mid.details).toBeUndefined();
      const runs = readFileSync(join(dir, "slow.log"), "utf8")
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l));
      expect(runs.map((r) => r.links[0].generation)).toEqual([1, 2]);
      writeFileSync(join(dir, "go-2"), "");
      const done = await waitFor("generation 2 provisioned", async () => {
        const l = (await links("slow"))[0]!;
        return l.status === "provisioned" ? l : undefined;
      });
      expect(done).toMatchObject({ generation: 2n, details: { generation: 2 } });
    });

    it("a provisioner that crashes, prints garbage or times out leaves the links' status in place and records the error (with the stderr tail) on the data plane", async () => {
      const cases: Array<[string, RegExp]> = [
        [
          "crash",
          /exited with code 3; stderr ends with: terraform apply: Error: creating VPC endpoint: UnauthorizedOperation/,
        ],
        ["garbage", /wrote output that is not JSON/],
        ["stuck", /timed out after 1 s and was killed/],
      ];
      for (const [provisioner, message] of cases) {
        await owner.createDataPlane({ name: `p-${provisioner}`, provisioner });
        await owner.addPrivateLink({
          dataPlane: `p-${provisioner}`,
          provider: "azure",
          config: AZURE,
        });
        const plane = await waitFor(`${provisioner}'s error`, async () => {
          const p = (await owner.getDataPlane({ dataPlane: `p-${provisioner}` })).dataPlane!;
          return p.convergence!.lastError ? p : undefined;
        });
        expect(plane.convergence!.lastError).toMatch(message);
        expect(plane.convergence!.attempts).toBe(1);
        expect(plane.convergence!.nextAttemptAt).toBeDefined();
        expect(plane.convergence!.converged).toBe(0n);
        const [l] = await links(`p-${provisioner}`);
        expect(l).toMatchObject({ status: "pending", error: "" });
        expect(l!.observedAt).toBeUndefined();
      }
    });

    it("a viewer lists data planes and links but cannot add, change or remove one; neither can a developer; an admin can", async () => {
      await owner.createDataPlane({ name: "roles" });
      const link = (
        await owner.addPrivateLink({ dataPlane: "roles", provider: "azure", config: AZURE })
      ).privateLink!;
      for (const role of ["viewer", "developer", "admin"]) {
        expect(
          (await as[role]!.listPrivateLinks({ dataPlane: "roles" })).privateLinks.map((l) => l.id),
        ).toEqual([link.id]);
        expect((await as[role]!.listDataPlanes({})).dataPlanes.map((p) => p.name)).toContain(
          "roles",
        );
      }
      for (const role of ["viewer", "developer"]) {
        const client = as[role]!;
        for (const call of [
          () => client.addPrivateLink({ dataPlane: "roles", provider: "gcp", config: GCP }),
          () =>
            client.updatePrivateLink({
              dataPlane: "roles",
              id: link.id,
              config: { ...AZURE, location: "westus" },
            }),
          () => client.removePrivateLink({ dataPlane: "roles", id: link.id }),
          () => client.createDataPlane({ name: `by-${role}` }),
        ])
          expect(await failure(call())).toMatchObject({
            code: Code.PermissionDenied,
            errorCode: "auth.permission_denied",
          });
      }
      expect((await links("roles")).map((l) => [l.id, l.generation])).toEqual([[link.id, 1n]]);
      const byAdmin = await as.admin!.addPrivateLink({
        dataPlane: "roles",
        provider: "gcp",
        config: GCP,
      });
      await as.admin!.removePrivateLink({ dataPlane: "roles", id: byAdmin.privateLink!.id });
    });

    it("another organization's caller gets not-found for the data plane and its links on every RPC, and nothing changes", async () => {
      const plane = (await owner.createDataPlane({ name: "private" })).dataPlane!;
      const link = (
        await owner.addPrivateLink({ dataPlane: plane.id, provider: "azure", config: AZURE })
      ).privateLink!;
      const before = await desired(plane.id);
      const theirs = (await other.createDataPlane({ name: "theirs" })).dataPlane!;
      const calls = [
        () => other.getDataPlane({ dataPlane: plane.id }),
        () => other.listPrivateLinks({ dataPlane: plane.id }),
        () => other.addPrivateLink({ dataPlane: plane.id, provider: "gcp", config: GCP }),
        () => other.updatePrivateLink({ dataPlane: plane.id, id: link.id, config: AZURE }),
        () => other.removePrivateLink({ dataPlane: plane.id, id: link.id }),
        // Their own data plane with our link's id: the link is not theirs either.
        () => other.updatePrivateLink({ dataPlane: theirs.id, id: link.id, config: AZURE }),
        () => other.removePrivateLink({ dataPlane: theirs.id, id: link.id }),
      ];
      for (const call of calls)
        expect(await failure(call())).toMatchObject({
          code: Code.NotFound,
          errorCode: "resource.not_found",
        });
      expect(await desired(plane.id)).toEqual(before);
      expect((await other.listDataPlanes({})).dataPlanes.map((p) => p.name)).not.toContain(
        "private",
      );
    });

    it("a duplicate service identity (added again, replayed, or updated into) gets the exact message and changes nothing; the same identity under another provider is another link", async () => {
      await owner.createDataPlane({ name: "dups" });
      const first = (
        await owner.addPrivateLink({ dataPlane: "dups", provider: "aws", config: AWS })
      ).privateLink!;
      const second = (
        await owner.addPrivateLink({
          dataPlane: "dups",
          provider: "aws",
          config: {
            ...AWS,
            service_name: "com.amazonaws.vpce.us-east-1.vpce-svc-0000000000000000b",
          },
        })
      ).privateLink!;
      const before = await desired("dups");
      for (const call of [
        () => owner.addPrivateLink({ dataPlane: "dups", provider: "aws", config: AWS }),
        () =>
          owner.addPrivateLink({
            dataPlane: "dups",
            provider: "aws",
            config: { ...AWS, az_ids: ["use1-az4"] },
          }),
        () => owner.updatePrivateLink({ dataPlane: "dups", id: second.id, config: AWS }),
      ])
        expect(await failure(call())).toEqual({
          code: Code.AlreadyExists,
          errorCode: "resource.already_exists",
          field: "config.service_name",
          message: DUPLICATE_IDENTITY,
        });
      expect(DUPLICATE_IDENTITY).toBe(
        "a private link with this service identity already exists on this data plane",
      );
      expect(await desired("dups")).toEqual(before);
      // Azure also names its identity service_name: a different provider, so a different link.
      const azure = await owner.addPrivateLink({
        dataPlane: "dups",
        provider: "azure",
        config: { service_name: AWS.service_name, location: "eastus" },
      });
      expect(azure.privateLink!.id).not.toBe(first.id);
    });

    const invalid: Array<[string, string, unknown, string]> = [
      ["an unknown provider", "oracle", AZURE, "provider"],
      ["no provider", "", AZURE, "provider"],
      ["no config", "aws", undefined, "config"],
      ["aws without region", "aws", { az_ids: ["use1-az1"], service_name: "svc" }, "config.region"],
      ["aws with a malformed region", "aws", { ...AWS, region: "US East" }, "config.region"],
      ["aws with az_ids not a list", "aws", { ...AWS, az_ids: "use1-az1" }, "config.az_ids"],
      ["aws with an empty az_ids", "aws", { ...AWS, az_ids: [] }, "config.az_ids"],
      [
        "aws with a malformed az id",
        "aws",
        { ...AWS, az_ids: ["use1-az1", "us-east-1a"] },
        "config.az_ids[1]",
      ],
      [
        "aws with a number for service_name",
        "aws",
        { ...AWS, service_name: 42 },
        "config.service_name",
      ],
      [
        "aws with an oversized service_name",
        "aws",
        { ...AWS, service_name: "s".repeat(300) },
        "config.service_name",
      ],
      ["aws with an unknown field", "aws", { ...AWS, vpc_id: "vpc-1" }, "config.vpc_id"],
      [
        "azure without location",
        "azure",
        { service_name: "x.azure.privatelinkservice" },
        "config.location",
      ],
      [
        "azure with an empty service_name",
        "azure",
        { ...AZURE, service_name: " " },
        "config.service_name",
      ],
      [
        "azure with a malformed dns_name",
        "azure",
        { ...AZURE, dns_name: "not a name" },
        "config.dns_name",
      ],
      ["azure with gcp's fields", "azure", GCP, "config.service_attachment"],
      [
        "gcp with a malformed service_attachment",
        "gcp",
        { ...GCP, service_attachment: "db" },
        "config.service_attachment",
      ],
      [
        "gcp without dns_zone_name",
        "gcp",
        { ...GCP, dns_zone_name: undefined },
        "config.dns_zone_name",
      ],
      [
        "gcp with no dns_record_names",
        "gcp",
        { ...GCP, dns_record_names: [] },
        "config.dns_record_names",
      ],
      [
        "gcp with a repeated dns record",
        "gcp",
        { ...GCP, dns_record_names: ["a.x.", "a.x."] },
        "config.dns_record_names",
      ],
      ["gcp with all_ports not a boolean", "gcp", { ...GCP, all_ports: "yes" }, "config.all_ports"],
    ];
    it("an invalid config gets a field error per provider (InvalidArgument, validation.failed, the offending field) and writes nothing", async () => {
      await owner.createDataPlane({ name: "strict" });
      const keep = (
        await owner.addPrivateLink({ dataPlane: "strict", provider: "gcp", config: GCP })
      ).privateLink!;
      const before = await desired("strict");
      const wrong: string[] = [];
      for (const [what, provider, config, field] of invalid) {
        const body = JSON.parse(JSON.stringify(config ?? null));
        const adds = await failure(
          owner.addPrivateLink({
            dataPlane: "strict",
            provider,
            ...(body ? { config: body } : {}),
          }),
        );
        if (
          adds.code !== Code.InvalidArgument ||
          adds.errorCode !== "validation.failed" ||
          adds.field !== field
        )
          wrong.push(`add ${what}: ${JSON.stringify(adds)}`);
        if (provider === "gcp") {
          const updates = await failure(
            owner.updatePrivateLink({
              dataPlane: "strict",
              id: keep.id,
              ...(body ? { config: body } : {}),
            }),
          );
          if (updates.errorCode !== "validation.failed" || updates.field !== field)
            wrong.push(`update ${what}: ${JSON.stringify(updates)}`);
        }
      }
      expect(wrong).toEqual([]);
      expect(await desired("strict")).toEqual(before);
    });

    it("malformed and unknown ids, a link of another data plane, and a stale expected generation are refused, changing nothing", async () => {
      await owner.createDataPlane({ name: "ids-a" });
      await owner.createDataPlane({ name: "ids-b" });
      const a = (
        await owner.addPrivateLink({ dataPlane: "ids-a", provider: "azure", config: AZURE })
      ).privateLink!;
      const before = await desired("ids-a");
      const cases: Array<[() => Promise<unknown>, Partial<Awaited<ReturnType<typeof failure>>>]> = [
        [
          () => owner.updatePrivateLink({ dataPlane: "ids-a", id: "not-a-uuid", config: AZURE }),
          { errorCode: "validation.failed", field: "id" },
        ],
        [
          () => owner.removePrivateLink({ dataPlane: "ids-a", id: "" }),
          { errorCode: "validation.failed", field: "id" },
        ],
        [
          () => owner.removePrivateLink({ dataPlane: "ids-a", id: crypto.randomUUID() }),
          { errorCode: "resource.not_found" },
        ],
        [
          () => owner.listPrivateLinks({ dataPlane: "no-such-plane" }),
          { errorCode: "resource.not_found" },
        ],
        [
          () => owner.listPrivateLinks({ dataPlane: "" }),
          { errorCode: "validation.failed", field: "data_plane" },
        ],
        [
          () => owner.removePrivateLink({ dataPlane: "ids-b", id: a.id }),
          { errorCode: "resource.not_found" },
        ],
        [
          () =>
            owner.updatePrivateLink({
              dataPlane: "ids-a",
              id: a.id,
              config: { ...AZURE, location: "westus" },
              expectedGeneration: 7n,
            }),
          { errorCode: "resource.conflict", field: "expected_generation" },
        ],
        [
          () => owner.createDataPlane({ name: "ids-a" }),
          { errorCode: "resource.already_exists", field: "name" },
        ],
        [
          () => owner.createDataPlane({ name: "x", provisioner: "nope" }),
          { errorCode: "validation.failed", field: "provisioner" },
        ],
      ];
      for (const [call, expected] of cases) expect(await failure(call())).toMatchObject(expected);
      expect(await desired("ids-a")).toEqual(before);
      expect(await links("ids-b")).toEqual([]);
      const ok = await owner.updatePrivateLink({
        dataPlane: "ids-a",
        id: a.id,
        config: { ...AZURE, location: "westus" },
        expectedGeneration: 1n,
      });
      expect(ok.privateLink!.generation).toBe(2n);
    });

    it("a data plane lists the servers that belong to it: an enrolled server belongs to the default one until pinned elsewhere", async () => {
      const servers = createClient(
        ServerService,
        createConnectTransport({
          baseUrl: t.hub.url,
          httpVersion: "1.1",
          interceptors: [
            (next) => async (req) => {
              req.header.set("authorization", `Bearer ${ownerToken}`);
              return next(req);
            },
          ],
        }),
      );
      const join = await servers.createJoinToken({ name: "box-1" });
      const joined = await fetch(`${t.hub.url}/agent/v1/join`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ token: join.token }),
      });
      const { server_id: serverId } = (await joined.json()) as { server_id: string };
      const east = (await owner.createDataPlane({ name: "east" })).dataPlane!;
      const planes = async () =>
        Object.fromEntries(
          (await owner.listDataPlanes({})).dataPlanes.map((p) => [
            p.name,
            p.servers.map((s) => s.name),
          ]),
        );
      expect(await planes()).toMatchObject({ default: ["box-1"], east: [] });
      await t.hub.db.query("UPDATE servers SET data_plane_id = $1 WHERE id = $2", [
        east.id,
        serverId,
      ]);
      expect(await planes()).toMatchObject({ default: [], east: ["box-1"] });
      expect((await owner.getDataPlane({ dataPlane: "east" })).dataPlane!.servers).toEqual([
        expect.objectContaining({ id: serverId, name: "box-1" }),
      ]);
    });

    it("/metrics counts the converges above by outcome, and the late result that was discarded", async () => {
      const text = await (await fetch(`${t.hub.url}/metrics`)).text();
      const value = (line: string) =>
        Number(text.match(new RegExp(`^${line} (\\S+)$`, "m"))?.[1] ?? 0);
      expect(value('flotilla_dataplane_converges_total\\{outcome="ok"\\}')).toBeGreaterThanOrEqual(
        3,
      );
      expect(
        value('flotilla_dataplane_converges_total\\{outcome="failed"\\}'),
      ).toBeGreaterThanOrEqual(3);
      expect(value("flotilla_dataplane_results_discarded_total")).toBeGreaterThanOrEqual(1);
      expect(text).toContain("flotilla_dataplane_converge_seconds_bucket");
    });

    it("no request in this suite reached an internal error, and the controller logged no failure other than the provisioners' own", () => {
      const errors = t.logs.filter((l) => Number(l.level) >= 50);
      expect(errors.map((l) => `${l.msg}: ${JSON.stringify(l.err ?? "")}`)).toEqual([]);
    });
  });
}
