import { execFile } from "node:child_process";
import { createServer } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { serveAdmin } from "../../src/agent/admin.js";
import { type AdminAction, createLogger } from "../../src/shared/index.js";
import { startStoredGateway } from "../support/gateway.js";
import { requestText } from "../support/http.js";

const closers: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  for (const close of closers.reverse()) await close();
});

/** The headers that mark a request as relayed or browser-sent, one at a time. */
const LOOK_ALIKES: Array<Record<string, string>> = [
  { "x-forwarded-for": "203.0.113.7" },
  { forwarded: "for=203.0.113.7" },
  { via: "1.1 some-proxy" },
  { origin: "https://evil.example" },
  { "sec-fetch-site": "cross-site" },
  // A page whose DNS name was rebound to 127.0.0.1 sends its own name.
  { host: "rebound.example:8082" },
];

const send = (url: string, headers: Record<string, string>, method = "GET") =>
  requestText(url, { method, headers });

// Workloads and jobs run as an unprivileged user on the agent's host; nobody stands for one.
const NOBODY = 65534;
const asRoot = process.getuid?.() === 0;

/** The status code `url` answers a plain request from a process of uid `uid` (curl's way). */
function statusAsUser(uid: number, url: string, method = "GET"): Promise<number> {
  const script = `fetch(${JSON.stringify(url)}, { method: ${JSON.stringify(method)} }).then((r) => process.stdout.write(String(r.status)), (e) => { console.error(e); process.exit(1); })`;
  return new Promise((resolve, reject) =>
    execFile(process.execPath, ["-e", script], { uid, gid: uid, cwd: "/" }, (err, stdout) =>
      err ? reject(err) : resolve(Number(stdout)),
    ),
  );
}

/**
 * The status code a plain `method path` answers on 127.0.0.1:port, sent by a process of uid
 * `uid` from the local address and port given (raw, as fetch cannot choose them).
 */
