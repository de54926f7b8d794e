// The driver contract, run against every driver this machine can run: exec always, docker only
// when a Docker engine answers (DOCKER_HOST or the default socket). Without one, the docker
// suite is reported as skipped: there is no Docker engine on Flotilla's CI machines.
import { randomBytes, randomUUID } from "node:crypto";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DockerDriver, dockerAvailable } from "../../src/agent/docker-driver.js";
import type { Driver, RunSpec, StatusReport } from "../../src/agent/driver.js";
import { ExecDriver } from "../../src/agent/exec-driver.js";
import { resolveWorkloadUser } from "../../src/agent/jobs.js";
import { createLogger } from "../../src/shared/index.js";

// A tiny service: answers $GREETING, and writes/reads a file in its "data" volume.
const SERVER = `
const http = require("http"), fs = require("fs"), path = require("path");
const dir = process.env.FLOTILLA_VOLUME_DATA;
http.createServer((q, s) => {
  if (q.url === "/write") { fs.writeFileSync(path.join(dir, "f"), process.env.GREETING); return s.end("ok"); }
  if (q.url === "/read") return s.end(fs.readFileSync(path.join(dir, "f"), "utf8"));
  s.end(process.env.GREETING || "");
}).listen(Number(process.env.PORT), process.env.HOST || "0.0.0.0", () => console.log("listening " + process.env.PORT));
`;

interface Subject {
  name: "exec" | "docker";
  available: boolean;
  make(dir: string, report: (r: StatusReport) => void): Promise<Driver>;
  section(marker: string): Pick<RunSpec, "driver" | "exec" | "docker">;
}

const logger = createLogger({ level: "warn" });
const SUBJECTS: Subject[] = [
  {
    name: "exec",
    available: true,
    make: async (dir, report) =>
      new ExecDriver(dir, resolveWorkloadUser("nobody"), report, logger, randomBytes(32)),
    section: (marker) => ({
      driver: "exec",
      exec: {
        command: process.execPath,
        args: ["-e", SERVER, marker],
        workingDirectory: "",
        port: 8000,
      },
    }),
  },
  {
    name: "docker",
    available: await dockerAvailable(),
    make: (_dir, report) => DockerDriver.create(report, logger),
    section: (marker) => ({
      driver: "docker",
      docker: { image: "node:20-alpine", command: ["node", "-e", SERVER, marker], port: 8000 },
    }),
  },
];

for (const subject of SUBJECTS) {
  describe.skipIf(!subject.available)(`driver contract [${subject.name}]`, () => {
    let dir: string;
    let driver: Driver;
    const reports: StatusReport[] = [];
    const serviceId = randomUUID();
    const marker = `flotilla-contract-${randomBytes(4).toString("hex")}`;
    const spec = (greeting: string, deploymentId = randomUUID()): RunSpec => ({
      serviceId,
      serviceSlug: "contract",
      environmentId: randomUUID(),
      deploymentId,
      visibility: "PRIVATE",
      ...subject.section(marker),
      healthCheck: { type: "http", path: "/" },
      restartPolicy: "always",
      volumes: [{ name: "data", mountPath: "/data" }],
      env: { GREETING: greeting },
    });
    const get = async (endpoint: string, path = "/") =>
      (await fetch(`http://${endpoint}${path}`, { signal: AbortSignal.timeout(5000) })).text();

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), "flotilla-contract-"));
      chmodSync(dir, 0o755);
      driver = await subject.make(dir, (r) => reports.push(r));
    });
    afterAll(async () => {
      await driver.remove(serviceId, true).catch(() => {});
      await driver.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it("deploy runs the service until healthy, reports deploying then running with its endpoint, with config in its environment", async () => {
      const s = spec("hello");
      const { endpoint } = await driver.deploy(s);
      expect(endpoint).toMatch(/^127\.0\.0\.1:\d+$/);
      expect(await get(endpoint)).toBe("hello");
      const mine = reports.filter((r) => r.deploymentId === s.deploymentId).map((r) => r.status);
      expect(mine).toEqual(["deploying", "running"]);
      expect(driver.list()).toHaveLength(1);
    });

    it("a redeploy replaces the instance (one runs) and keeps the volume's data", async () => {
      const first = await driver.deploy(spec("one"));
      await get(first.endpoint, "/write");
      const second = await driver.deploy(spec("two"));
      expect(await get(second.endpoint)).toBe("two");
      expect(await get(second.endpoint, "/read")).toBe("one");
      expect(driver.list()).toHaveLength(1);
    });

    it("logs: the tail holds what the service printed", async () => {
      const lines = await driver.tail(serviceId, 50);
      expect(lines.some((l) => l.startsWith("listening"))).toBe(true);
    });

    it("stop leaves nothing answering and reports stopped; start runs it again", async () => {
      const s = spec("again");
      const { endpoint } = await driver.deploy(s);
      await driver.stop(serviceId, true);
      await expect(get(endpoint)).rejects.toThrow();
      expect(reports.at(-1)).toMatchObject({ serviceId, status: "stopped" });
      const restarted = await driver.start(s);
      expect(await get(restarted.endpoint)).toBe("again");
    });

    it("remove stops and forgets the instance", async () => {
      await driver.remove(serviceId, false);
      expect(driver.list()).toEqual([]);
      expect(driver.has(serviceId)).toBe(false);
    });
  });
}
