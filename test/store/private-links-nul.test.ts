// A provisioner's output the store refuses never wedges a data plane: NUL bytes in details, errors
// and the stderr tail are stripped (test/fixtures/provisioner-nul.mjs prints them), and a write of
// the results that fails anyway is a failed run: the error recorded, the retry after the backoff.
import { join } from "node:path";
import { expect, it } from "vitest";
import {
  type ConvergeReport,
  commandProvisioner,
  DataPlaneController,
  DataPlanesService,
  type LinkResult,
  localProvisioner,
  PrivateLinksService,
  type Provisioner,
} from "../../src/hub/dataplanes/index.js";
import { type Caller, createLogger, uuidv7 } from "../../src/shared/index.js";
import type { Db } from "../../src/store/index.js";
import { eventually } from "../support/core.js";
import { describeEachEngine } from "../support/engines.js";

const FIXTURE = join(import.meta.dirname, "../fixtures/provisioner-nul.mjs");
const silent = createLogger({ level: "silent" });

const aws = (n: number) => ({
  region: "us-east-1",
  az_ids: ["use1-az1"],
  service_name: `com.amazonaws.vpce.us-east-1.vpce-svc-${n}`,
});

async function organization(db: Db, slug: string): Promise<Caller> {
  const id = uuidv7();
  await db.query("INSERT INTO organizations (id, slug, name) VALUES ($1, $2, $3)", [
    id,
    slug,
    slug,
  ]);
  return { organizationId: id, actor: { type: "user", id: uuidv7() } };
}

async function convergeRequest(db: Db, planeId: string) {
  const { rows } = await db.query<{
    requested: string;
    converged: string;
    last_error: string | null;
    attempts: number;
    claimed_by: string | null;
    retry_later: boolean;
  }>(
    `SELECT requested, converged, last_error, attempts, claimed_by,
            next_attempt_at > now() AS retry_later
     FROM data_plane_converge_requests WHERE data_plane_id = $1`,
    [planeId],
  );
  return rows[0]!;
}

const nulFixture = (mode: "results" | "stderr"): Provisioner =>
  commandProvisioner({
    command: process.execPath,
    args: [FIXTURE],
    env: { FIXTURE_NUL: mode },
    timeoutMs: 30_000,
  });

describeEachEngine("provisioner output the store refuses", (store) => {
  async function run(
    slug: string,
    provisioner: Provisioner,
    linkCount: number,
    before?: (db: Db) => Promise<void>,
  ) {
    const db = store();
    const planes = new DataPlanesService(db, () => ["local", "under-test"]);
    const links = new PrivateLinksService(db, planes);
    const c = await organization(db, slug);
    const plane = await planes.create(c, { name: slug, provisioner: "under-test" });
    for (let n = 1; n <= linkCount; n++)
      await links.add(c, { dataPlane: plane.id, provider: "aws", config: aws(n) });
    await before?.(db);
    const reports: ConvergeReport[] = [];
    const ctl = new DataPlaneController({
      db,
      instanceId: `nul-${slug}`,
      provisioners: new Map([
        ["local", localProvisioner()],
        ["under-test", provisioner],
      ]),
      logger: silent,
      settleMs: 20,
      sweepIntervalMs: 200,
      // A backoff of a minute: a second run within the test could only be a rerun every lease.
      backoff: { baseMs: 60_000, capMs: 60_000 },
      onConverge: (r) => reports.push(r),
    });
    await ctl.start();
    return { db, links, c, plane, ctl, reports };
  }

  it("NUL bytes in a provisioner's details and errors are stripped and the results recorded", async () => {
    const { db, links, c, plane, ctl } = await run("nul-results", nulFixture("results"), 2);
    try {
      await eventually(
        async () => {
          const r = await convergeRequest(db, plane.id);
          return Number(r.converged) >= Number(r.requested) || r.last_error !== null;
        },
        20_000,
        "the converge recorded",
      );
      const r = await convergeRequest(db, plane.id);
      expect(r).toMatchObject({ last_error: null, attempts: 0 });
      const rows = (await links.list(c, plane.id)).links;
      expect(rows.map((l) => [l.status, l.details, l.error])).toEqual([
        ["provisioned", { endpoint: "vpce-abc", tags: ["ab"] }, null],
        ["failed", null, "quota exceeded"],
      ]);
    } finally {
      await ctl.close();
    }
  });

  it("NUL bytes in a failing provisioner's stderr tail are stripped and the failure recorded, with the backoff", async () => {
    const { db, plane, ctl, reports } = await run("nul-stderr", nulFixture("stderr"), 1);
    try {
      const r = (await eventually(
        async () => {
          const r = await convergeRequest(db, plane.id);
          return r.attempts > 0 ? r : undefined;
        },
        20_000,
        "the failure recorded",
      ))!;
      expect(r.last_error).toMatch(
        /exited with code 2; stderr ends with: terraform: Error: binaryjunk in the plan/,
      );
      expect(r.last_error).not.toContain("\u0000");
      expect(r).toMatchObject({ attempts: 1, claimed_by: null, retry_later: true });
      expect(reports.filter((x) => !x.ok)).toHaveLength(1);
    } finally {
      await ctl.close();
    }
  });

  it("a write of the results the store refuses is a failed run: the claim released, the error recorded, the retry after the backoff", async () => {
    // The store refuses these results whatever their bytes: a trigger raises on one detail.
    const refused: Provisioner = {
      kind: "fake-refused",
      async provision(request): Promise<LinkResult[]> {
        return request.links.map((l) => ({
          id: l.id,
          status: "provisioned",
          details: { refuse_me: true },
        }));
      },
    };
    const { db, links, c, plane, ctl, reports } = await run("refused", refused, 1, (db) =>
      db.exec(`
        CREATE FUNCTION test_refuse_details() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.details ? 'refuse_me' THEN RAISE EXCEPTION 'the store refused the details'; END IF;
          RETURN NEW;
        END $$;
        CREATE TRIGGER test_refuse_details BEFORE UPDATE ON data_plane_private_links
          FOR EACH ROW EXECUTE FUNCTION test_refuse_details();
      `),
    );
    try {
      const r = (await eventually(
        async () => {
          const r = await convergeRequest(db, plane.id);
          return r.attempts > 0 ? r : undefined;
        },
        20_000,
        "the failure recorded",
      ))!;
      expect(r.last_error).toMatch(
        /recording the provisioner's results failed: .*the store refused the details/,
      );
      expect(r).toMatchObject({ attempts: 1, claimed_by: null, retry_later: true });
      expect(Number(r.converged)).toBeLessThan(Number(r.requested));
      expect(reports.filter((x) => !x.ok)).toHaveLength(1);
      expect((await links.list(c, plane.id)).links[0]!.status).toBe("pending");
    } finally {
      await ctl.close();
    }
  });
});
