// The data-plane controller: how long one converge of a data plane with 500 private links takes
// with the `local` provisioner (target < 2 s), and how many converges 1,000 rapid link changes
// cause (target at most 3), on PostgreSQL and on the embedded store (PGlite). Side by side in the
// same run: the naive alternatives the design avoids: writing the 500 statuses one UPDATE each,
// and the same 1,000 changes with no settle window (settleMs 0: coalescing only what arrives
// during a running converge). The controller is driven in this process from the compiled modules
// (dist/), against a throw-away database. Prints one JSON line on stdout.
import { randomUUID } from "node:crypto";
import { availableParallelism, loadavg } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";
import {
  createDatabase,
  distribution,
  progress,
  ROOT,
  requireBuild,
  round,
  runCleanups,
  settings,
} from "./lib/common.mjs";

requireBuild();
const dist = (p) => import(pathToFileURL(join(ROOT, "dist", "src", p)).href);
const { DataPlaneController, DataPlanesService, PrivateLinksService, localProvisioner } =
  await dist("hub/dataplanes/index.js");
const { migrate, openPglite, openPostgres } = await dist("store/index.js");
const { createLogger } = await dist("shared/index.js");

const LINKS = Number(process.env.BENCH_LINKS || 500);
const CHANGES = Number(process.env.BENCH_CHANGES || 1000);
const REPEATS = Number(process.env.BENCH_CONVERGES || 5);
/** Changes in flight at once during the burst (an API under load from several clients). */
const CONCURRENCY = 8;
const TARGETS = { convergeMs: 2000, convergesPer1000Changes: 3 };

const config = (i, az = 1) => ({
  region: "us-east-1",
  az_ids: [`use1-az${az}`],
  service_name: `com.amazonaws.vpce.us-east-1.vpce-svc-${String(i).padStart(6, "0")}`,
});

async function waitUntil(check, timeoutMs = 120_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function measure(engine, db) {
  await migrate(db);
  const logger = createLogger({ level: "silent" });
  const organizationId = randomUUID();
  await db.query("INSERT INTO organizations (id, slug, name) VALUES ($1, $2, $2)", [
    organizationId,
    `bench-${engine}`,
  ]);
  const caller = { organizationId, actor: { type: "user", id: randomUUID() } };
  const planes = new DataPlanesService(db);
  const links = new PrivateLinksService(db, planes);
  const state = async (planeId) =>
    (
      await db.query(
        "SELECT requested, converged FROM data_plane_converge_requests WHERE data_plane_id = $1",
        [planeId],
      )
    ).rows[0];

  // 500 links on one data plane, added before any controller runs.
  const plane = await planes.create(caller, { name: "bench" });
  const ids = [];
  const addStart = performance.now();
  for (let i = 0; i < LINKS; i++)
    ids.push(
      (await links.add(caller, { dataPlane: plane.id, provider: "aws", config: config(i) })).id,
    );
  const addMs = performance.now() - addStart;
  progress(`${engine}: ${LINKS} links added in ${Math.round(addMs)} ms`);

  const run = async (settleMs, body) => {
    const reports = [];
    const controller = new DataPlaneController({
      db,
      instanceId: `bench-${engine}`,
      provisioners: new Map([["local", localProvisioner()]]),
      logger,
      settleMs,
      onConverge: (r) => reports.push({ ...r, at: performance.now() }),
    });
    await controller.start();
    try {
      return await body(reports);
    } finally {
      await controller.close();
    }
  };
  const settled = async () => {
    await waitUntil(async () => {
      const s = await state(plane.id);
      return s && Number(s.converged) === Number(s.requested);
    });
  };

  // Converge time: the first converge (500 new links), then REPEATS converges each started by
  // one change (every converge hands all 500 links to the provisioner and records all 500).
  const converge = await run(200, async (reports) => {
    await settled();
    const first = reports[0];
    const endToEnd = [];
    for (let k = 0; k < REPEATS; k++) {
      const before = reports.length;
      const t0 = performance.now();
      await links.update(caller, {
        dataPlane: plane.id,
        id: ids[k],
        config: config(k, 2 + (k % 5)),
      });
      await waitUntil(() => reports.length > before);
      endToEnd.push(reports.at(-1).at - t0);
    }
    const all = await links.list(caller, plane.id);
    return {
      firstMs: round(first.ms, 1),
      convergeMs: distribution(reports.slice(1).map((r) => r.ms)),
      changeToObservedMs: distribution(endToEnd),
      allProvisioned: all.links.every((l) => l.status === "provisioned"),
    };
  });
  progress(`${engine}: converge of ${LINKS} links: ${JSON.stringify(converge.convergeMs)}`);

  // The peer: the same 500 status writes as one UPDATE per link (a naive controller).
  const naiveStart = performance.now();
  await db.tx(async (tx) => {
    for (const id of ids)
      await tx.query(
        "UPDATE data_plane_private_links SET status = 'provisioned', observed_at = now() WHERE id = $1",
        [id],
      );
  });
  const naivePerLinkUpdatesMs = performance.now() - naiveStart;

  // 1,000 rapid changes, CONCURRENCY at a time, cycling over the links.
  const burst = (settleMs) =>
    run(settleMs, async (reports) => {
      await settled();
      const before = reports.length;
      const start = performance.now();
      let next = 0;
      const worker = async () => {
        while (next < CHANGES) {
          const n = next++;
          await links.update(caller, {
            dataPlane: plane.id,
            id: ids[n % LINKS],
            config: config(n % LINKS, 2 + ((settleMs + n) % 7)),
          });
        }
      };
      await Promise.all(Array.from({ length: CONCURRENCY }, worker));
      const changesMs = performance.now() - start;
      await settled();
      return {
        changes: CHANGES,
        changesMs: round(changesMs, 0),
        converges: reports.length - before,
        lastObservedAfterMs: round(reports.at(-1).at - start, 0),
      };
    });
  const rapid = await burst(200);
  progress(`${engine}: ${CHANGES} changes -> ${rapid.converges} converges`);
  const rapidNoSettle = await burst(0);
  progress(`${engine}: ${CHANGES} changes with settleMs 0 -> ${rapidNoSettle.converges} converges`);
  return {
    links: LINKS,
    addLinksMs: round(addMs, 0),
    converge,
    naivePerLinkUpdatesMs: round(naivePerLinkUpdatesMs, 1),
    rapidChanges: rapid,
    rapidChangesNoSettle: rapidNoSettle,
  };
}

const figures = {
  bench: "dataplanes",
  cores: availableParallelism(),
  loadavg: loadavg().map((l) => round(l, 2)),
  targets: TARGETS,
};
let failed = false;
try {
  const { url } = await createDatabase(settings().pgAdminUrl);
  const pgDb = openPostgres(url);
  try {
    figures.postgres = await measure("postgres", pgDb);
  } catch (err) {
    failed = true;
    figures.postgres = { error: String(err?.message ?? err) };
  } finally {
    await pgDb.close();
  }
  const embedded = await openPglite("memory://");
  try {
    figures.pglite = await measure("pglite", embedded);
  } catch (err) {
    failed = true;
    figures.pglite = { error: String(err?.message ?? err) };
  } finally {
    await embedded.close();
  }
} finally {
  await runCleanups();
}
process.stdout.write(`${JSON.stringify(figures)}\n`);
process.exit(failed ? 1 : 0);