function rawStatusAsUser(
  uid: number,
  port: number,
  method: string,
  path: string,
  local: { localAddress: string; localPort: number },
): Promise<number> {
  const script = `const s = require("node:net").connect({ host: "127.0.0.1", port: ${port}, localAddress: ${JSON.stringify(local.localAddress)}, localPort: ${local.localPort} }, () => s.write(${JSON.stringify(`${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`)})); let got = ""; s.on("data", (d) => { got += d; }); s.on("end", () => process.stdout.write(got.split(" ")[1] ?? "")); s.on("error", (e) => { console.error(e.message); process.exit(1); });`;
  return new Promise((resolve, reject) =>
    execFile(process.execPath, ["-e", script], { uid, gid: uid, cwd: "/" }, (err, stdout) =>
      err ? reject(err) : resolve(Number(stdout)),
    ),
  );
}

describe("the agent's admin API", () => {
  /** An agent admin API on a free loopback port that records the actions it is asked for. */
  async function startAdmin() {
    const actions: AdminAction[] = [];
    const admin = await serveAdmin({
      port: 0,
      host: "127.0.0.1",
      status: () => ({
        version: "test",
        server_id: "s",
        connected: true,
        draining: false,
        dispatches_in_flight: 0,
        instances: [],
      }),
      admin: async (action) => {
        actions.push(action);
        return {};
      },
      log: createLogger({ level: "silent" }),
      signingKey: () => Buffer.alloc(32, 1),
      sealingKey: () => Buffer.alloc(32, 2),
      dispatch: async () => ({ ok: true }),
    });
    closers.push(() => admin.close());
    return { admin, actions };
  }

  it("refuses unsigned calls that were relayed or browser-sent (401, nothing done) and takes the operator's", async () => {
    const { admin, actions } = await startAdmin();
    for (const headers of LOOK_ALIKES) {
      const drain = await send(`${admin.url}/drain`, headers, "POST");
      expect(drain.status, JSON.stringify(headers)).toBe(401);
      expect((JSON.parse(drain.text) as { code: string }).code).toBe("auth.unauthenticated");
      expect((await send(`${admin.url}/status`, headers)).status).toBe(401);
    }
    expect(actions).toEqual([]);
    // Probes stay open whatever carries them.
    const health = await fetch(`${admin.url}/health`, { headers: LOOK_ALIKES[0] });
    expect(health.status).toBe(200);
    // The operator on this host (curl, the CLI) is served.
    expect((await fetch(`${admin.url}/drain`, { method: "POST" })).status).toBe(200);
    expect(actions).toEqual(["drain"]);
  });

  it.skipIf(!asRoot)(
    "refuses a plain call from another user's process on this host (a workload's), which may still read /metrics and /health",
    async () => {
      const { admin, actions } = await startAdmin();
      for (const route of ["drain", "resume", "reload"])
        expect(await statusAsUser(NOBODY, `${admin.url}/${route}`, "POST"), route).toBe(401);
      expect(await statusAsUser(NOBODY, `${admin.url}/status`)).toBe(401);
      expect(actions).toEqual([]);
      expect(await statusAsUser(NOBODY, `${admin.url}/metrics`)).toBe(200);
      expect(await statusAsUser(NOBODY, `${admin.url}/health`)).toBe(200);
      // Bound to 127.0.0.2 and the admin API's own port, the caller's socket mirrors the
      // agent's accepted one port for port: the addresses still tell them apart.
      const port = Number(new URL(admin.url).port);
      expect(
        await rawStatusAsUser(NOBODY, port, "POST", "/drain", {
          localAddress: "127.0.0.2",
          localPort: port,
        }),
      ).toBe(401);
      expect(actions).toEqual([]);
      // The same call from this process's user is the operator's.
      expect(await statusAsUser(process.getuid!(), `${admin.url}/drain`, "POST")).toBe(200);
      expect(actions).toEqual(["drain"]);
    },
  );
});

describe("the gateway's admin port", () => {
  async function freePort(): Promise<number> {
    const s = createServer();
    await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
    const { port } = s.address() as { port: number };
    await new Promise((r) => s.close(r));
    return port;
  }

  it("answers 403 to a route of the gateway itself whose upstream is its admin port, on both data paths", async () => {
    const adminPort = await freePort();
    const apiId = "0190a000-0000-7000-8000-0000000000f1";
    const deploymentId = "0190a000-0000-7000-8000-0000000000f2";
    const stored = await startStoredGateway(
      [
        {
          apiId,
          deploymentId,
          kind: "RestApi",
          state: "DEPLOYED",
          deployedAt: 1,
          content: JSON.stringify({
            apiId,
            deploymentId,
            name: "self",
            kind: "RestApi",
            definition: {
              contextPath: "/self",
              upstream: { url: `http://127.0.0.1:${adminPort}` },
            },
          }),
        },
      ],
      { adminPort },
    );
    closers.push(() => stored.close());
    const gateway = stored.gateway;
    // A plain GET takes the raw-socket fast path; a POST takes node:http and undici.
    const viaFastPath = await fetch(`${gateway.url}/self/status`);
    expect(viaFastPath.status).toBe(403);
    expect(await viaFastPath.text()).not.toContain(apiId);
    const viaSlowPath = await fetch(`${gateway.url}/self/drop-stream`, { method: "POST" });
    expect(viaSlowPath.status).toBe(403);
    // A rebound DNS name reads no deployments; a probe naming another address still gets /ready.
    expect((await send(`${gateway.adminUrl}/status`, { host: "rebound.example" })).status).toBe(
      403,
    );
    expect((await send(`${gateway.adminUrl}/ready`, { host: "10.0.0.5:8001" })).status).toBe(200);
    // Straight from this host, the admin port answers; from another user's process (a
    // workload's), /status does not, and /ready and /metrics still do.
    const direct = await fetch(`${gateway.adminUrl}/status`);
    expect(direct.status).toBe(200);
    expect(await direct.text()).toContain(apiId);
    if (asRoot) {
      expect(await statusAsUser(NOBODY, `${gateway.adminUrl}/status`)).toBe(403);
      expect(await statusAsUser(NOBODY, `${gateway.adminUrl}/drop-stream`, "POST")).toBe(403);
      expect(await statusAsUser(NOBODY, `${gateway.adminUrl}/ready`)).toBe(200);
      expect(await statusAsUser(NOBODY, `${gateway.adminUrl}/metrics`)).toBe(200);
    }
  });
});
