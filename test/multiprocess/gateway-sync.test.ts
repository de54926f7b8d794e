// Gateways as real processes against a real hub: traffic through deployed APIs, a gateway killed
// while the hub moves on (serves its old set at once, then converges exactly), a hub unreachable
// at gateway start, the event stream cut mid-stream, and an invalid definition failing alone.
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import type { Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase, testPool } from "../support/pg.js";
import {
  ADMIN,
  eventually,
  type GatewayProcess,
  killGateways,
  rpc,
  startGatewayProcess,
  startUpstream,
} from "./gateway-procs.js";
import { CLI, type FlotillaProcess, killAll, ROOT, SECRET_A, startFlotilla } from "./procs.js";

/** Runs the CLI with --json; resolves with its exit code and parsed output. */
function cliJson(hubUrl: string, token: string, ...args: string[]) {
  return new Promise<{ code: number; out: unknown; stderr: string }>((resolve) => {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("FLOTILLA_")) env[k] = v;
    Object.assign(env, { FLOTILLA_HUB: hubUrl, FLOTILLA_TOKEN: token });
    execFile(
      process.execPath,
      [CLI, ...args, "--json"],
      { cwd: ROOT, env, timeout: 30_000 },
      (err, stdout, stderr) => {
        let out: unknown = null;
        try {
          out = JSON.parse(stdout);
        } catch {
          out = stdout;
        }
        resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, out, stderr });
      },
    );
  });
}

