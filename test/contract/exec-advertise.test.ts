// The exec driver reports a PUBLIC service at the agent's advertise host (gateways on other hosts
// proxy to it) and a PRIVATE one on loopback, where it listens.
import { randomBytes, randomUUID } from "node:crypto";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunSpec, StatusReport } from "../../src/agent/driver.js";
import { ExecDriver } from "../../src/agent/exec-driver.js";
import { resolveWorkloadUser } from "../../src/agent/jobs.js";
import { createLogger } from "../../src/shared/index.js";

const SERVER = `require("http").createServer((q, s) => s.end("hi"))
  .listen(Number(process.env.PORT), process.env.HOST || "0.0.0.0");`;
// 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never this machine's, so it cannot come from anywhere else.
const ADVERTISED = "192.0.2.7";

describe("exec driver endpoints", () => {
  let dir: string;
  let driver: ExecDriver;
  const reports: StatusReport[] = [];
  const ids: string[] = [];
  const spec = (visibility: "PUBLIC" | "PRIVATE"): RunSpec => {
    const serviceId = randomUUID();
    ids.push(serviceId);
    return {
      serviceId,
      serviceSlug: "adv",
      environmentId: randomUUID(),
      deploymentId: randomUUID(),
      visibility,
      driver: "exec",
      exec: {
        command: process.execPath,
        args: ["-e", SERVER, `flotilla-adv-${randomBytes(4).toString("hex")}`],
        workingDirectory: "",
        port: 8000,
      },
      healthCheck: { type: "tcp", path: "" },
      restartPolicy: "never",
      volumes: [],
      env: {},
    } as RunSpec;
  };

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "flotilla-adv-"));
    chmodSync(dir, 0o755);
    driver = new ExecDriver(
      dir,
      resolveWorkloadUser("nobody"),
      (r) => reports.push(r),
      createLogger({ level: "warn" }),
      randomBytes(32),
      ADVERTISED,
    );
  });
  afterAll(async () => {
    for (const id of ids) await driver.remove(id, true).catch(() => {});
    await driver.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("a PUBLIC service is reported at the advertise host, and listens on every address", async () => {
    const s = spec("PUBLIC");
    const { endpoint } = await driver.deploy(s);
    expect(endpoint).toMatch(new RegExp(`^${ADVERTISED.replace(/\./g, "\\.")}:\\d+$`));
    const running = reports.find(
      (r) => r.deploymentId === s.deploymentId && r.status === "running",
    );
    expect(running?.endpoint).toBe(endpoint);
    const port = endpoint.split(":")[1];
    const body = await (
      await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(5000) })
    ).text();
    expect(body).toBe("hi");
    // Asking again for the running instance answers the same endpoint.
    expect((await driver.start(s)).endpoint).toBe(endpoint);
  });

  it("a PRIVATE service stays on loopback", async () => {
    const { endpoint } = await driver.deploy(spec("PRIVATE"));
    expect(endpoint).toMatch(/^127\.0\.0\.1:\d+$/);
  });
});
