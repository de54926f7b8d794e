// Private links on both engines: generation and observed-column reset on config changes, the
// trigger's durable converge request (never for the controller's own status writes), the legacy
// projection, and the controller (coalescing, late results discarded, failures and retries, one
// failing link not blocking the others, two controllers on one data plane).
import { expect, it } from "vitest";
import {
  type ConvergeReport,
  DATA_PLANES_CHANNEL,
  DataPlaneController,
  DataPlanesService,
  type LinkResult,
  localProvisioner,
  type PrivateLink,
  PrivateLinksService,
  type Provisioner,
  ProvisionerError,
  type ProvisionRequest,
} from "../../src/hub/dataplanes/index.js";
import { type Caller, createLogger, uuidv7 } from "../../src/shared/index.js";
import { type Db, openPostgres } from "../../src/store/index.js";
import { describeEachEngine } from "../support/engines.js";

const silent = createLogger({ level: "silent" });

async function organization(db: Db, slug: string): Promise<Caller> {
  const id = uuidv7();
  await db.query("INSERT INTO organizations (id, slug, name) VALUES ($1, $2, $3)", [
    id,
    slug,
    slug,
  ]);
  return { organizationId: id, actor: { type: "user", id: uuidv7() } };
}

const aws = (n: number | string, az = "use1-az1") => ({
  region: "us-east-1",
  az_ids: [az],
  service_name: `com.amazonaws.vpce.us-east-1.vpce-svc-${n}`,
});
const azure = (n: number | string) => ({
  service_name: `svc-${n}.azure.privatelinkservice`,
  location: "eastus",
});
const gcp = (n: number | string) => ({
  service_attachment: `projects/p/regions/us-central1/serviceAttachments/sa-${n}`,
  region: "us-central1",
  dns_zone_name: "db.internal.",
  dns_record_names: ["a.db.internal."],
});

async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined> | T | undefined,
  ms = 20_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function request(db: Db, planeId: string) {
  const { rows } = await db.query<{
    requested: number;
    converged: number;
    last_error: string | null;
    attempts: number;
  }>(
    "SELECT requested, converged, last_error, attempts FROM data_plane_converge_requests WHERE data_plane_id = $1",
    [planeId],
  );
  return rows[0]
    ? { ...rows[0], requested: Number(rows[0].requested), converged: Number(rows[0].converged) }
    : undefined;
}

/** A fake provisioner (the real ones are tested in test/integration): each run waits for release(). */
function gatedFake() {
  const runs: Array<{ request: ProvisionRequest; release: (r?: LinkResult[] | Error) => void }> =
    [];
  let concurrent = 0;
  let maxConcurrent = 0;
  const provisioner: Provisioner = {
    kind: "fake-gated",
    provision(request) {
      concurrent++;
      maxConcurrent = Math.max(maxConcurrent, concurrent);
      return new Promise<LinkResult[]>((resolve, reject) => {
        runs.push({
          request,
          release: (r) => {
            concurrent--;
            if (r instanceof Error) reject(r);
            else
              resolve(
                r ??
                  request.links.map((l) => ({
                    id: l.id,
                    status: "provisioned" as const,
                    details: { endpoint: `ep-${l.generation}` },
                  })),
              );
          },
        });
      });
    },
  };
  return { provisioner, runs, maxConcurrent: () => maxConcurrent };
}

