// Two hub replicas (real processes) on one PostgreSQL converging the same data plane through a
// `command` provisioner (test/fixtures/provisioner.mjs) while link changes arrive at both: never
// two provisioner runs on the data plane at once (the fixture holds an exclusive file per data
// plane and records any overlap), one replica SIGKILLed while its provisioner runs, and in the
// end every link observed at its latest generation (nothing lost).
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/pg.js";
import { type FlotillaProcess, killAll, ROOT, SECRET_A, startFlotilla } from "./procs.js";

const ADMIN = { email: "planes@example.com", password: "planes-password-1" };
const LINKS = 24;

async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined>,
  ms = 60_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("two hub replicas converging one data plane", () => {
  let database: TestDatabase;
  let dir: string;
  const hubs: FlotillaProcess[] = [];
  let token: string;

  async function rpc(hub: FlotillaProcess, method: string, body: unknown) {
    const res = await fetch(`${hub.url}/flotilla.v1.DataPlaneService/${method}`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(15_000),
    });
    const json = (await res.json()) as Record<string, unknown>;
    if (res.status !== 200)
      throw new Error(`${method} on ${hub.url}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  }

  beforeAll(async () => {
    database = await createTestDatabase("mp_dataplanes");
    dir = mkdtempSync(join(tmpdir(), "flotilla-planes-"));
    const provisioners = {
      fixture: {
        kind: "command",
        command: process.execPath,
        args: [join(ROOT, "test/fixtures/provisioner.mjs")],
        env: {
          FIXTURE_LOG: join(dir, "runs.log"),
          FIXTURE_EXCLUSIVE_DIR: dir,
          FIXTURE_DELAY_MS: "150",
        },
      },
    };
    for (let i = 0; i < 2; i++) {
      const hub = await startFlotilla("hub", {
        env: {
          FLOTILLA_DATABASE_URL: database.url,
          FLOTILLA_SESSION_SECRET: SECRET_A,
          FLOTILLA_ADMIN_EMAIL: ADMIN.email,
          FLOTILLA_ADMIN_PASSWORD: ADMIN.password,
          FLOTILLA_PROVISIONERS: JSON.stringify(provisioners),
          // A dead replica's claim moves on after 2 s (the fixture answers within 150 ms).
          FLOTILLA_DATAPLANE_LEASE_MS: "2000",
          FLOTILLA_SWEEP_INTERVAL_MS: "300",
          FLOTILLA_LOG_LEVEL: "info",
        },
      });
      await hub.waitReady(60_000);
      hubs.push(hub);
    }
    const login = await fetch(`${hubs[0]!.url}/flotilla.v1.IdentityService/Login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(ADMIN),
    });
    token = ((await login.json()) as { sessionToken: string }).sessionToken;
  }, 120_000);

  afterAll(async () => {
    await killAll();
    await database?.drop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("only one replica converges the data plane at a time, a replica killed mid-converge loses nothing, and every link ends observed at its latest generation", async () => {
    const [a, b] = hubs as [FlotillaProcess, FlotillaProcess];
    await rpc(a, "CreateDataPlane", { name: "shared", provisioner: "fixture" });
    const config = (i: number, az: string) => ({
      region: "us-east-1",
      az_ids: [az],
      service_name: `com.amazonaws.vpce.us-east-1.vpce-svc-${String(i).padStart(4, "0")}`,
    });
    // Adds and updates spread over both replicas, four at a time.
    const ids: string[] = [];
    for (let i = 0; i < LINKS; i += 4) {
      const added = await Promise.all(
        [0, 1, 2, 3].map((k) =>
          rpc(hubs[(i + k) % 2]!, "AddPrivateLink", {
            dataPlane: "shared",
            provider: "aws",
            config: config(i + k, "use1-az1"),
          }),
        ),
      );
      ids.push(...added.map((r) => (r.privateLink as { id: string }).id));
    }
    // Kill the replica whose provisioner run is in flight (the fixture's exclusive file names its
    // parent, the hub), then keep changing links on the survivor.
    const generation = new Map(ids.map((id) => [id, 1]));
    let nudges = 0;
    const holder = await waitFor("a provisioner run in flight", async () => {
      const file = readdirSync(dir).find((f) => f.startsWith("inflight-"));
      const pid = file ? Number(readFileSync(join(dir, file), "utf8").trim() || 0) : 0;
      if (pid) return pid;
      // Every run finished already: change a link (through either replica) to start another.
      const id = ids[1]!;
      nudges++;
      await rpc(hubs[nudges % 2]!, "UpdatePrivateLink", {
        dataPlane: "shared",
        id,
        config: config(1, `use1-az${(nudges % 6) + 2}`),
      });
      generation.set(id, generation.get(id)! + 1);
      return undefined;
    });
    const victim = hubs.find((h) => h.pid === holder) ?? a;
    const survivor = victim === a ? b : a;
    victim.child.kill("SIGKILL");
    await victim.exited;
    for (let i = 0; i < LINKS; i += 2) {
      await rpc(survivor, "UpdatePrivateLink", {
        dataPlane: "shared",
        id: ids[i],
        config: config(i, "use1-az3"),
      });
      generation.set(ids[i]!, generation.get(ids[i]!)! + 1);
    }

    const links = await waitFor("every link observed at its latest generation", async () => {
      const plane = (await rpc(survivor, "GetDataPlane", { dataPlane: "shared" })).dataPlane as {
        convergence: { requested: string; converged?: string };
      };
      const list = (await rpc(survivor, "ListPrivateLinks", { dataPlane: "shared" }))
        .privateLinks as Array<{
        id: string;
        generation: string;
        status: string;
        details?: { generation: number };
      }>;
      const done =
        plane.convergence.converged === plane.convergence.requested &&
        list.length === LINKS &&
        list.every(
          (l) => l.status === "provisioned" && String(l.details?.generation) === l.generation,
        );
      return done ? list : undefined;
    });
    // Links added concurrently are listed in commit order: compare by id.
    const byId = (a: { id: string }, b: { id: string }) => a.id.localeCompare(b.id);
    expect(links.map((l) => ({ id: l.id, generation: l.generation })).sort(byId)).toEqual(
      ids.map((id) => ({ id, generation: String(generation.get(id)) })).sort(byId),
    );
    // Never two runs on the data plane at once, across both processes.
    expect(readdirSync(dir).filter((f) => f.startsWith("overlap-"))).toEqual([]);
    // The last run the provisioner saw is the final desired state.
    const runs = readFileSync(join(dir, "runs.log"), "utf8").trim().split("\n");
    const last = JSON.parse(runs.at(-1)!) as { links: Array<{ id: string; generation: number }> };
    expect(
      last.links.map((l) => ({ id: l.id, generation: String(l.generation) })).sort(byId),
    ).toEqual(ids.map((id) => ({ id, generation: String(generation.get(id)) })).sort(byId));
    expect(survivor.errorLogs()).toEqual([]);
  }, 180_000);
});