describe("gateway processes syncing with a real hub", () => {
  let database: TestDatabase;
  let db: pg.Pool;
  let hub: FlotillaProcess;
  let token: string;
  let dir: string;
  const upstreams: Server[] = [];
  let upstreamUrl: Record<string, string> = {};

  const hubEnv = () => ({
    FLOTILLA_DATABASE_URL: database.url,
    FLOTILLA_SESSION_SECRET: SECRET_A,
    FLOTILLA_ADMIN_EMAIL: ADMIN.email,
    FLOTILLA_ADMIN_PASSWORD: ADMIN.password,
    // The machine's PostgreSQL is shared by several test runs: a small pool is plenty here.
    FLOTILLA_DB_POOL_MAX: "4",
  });

  async function createGateway(name: string) {
    const r = await rpc(hub.url, "GatewayService/CreateGateway", { name }, token);
    return { id: (r.gateway as { id: string }).id, token: String(r.token) };
  }

  async function createRest(name: string, upstream: string, contextPath = `/${name}`) {
    const r = await rpc(
      hub.url,
      "ApiService/CreateApi",
      {
        name,
        kind: "API_KIND_REST_API",
        definitionJson: JSON.stringify({ contextPath, upstream: { url: upstream } }),
      },
      token,
    );
    return (r.api as { id: string }).id;
  }

  const deploy = (api: string, gateway: string) =>
    rpc(hub.url, "ApiService/DeployApi", { api, gateway }, token);
  const undeploy = (api: string, gateway: string) =>
    rpc(hub.url, "ApiService/UndeployApi", { api, gateway }, token);

  /** The hub's expected set for a gateway, straight from its table. */
  async function hubSet(gatewayId: string) {
    const { rows } = await db.query(
      `SELECT api_id AS "apiId", deployment_id AS "deploymentId", state,
              (extract(epoch FROM deployed_at) * 1000)::bigint::text AS "deployedAt"
       FROM api_deployments WHERE gateway_id = $1 ORDER BY api_id`,
      [gatewayId],
    );
    return rows.map((r) => ({ ...r, deployedAt: Number(r.deployedAt) }));
  }

  async function gatewaySet(gw: GatewayProcess) {
    const s = await gw.status();
    return s.deployments
      .map((d) => ({
        apiId: d.apiId,
        deploymentId: d.deploymentId,
        state: d.state,
        deployedAt: d.deployedAt,
      }))
      .sort((a, b) => (a.apiId < b.apiId ? -1 : 1));
  }

  async function converged(gw: GatewayProcess, gatewayId: string) {
    return eventually(async () => {
      const [a, b] = [await hubSet(gatewayId), await gatewaySet(gw)];
      return JSON.stringify(a) === JSON.stringify(b) ? a : null;
    }, "gateway converges to the hub's set");
  }

  const get = async (gw: GatewayProcess, path: string, headers: Record<string, string> = {}) => {
    const res = await fetch(`${gw.url}${path}`, { headers });
    const text = await res.text();
    return { status: res.status, body: text, headers: res.headers };
  };

  beforeAll(async () => {
    database = await createTestDatabase("mp_gateway");
    db = testPool(database.url, 3);
    dir = mkdtempSync(join(tmpdir(), "flotilla-gateways-"));
    hub = await startFlotilla("hub", { env: hubEnv() });
    await hub.waitReady(30_000);
    const login = await rpc(hub.url, "IdentityService/Login", ADMIN);
    token = String(login.sessionToken);
    for (const name of ["a", "b", "c", "d"]) {
      const u = await startUpstream(name);
      upstreams.push(u.server);
      upstreamUrl = { ...upstreamUrl, [name]: u.url };
    }
  }, 120_000);

  afterAll(async () => {
    await killGateways();
    await killAll();
    for (const s of upstreams) s.close();
    await db?.end();
    await database?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("three deployed APIs serve; killed while the hub changes, the gateway serves its old set at once and converges exactly", async () => {
    const gw = await createGateway("edge-restart");
    const api1 = await createRest("orders", upstreamUrl.a!);
    const api2 = await createRest("users", upstreamUrl.b!);
    const api3 = await createRest("carts", upstreamUrl.c!);
    const api4 = await createRest("search", upstreamUrl.d!);
    for (const api of [api1, api2, api3]) await deploy(api, gw.id);
    const dataDir = join(dir, "edge-restart");
    let g = await startGatewayProcess({ hub: hub.url, token: gw.token, dataDir });
    await converged(g, gw.id);
    const first = await get(g, "/orders/list?x=1", { "x-correlation-id": "corr-123" });
    expect(first.status).toBe(200);
    const echoed = JSON.parse(first.body);
    expect(echoed).toMatchObject({ upstream: "a", path: "/list?x=1" });
    // Context crosses the hop: the correlation id as sent, a traceparent generated.
    expect(echoed.headers["x-correlation-id"]).toBe("corr-123");
    expect(echoed.headers.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    expect((await get(g, "/users/1")).body).toContain('"upstream":"b"');
    expect((await get(g, "/carts")).body).toContain('"upstream":"c"');
    expect((await get(g, "/nothing")).status).toBe(404);

    await g.kill("SIGKILL");
    // While it is down: deploy a fourth, undeploy the first, redeploy the second.
    await deploy(api4, gw.id);
    await undeploy(api1, gw.id);
    const before = (await hubSet(gw.id)).find((r) => r.apiId === api2)!;
    await deploy(api2, gw.id);
    const after = (await hubSet(gw.id)).find((r) => r.apiId === api2)!;
    expect(after.deploymentId).not.toBe(before.deploymentId);
    expect(after.deployedAt).toBeGreaterThan(before.deployedAt);

    g = await startGatewayProcess({ hub: hub.url, token: gw.token, dataDir });
    // The old set was compiled and served before the hub was asked anything.
    expect(g.startup.routes).toBe(3);
    await converged(g, gw.id);
    expect((await get(g, "/orders/list")).status).toBe(404);
    expect((await get(g, "/search/q")).body).toContain('"upstream":"d"');
    expect((await get(g, "/users/1")).body).toContain('"upstream":"b"');
    expect((await g.status()).routes).toBe(3);
    await g.kill("SIGTERM");
  }, 90_000);

  it("with the hub unreachable at start the gateway serves from its store, and converges when the hub returns", async () => {
    const gw = await createGateway("edge-offline");
    const api1 = await createRest("offline-one", upstreamUrl.a!);
    const api2 = await createRest("offline-two", upstreamUrl.b!);
    await deploy(api1, gw.id);
    const dataDir = join(dir, "edge-offline");
    let g = await startGatewayProcess({ hub: hub.url, token: gw.token, dataDir });
    await converged(g, gw.id);
    await g.kill("SIGKILL");
    await undeploy(api1, gw.id);
    await deploy(api2, gw.id);
    const port = hub.port;
    const grpcPort = hub.grpcPort;
    await hub.stop();

    g = await startGatewayProcess({ hub: hub.url, token: gw.token, dataDir });
    // No hub: the stored set serves.
    expect((await get(g, "/offline-one/x")).body).toContain('"upstream":"a"');
    expect((await g.ready()).status).toBe("ready");

    hub = await startFlotilla("hub", { env: hubEnv(), port, grpcPort });
    await hub.waitReady(30_000);
    await converged(g, gw.id);
    expect((await get(g, "/offline-one/x")).status).toBe(404);
    expect((await get(g, "/offline-two/x")).body).toContain('"upstream":"b"');
    await g.kill("SIGTERM");
  }, 120_000);

  it("a WebSocket drop mid-stream is repaired by the reconcile on reconnect", async () => {
    const gw = await createGateway("edge-drop");
    const g = await startGatewayProcess({
      hub: hub.url,
      token: gw.token,
      dataDir: join(dir, "edge-drop"),
    });
    await eventually(async () => (await g.ready()).hubConnected === true, "stream connected");
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) ids.push(await createRest(`burst-${i}`, upstreamUrl.a!));
    for (let i = 0; i < ids.length; i++) {
      await deploy(ids[i]!, gw.id);
      if (i === 5) await fetch(`${g.adminUrl}/drop-stream`, { method: "POST" });
    }
    await converged(g, gw.id);
    // The stream came back, and its connect ran a reconcile.
    const connects = g.logs().filter((r) => r.msg === "event stream connected").length;
    expect(connects).toBeGreaterThanOrEqual(2);
    expect((await get(g, "/burst-11/")).body).toContain('"upstream":"a"');
    await g.kill("SIGTERM");
  }, 90_000);

  it("an invalid API definition fails alone, reported as its observed status; the others serve", async () => {
    const gw = await createGateway("edge-invalid");
    const good = await createRest("good-api", upstreamUrl.a!);
    const bad = await createRest("bad-api", upstreamUrl.b!);
    await deploy(good, gw.id);
    await deploy(bad, gw.id);
    // A definition the hub's checks would refuse, written underneath them (an older hub, a bug).
    await db.query(
      `UPDATE api_deployments SET content = jsonb_set(content, '{definition,contextPath}', '"no-slash"')
       WHERE api_id = $1`,
      [bad],
    );
    const g = await startGatewayProcess({
      hub: hub.url,
      token: gw.token,
      dataDir: join(dir, "edge-invalid"),
    });
    await converged(g, gw.id);
    expect((await get(g, "/good-api/x")).body).toContain('"upstream":"a"');
    expect((await get(g, "/bad-api/x")).status).toBe(404);
    const listed = await eventually(async () => {
      const r = await rpc(hub.url, "ApiService/ListApiDeployments", { gateway: gw.id }, token);
      const rows = r.deployments as Array<Record<string, string>>;
      return rows.every((d) => d.observedStatus) ? rows : null;
    }, "both deployments reported");
    const byApi = Object.fromEntries(listed.map((d) => [d.apiId, d]));
    expect(byApi[good]).toMatchObject({ observedStatus: "deployed" });
    expect(byApi[bad]).toMatchObject({ observedStatus: "failed" });
    expect(byApi[bad]!.observedReason).toContain("contextPath");
    await g.kill("SIGTERM");
  }, 90_000);

  it("the CLI registers a gateway, creates and deploys an API, and lists its observed status", async () => {
    const created = await cliJson(hub.url, token, "gateways", "create", "edge-cli");
    expect(created.code, created.stderr).toBe(0);
    const gw = created.out as { id: string; token: string; command: string };
    expect(gw.token).toMatch(/^fgw_/);
    expect(gw.command).toContain("flotilla gateway --hub");
    const defFile = join(dir, "cli-def.json");
    writeFileSync(
      defFile,
      JSON.stringify({ contextPath: "/cli", upstream: { url: upstreamUrl.c } }),
    );
    const api = await cliJson(
      hub.url,
      token,
      "apis",
      "create",
      "cli-api",
      "--kind",
      "rest",
      "--definition",
      `@${defFile}`,
    );
    expect(api.code, api.stderr).toBe(0);
    const deployed = await cliJson(
      hub.url,
      token,
      "apis",
      "deploy",
      "cli-api",
      "--gateway",
      "edge-cli",
    );
    expect(deployed.code, deployed.stderr).toBe(0);
    expect(deployed.out).toMatchObject({ state: "DEPLOYED" });
    const g = await startGatewayProcess({
      hub: hub.url,
      token: gw.token,
      dataDir: join(dir, "edge-cli"),
    });
    await converged(g, gw.id);
    expect((await get(g, "/cli/x")).body).toContain('"upstream":"c"');
    const listed = await eventually(async () => {
      const r = await cliJson(hub.url, token, "apis", "deployments", "--gateway", "edge-cli");
      const rows = r.out as Array<{ observedStatus?: string }>;
      return rows[0]?.observedStatus === "deployed" ? rows : null;
    }, "observed status listed");
    expect(listed).toHaveLength(1);
    const bad = await cliJson(
      hub.url,
      token,
      "apis",
      "create",
      "x",
      "--kind",
      "soap",
      "--definition",
      "{}",
    );
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain("--kind");
    await g.kill("SIGTERM");
  }, 90_000);
});