describeEachEngine("private links", (store, engine) => {
  async function setup(slug: string, provisioners: Record<string, Provisioner> = {}) {
    const db = store();
    const planes = new DataPlanesService(db, () => ["local", ...Object.keys(provisioners)]);
    const links = new PrivateLinksService(db, planes);
    const c = await organization(db, slug);
    return { db, planes, links, c };
  }
  const controllers: DataPlaneController[] = [];
  function controller(
    db: Db,
    provisioners: Record<string, Provisioner>,
    extra: Partial<ConstructorParameters<typeof DataPlaneController>[0]> = {},
  ) {
    const reports: ConvergeReport[] = [];
    const ctl = new DataPlaneController({
      db,
      instanceId: `test-${controllers.length}`,
      provisioners: new Map([["local", localProvisioner()], ...Object.entries(provisioners)]),
      logger: silent,
      settleMs: 20,
      sweepIntervalMs: 200,
      backoff: { baseMs: 50, capMs: 200 },
      onConverge: (r) => reports.push(r),
      ...extra,
    });
    controllers.push(ctl);
    return { ctl, reports };
  }
  const stopAll = async () => {
    await Promise.all(controllers.splice(0).map((c) => c.close()));
  };

  it("a config change bumps the generation and resets the observed columns; the same config changes nothing", async () => {
    const { db, planes, links, c } = await setup("pl-gen");
    const plane = await planes.create(c, { name: "gen" });
    const link = await links.add(c, { dataPlane: plane.name, provider: "aws", config: aws(1) });
    expect(link).toMatchObject({
      generation: 1,
      status: "pending",
      serviceIdentity: aws(1).service_name,
    });
    // What the controller writes.
    await db.query(
      "UPDATE data_plane_private_links SET status = 'provisioned', details = '{\"endpoint\":\"x\"}', observed_at = now() WHERE id = $1",
      [link.id],
    );
    const same = await links.update(c, { dataPlane: plane.id, id: link.id, config: aws(1) });
    expect(same).toMatchObject({
      generation: 1,
      status: "provisioned",
      details: { endpoint: "x" },
    });
    const changed = await links.update(c, {
      dataPlane: plane.id,
      id: link.id,
      config: aws(1, "use1-az2"),
    });
    expect(changed).toMatchObject({
      generation: 2,
      status: "pending",
      details: null,
      error: null,
      observedAt: null,
    });
  });

  it("adds, changes and removals are audited and appended to the outbox as domain events; a same-config update is neither", async () => {
    const { db, planes, links, c } = await setup("pl-events");
    const plane = await planes.create(c, { name: "events" });
    const link = await links.add(c, { dataPlane: plane.id, provider: "aws", config: aws(1) });
    await links.update(c, { dataPlane: plane.id, id: link.id, config: aws(1) });
    await links.update(c, { dataPlane: plane.id, id: link.id, config: aws(1, "use1-az2") });
    await links.remove(c, { dataPlane: plane.id, id: link.id });
    const events = await db.query<{ type: string; payload: Record<string, unknown> }>(
      "SELECT type, payload FROM outbox_events WHERE subject_id = $1 ORDER BY id",
      [link.id],
    );
    expect(events.rows.map((e) => [e.type, e.payload.generation])).toEqual([
      ["private_link.added", 1],
      ["private_link.updated", 2],
      ["private_link.removed", 2],
    ]);
    expect(events.rows[0]!.payload).toMatchObject({ data_plane: "events", provider: "aws" });
    const audit = await db.query<{ action: string }>(
      "SELECT action FROM audit_log WHERE target_id = $1 ORDER BY id",
      [link.id],
    );
    expect(audit.rows.map((a) => a.action)).toEqual([
      "private_link.add",
      "private_link.update",
      "private_link.remove",
    ]);
  });

  it("the trigger: a status write by the controller records no converge request and sends no signal; a config change does both", async () => {
    const { db, planes, links, c } = await setup("pl-trig");
    const plane = await planes.create(c, { name: "trig" });
    const heard: string[] = [];
    const unlisten = await db.listen(DATA_PLANES_CHANNEL, (p) => heard.push(p));
    try {
      const link = await links.add(c, { dataPlane: plane.name, provider: "gcp", config: gcp(1) });
      await waitFor("the add's signal", () => heard.length === 1);
      expect(heard).toEqual([plane.id]);
      expect((await request(db, plane.id))?.requested).toBe(1);
      await db.query(
        "UPDATE data_plane_private_links SET status = 'failed', error = 'no', details = NULL, observed_at = now() WHERE id = $1",
        [link.id],
      );
      // A marker NOTIFY after the status write: once it arrives, any signal the write sent has too.
      await db.query("SELECT pg_notify($1, 'marker')", [DATA_PLANES_CHANNEL]);
      await waitFor("the marker", () => heard.includes("marker"));
      expect(heard).toEqual([plane.id, "marker"]);
      expect((await request(db, plane.id))?.requested).toBe(1);
      await links.update(c, {
        dataPlane: plane.name,
        id: link.id,
        config: { ...gcp(1), all_ports: true },
      });
      await waitFor("the update's signal", () => heard.length === 3);
      expect(heard[2]).toBe(plane.id);
      expect((await request(db, plane.id))?.requested).toBe(2);
      await links.remove(c, { dataPlane: plane.name, id: link.id });
      expect((await request(db, plane.id))?.requested).toBe(3);
    } finally {
      await unlisten();
    }
  });

  it("the projection keeps the legacy private_links array equal to the rows' configs, in creation order", async () => {
    const { db, planes, links, c } = await setup("pl-proj");
    const plane = await planes.create(c, { name: "proj" });
    const projection = async () =>
      (
        await db.query<{ private_links: unknown[] }>(
          "SELECT private_links FROM data_planes WHERE id = $1",
          [plane.id],
        )
      ).rows[0]!.private_links;
    const rows = async () =>
      (await links.list(c, plane.id)).links.map((l: PrivateLink) => l.config);
    const a = await links.add(c, { dataPlane: plane.id, provider: "aws", config: aws(1) });
    await links.add(c, { dataPlane: plane.id, provider: "azure", config: azure(1) });
    const g = await links.add(c, { dataPlane: plane.id, provider: "gcp", config: gcp(1) });
    expect(await projection()).toEqual(await rows());
    expect(await projection()).toEqual([aws(1), azure(1), gcp(1)]);
    await links.update(c, { dataPlane: plane.id, id: a.id, config: aws(1, "use1-az6") });
    await links.remove(c, { dataPlane: plane.id, id: g.id });
    expect(await projection()).toEqual(await rows());
    expect(await projection()).toEqual([aws(1, "use1-az6"), azure(1)]);
    // A refused write (a duplicate) leaves the projection alone too.
    await expect(
      links.add(c, { dataPlane: plane.id, provider: "azure", config: azure(1) }),
    ).rejects.toMatchObject({
      code: "resource.already_exists",
    });
    expect(await projection()).toEqual([aws(1, "use1-az6"), azure(1)]);
  });

  it("deleting a data plane takes its links and its converge request with it", async () => {
    const { db, planes, links, c } = await setup("pl-del");
    const plane = await planes.create(c, { name: "gone" });
    await links.add(c, { dataPlane: plane.id, provider: "aws", config: aws(1) });
    await links.add(c, { dataPlane: plane.id, provider: "gcp", config: gcp(1) });
    await db.query("DELETE FROM data_planes WHERE id = $1", [plane.id]);
    const count = async (sql: string) =>
      (await db.query<{ n: number }>(sql, [plane.id])).rows[0]!.n;
    expect(
      await count(
        "SELECT count(*)::int AS n FROM data_plane_private_links WHERE data_plane_id = $1",
      ),
    ).toBe(0);
    expect(
      await count(
        "SELECT count(*)::int AS n FROM data_plane_converge_requests WHERE data_plane_id = $1",
      ),
    ).toBe(0);
  });

  it("ten changes made while no controller runs make exactly one converge, which observes the latest generations", async () => {
    const { db, planes, links, c } = await setup("pl-ten");
    const plane = await planes.create(c, { name: "ten" });
    const first = await links.add(c, { dataPlane: plane.id, provider: "aws", config: aws(1) });
    for (let i = 2; i <= 10; i++)
      await links.update(c, { dataPlane: plane.id, id: first.id, config: aws(i) });
    expect((await request(db, plane.id))?.requested).toBe(10);
    const { ctl, reports } = controller(db, {});
    await ctl.start();
    const done = await waitFor("the converge", async () =>
      (await request(db, plane.id))?.converged === 10 ? true : undefined,
    );
    expect(done).toBe(true);
    const [link] = (await links.list(c, plane.id)).links;
    expect(link).toMatchObject({ generation: 10, status: "provisioned" });
    expect(link!.details).toMatchObject({
      provisioner: "local",
      endpoint: `local://aws/${aws(10).service_name}`,
    });
    expect(String(link!.details!.note)).toMatch(/nothing was provisioned/);
    expect(reports.filter((r) => r.dataPlaneId === plane.id)).toHaveLength(1);
    await stopAll();
  });

  it("changes during a converge make exactly one more converge; a late result for an old generation is discarded", async () => {
    const gate = gatedFake();
    const { db, planes, links, c } = await setup("pl-late", { gated: gate.provisioner });
    const plane = await planes.create(c, { name: "late", provisioner: "gated" });
    const link = await links.add(c, { dataPlane: plane.id, provider: "aws", config: aws(1) });
    const other = await links.add(c, { dataPlane: plane.id, provider: "azure", config: azure(1) });
    const { ctl, reports } = controller(db, { gated: gate.provisioner });
    await ctl.start();
    await waitFor("the first run", () => gate.runs.length === 1);
    expect(gate.runs[0]!.request.links.map((l) => [l.id, l.generation])).toEqual([
      [link.id, 1],
      [other.id, 1],
    ]);
    // Ten changes to one link while the provisioner works on generation 1.
    for (let i = 2; i <= 11; i++)
      await links.update(c, { dataPlane: plane.id, id: link.id, config: aws(i) });
    gate.runs[0]!.release();
    await waitFor("the first converge recorded", () => reports.length === 1);
    expect(reports[0]).toMatchObject({ ok: true, discarded: 1, applied: 1 });
    const mid = (await links.list(c, plane.id)).links;
    // The changed link keeps its reset status; the untouched one took its result.
    expect(mid[0]).toMatchObject({ generation: 11, status: "pending", details: null });
    expect(mid[1]).toMatchObject({
      generation: 1,
      status: "provisioned",
      details: { endpoint: "ep-1" },
    });
    await waitFor("exactly one more run", () => gate.runs.length === 2);
    expect(gate.runs[1]!.request.links.map((l) => l.generation)).toEqual([11, 1]);
    gate.runs[1]!.release();
    await waitFor("the second converge recorded", () => reports.length === 2);
    expect((await links.list(c, plane.id)).links[0]).toMatchObject({
      generation: 11,
      status: "provisioned",
      details: { endpoint: "ep-11" },
    });
    expect(await request(db, plane.id)).toMatchObject({ requested: 12, converged: 12 });
    // Nothing further is due: a sweep finds nothing and no third run starts.
    await ctl.sweep();
    expect(gate.runs).toHaveLength(2);
    await stopAll();
  });

  it("one failing link never blocks the others; a failed run keeps every status, records the error on the data plane and is retried", async () => {
    const gate = gatedFake();
    const { db, planes, links, c } = await setup("pl-fail", { gated: gate.provisioner });
    const plane = await planes.create(c, { name: "fail", provisioner: "gated" });
    const a = await links.add(c, { dataPlane: plane.id, provider: "aws", config: aws(1) });
    const b = await links.add(c, { dataPlane: plane.id, provider: "gcp", config: gcp(1) });
    const { ctl, reports } = controller(db, { gated: gate.provisioner });
    await ctl.start();
    await waitFor("run 1", () => gate.runs.length === 1);
    gate.runs[0]!.release([
      { id: a.id, status: "provisioned", details: { endpoint: "vpce-a" } },
      { id: b.id, status: "failed", error: "service attachment rejected the connection" },
    ]);
    await waitFor("converge 1", () => reports.length === 1);
    let rows = (await links.list(c, plane.id)).links;
    expect(rows.map((l) => [l.status, l.error])).toEqual([
      ["provisioned", null],
      ["failed", "service attachment rejected the connection"],
    ]);
    // The next run crashes: statuses stay, the data plane records why, and a retry follows.
    await links.update(c, {
      dataPlane: plane.id,
      id: b.id,
      config: { ...gcp(1), all_ports: true },
    });
    await waitFor("run 2", () => gate.runs.length === 2);
    gate.runs[1]!.release(
      new ProvisionerError("provisioner exited with code 2; stderr ends with: boom"),
    );
    await waitFor("failure recorded", async () =>
      (await request(db, plane.id))?.attempts === 1 ? true : undefined,
    );
    expect((await request(db, plane.id))?.last_error).toMatch(/exited with code 2.*boom/);
    rows = (await links.list(c, plane.id)).links;
    expect(rows.map((l) => l.status)).toEqual(["provisioned", "pending"]);
    await waitFor("the retry", () => gate.runs.length === 3);
    gate.runs[2]!.release();
    await waitFor("converge after retry", () => reports.filter((r) => r.ok).length === 2);
    expect(await request(db, plane.id)).toMatchObject({ attempts: 0, last_error: null });
    expect((await links.list(c, plane.id)).links.map((l) => l.status)).toEqual([
      "provisioned",
      "provisioned",
    ]);
    await stopAll();
  });

  it("after a failed run, a link change is tried at once (it may be the fix) rather than after the backoff", async () => {
    const gate = gatedFake();
    const { db, planes, links, c } = await setup("pl-fixnow", { gated: gate.provisioner });
    const plane = await planes.create(c, { name: "fixnow", provisioner: "gated" });
    const link = await links.add(c, { dataPlane: plane.id, provider: "aws", config: aws(1) });
    // A backoff of a minute: a run within this test can only come from the change.
    const { ctl } = controller(
      db,
      { gated: gate.provisioner },
      { backoff: { baseMs: 60_000, capMs: 60_000 } },
    );
    await ctl.start();
    await waitFor("run 1", () => gate.runs.length === 1);
    gate.runs[0]!.release(new ProvisionerError("provisioner exited with code 1"));
    await waitFor("the failure", async () =>
      (await request(db, plane.id))?.attempts === 1 ? true : undefined,
    );
    await links.update(c, { dataPlane: plane.id, id: link.id, config: aws(1, "use1-az2") });
    await waitFor("run 2", () => gate.runs.length === 2);
    gate.runs[1]!.release();
    await waitFor("provisioned", async () =>
      (await links.list(c, plane.id)).links[0]!.status === "provisioned" ? true : undefined,
    );
    expect(await request(db, plane.id)).toMatchObject({ attempts: 0, last_error: null });
    await stopAll();
  });

  it("links the provisioner reported pending are converged again after pendingRecheckMs, with no change", async () => {
    const gate = gatedFake();
    const { db, planes, links, c } = await setup("pl-recheck", { gated: gate.provisioner });
    const plane = await planes.create(c, { name: "recheck", provisioner: "gated" });
    const link = await links.add(c, { dataPlane: plane.id, provider: "azure", config: azure(1) });
    const { ctl } = controller(db, { gated: gate.provisioner }, { pendingRecheckMs: 100 });
    await ctl.start();
    await waitFor("run 1", () => gate.runs.length === 1);
    gate.runs[0]!.release([
      { id: link.id, status: "pending", details: { note: "awaiting approval" } },
    ]);
    await waitFor("run 2, from the recheck", () => gate.runs.length === 2);
    expect((await links.list(c, plane.id)).links[0]).toMatchObject({
      status: "pending",
      details: { note: "awaiting approval" },
    });
    gate.runs[1]!.release();
    await waitFor("provisioned", async () =>
      (await links.list(c, plane.id)).links[0]!.status === "provisioned" ? true : undefined,
    );
    // Nothing pending: no further run however many sweeps pass.
    const runs = gate.runs.length;
    await ctl.sweep();
    await ctl.sweep();
    expect(gate.runs).toHaveLength(runs);
    await stopAll();
  });

  it("a data plane naming a provisioner this hub lacks records that as its error, and links stay pending", async () => {
    const { db, planes, links, c } = await setup("pl-missing", { elsewhere: localProvisioner() });
    const plane = await planes.create(c, { name: "missing", provisioner: "elsewhere" });
    const { ctl } = controller(db, {});
    await ctl.start();
    await links.add(c, { dataPlane: plane.id, provider: "aws", config: aws(1) });
    const r = await waitFor("the error", async () =>
      (await request(db, plane.id))?.last_error ? request(db, plane.id) : undefined,
    );
    expect(r!.last_error).toMatch(/provisioner "elsewhere" is not configured on this hub/);
    expect((await links.list(c, plane.id)).links[0]!.status).toBe("pending");
    await stopAll();
  });

  if (engine === "postgres") {
    it("two controllers (two pools, as two replicas) never converge one data plane at the same time, and lose nothing", async () => {
      const gate = gatedFake();
      const { db, planes, links, c } = await setup("pl-two", { gated: gate.provisioner });
      const plane = await planes.create(c, { name: "two", provisioner: "gated" });
      // A second pool on the same database: its own connections, like another replica's.
      const url = (db as unknown as { pool: { options: { connectionString: string } } }).pool
        .options.connectionString;
      const other = openPostgres(url, { max: 3 });
      try {
        const one = controller(db, { gated: gate.provisioner });
        const two = controller(other, { gated: gate.provisioner });
        await one.ctl.start();
        await two.ctl.start();
        const added: string[] = [];
        for (let i = 0; i < 6; i++) {
          added.push(
            (await links.add(c, { dataPlane: plane.id, provider: "aws", config: aws(i) })).id,
          );
          // Release whatever run is waiting, so the two controllers race for every next claim.
          for (const run of gate.runs.splice(0)) run.release();
        }
        await waitFor("everything converged", async () => {
          for (const run of gate.runs.splice(0)) run.release();
          const r = await request(db, plane.id);
          return r && r.converged === r.requested && r.requested === 6 ? true : undefined;
        });
        expect(gate.maxConcurrent()).toBe(1);
        const statuses = (await links.list(c, plane.id)).links.map((l) => l.status);
        expect(statuses).toEqual(added.map(() => "provisioned"));
      } finally {
        await stopAll();
        await other.close();
      }
    });
  }
});
