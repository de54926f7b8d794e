// `flotilla up` runs a gateway too: a PUBLIC service deployed on the embedded default is reachable
// through it at <service>-<env>-<project>.localhost, and stops being reachable once it turns PRIVATE.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually } from "./gateway-procs.js";
import { type FlotillaProcess, freePorts, killAll, ROOT, startFlotilla } from "./procs.js";

const ADMIN = { email: "up-gw@example.com", password: "up-gw-password-1" };

/** GET through the gateway with a Host header (fetch may not set one). */
function viaGateway(
  port: number,
  host: string,
  path = "/",
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, headers: { host } }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (c: string) => {
        body += c;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

describe("flotilla up with its local gateway", () => {
  let dir: string;
  let up: FlotillaProcess;
  let token: string;
  let gatewayPort: number;
  const marker = `flotilla-gw-up-${randomBytes(4).toString("hex")}`;

  async function rpc(path: string, body: unknown) {
    const res = await fetch(`${up.url}/flotilla.v1.${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
    const json = (await res.json()) as Record<string, never>;
    if (res.status !== 200) throw new Error(`${path}: ${res.status} ${JSON.stringify(json)}`);
    // biome-ignore lint/suspicious/noExplicitAny: a JSON document of any shape
    return json as Record<string, any>;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "flotilla-gw-up-"));
    gatewayPort = (await freePorts(1))[0]!;
    up = await startFlotilla("up", {
      args: ["--data-dir", join(dir, "data"), "--gateway-port", String(gatewayPort)],
      env: { FLOTILLA_ADMIN_EMAIL: ADMIN.email, FLOTILLA_ADMIN_PASSWORD: ADMIN.password },
    });
    await up.waitReady(60_000);
    await up.waitForLog((r) => r.msg === "local gateway serving", 30_000);
    const login = await fetch(`${up.url}/flotilla.v1.IdentityService/Login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(ADMIN),
    });
    token = ((await login.json()) as { sessionToken: string }).sessionToken;
  }, 120_000);

  afterAll(async () => {
    await killAll();
    // Workloads outlive their agent by design (the next start adopts them): end this test's own.
    spawnSync("pkill", ["-KILL", "-f", marker]);
    rmSync(dir, { recursive: true, force: true });
  });

  it("a PUBLIC service on the embedded default is reachable through the gateway; PRIVATE is not", async () => {
    const project = await rpc("ProjectService/CreateProject", { name: "Site" });
    const spec = {
      driver: "DRIVER_EXEC",
      exec: {
        command: process.execPath,
        args: [join(ROOT, "examples", "hello-server.mjs"), marker],
        port: 8000,
      },
      healthCheck: { type: "http", path: "/healthz" },
    };
    const created = await rpc("ServicesService/CreateService", {
      environmentId: project.production.id,
      name: "pub",
      visibility: "VISIBILITY_PUBLIC",
      spec,
    });
    const serviceId = created.service.id as string;
    await rpc("ServicesService/Deploy", { serviceId });
    const host = `pub-${project.production.slug}-${project.project.slug}.localhost`;
    const served = await eventually(
      async () => {
        const r = await viaGateway(gatewayPort, host, "/");
        return r.status === 200 ? r : null;
      },
      "the PUBLIC service answers through the gateway",
      40_000,
    );
    expect(served.body).toMatch(/^hello from/);
    // Another hostname is not routed; a custom domain is, once added.
    expect((await viaGateway(gatewayPort, "nobody-production.localhost")).status).toBe(404);
    await rpc("GatewayService/AddServiceDomain", { serviceId, hostname: "shop.example.test" });
    await eventually(
      async () => {
        const r = await viaGateway(gatewayPort, "shop.example.test", "/");
        return r.status === 200 ? r : null;
      },
      "the custom domain answers through the gateway",
      40_000,
    );

    const current = (await rpc("ServicesService/GetService", { serviceId })).service;
    await rpc("ServicesService/UpdateService", {
      serviceId,
      name: current.name,
      visibility: "VISIBILITY_PRIVATE",
      spec: current.spec,
      serverId: current.serverId,
    });
    await eventually(
      async () => {
        const r = await viaGateway(gatewayPort, host, "/");
        return r.status === 404 ? r : null;
      },
      "the PRIVATE service is no longer routed",
      40_000,
    );
  }, 120_000);
});
