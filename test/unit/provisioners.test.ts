// Provisioners without a database: the command provisioner's JSON contract with real child
// processes (stdin in, results out, the hub's FLOTILLA_* secrets kept from the program, the
// process group killed on timeout), result parsing per link, and the operator's configuration.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  commandProvisioner,
  localProvisioner,
  type ProvisionRequest,
  parseProvisionersOption,
  parseResults,
  provisionersFrom,
} from "../../src/hub/dataplanes/index.js";

const REQUEST: ProvisionRequest = {
  version: 1,
  dataPlane: { id: "p1", organizationId: "o1", name: "edge", region: null },
  links: [
    {
      id: "l1",
      generation: 2,
      provider: "azure",
      serviceIdentity: "svc.alias",
      config: { service_name: "svc.alias", location: "eastus" },
    },
  ],
};
const node = (script: string, env: Record<string, string> = {}, timeoutMs?: number) =>
  commandProvisioner({
    command: process.execPath,
    args: ["--input-type=module", "-e", script],
    env,
    ...(timeoutMs ? { timeoutMs } : {}),
  });
const never = new AbortController().signal;
const dir = mkdtempSync(join(tmpdir(), "flotilla-provisioners-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("the command provisioner", () => {
  it("writes the request on stdin, reads per-link results from stdout, and keeps FLOTILLA_* from the program", async () => {
    process.env.FLOTILLA_MASTER_KEY_FOR_THIS_TEST = "must-not-leak";
    try {
      const p = node(
        `let s = ""; for await (const c of process.stdin) s += c; const r = JSON.parse(s);
         const leaked = Object.keys(process.env).filter((k) => k.startsWith("FLOTILLA_"));
         process.stdout.write(JSON.stringify({ results: r.links.map((l) => ({ id: l.id, generation: l.generation,
           status: "provisioned", details: { seen: r.dataPlane.name, extra: process.env.EXTRA, leaked } })) }));`,
        { EXTRA: "configured" },
      );
      expect(await p.provision(REQUEST, never)).toEqual([
        {
          id: "l1",
          generation: 2,
          status: "provisioned",
          details: { seen: "edge", extra: "configured", leaked: [] },
          error: null,
        },
      ]);
    } finally {
      delete process.env.FLOTILLA_MASTER_KEY_FOR_THIS_TEST;
    }
  });

  it("a non-zero exit fails the run with the exit code and the stderr tail", async () => {
    const p = node(`process.stderr.write("x".repeat(5000) + "the real reason"); process.exit(4);`);
    const err = await p.provision(REQUEST, never).then(
      () => null,
      (e: Error) => e,
    );
    expect(err?.name).toBe("ProvisionerError");
    expect(err?.message).toMatch(/exited with code 4; stderr ends with: x+the real reason$/);
    // The tail only: 2 KiB of stderr, not 5.
    expect(err!.message.length).toBeLessThan(2300);
  });

  it("a timeout kills the program's whole process group, grandchildren included", async () => {
    const marker = join(dir, "grandchild-alive");
    const p = node(
      `import { spawn } from "node:child_process";
       spawn(process.execPath, ["-e", "setTimeout(() => require('fs').writeFileSync(process.env.MARKER, 'x'), 2500)"], { stdio: "ignore" });
       setInterval(() => {}, 1000);`,
      { MARKER: marker },
      1000,
    );
    await expect(p.provision(REQUEST, never)).rejects.toThrow(/timed out after 1 s and was killed/);
    // Had the grandchild survived, it would write the marker 2.5 s after it started.
    await new Promise((r) => setTimeout(r, 2500));
    expect(existsSync(marker)).toBe(false);
  });

  it("an abort (shutdown, a lost claim) stops the program", async () => {
    const stop = new AbortController();
    const p = node("setInterval(() => {}, 1000);");
    const run = p.provision(REQUEST, stop.signal);
    stop.abort();
    await expect(run).rejects.toThrow(/was stopped/);
  });

  it("a program that cannot be started fails the run with the reason", async () => {
    const p = commandProvisioner({ command: join(dir, "no-such-program") });
    await expect(p.provision(REQUEST, never)).rejects.toThrow(/could not be started: .*ENOENT/);
  });
});

describe("parsing results", () => {
  it("refuses output that is not JSON or has no results array", () => {
    expect(() => parseResults("Apply complete!")).toThrow(/not JSON/);
    expect(() => parseResults('{"links": []}')).toThrow(/"results" array/);
  });

  it("ignores entries it cannot tie to a link, turns a bad status into that link's failure, and requires a reason for failed", () => {
    expect(
      parseResults(
        JSON.stringify({
          results: [
            { status: "provisioned" },
            "nonsense",
            { id: "a", status: "done" },
            { id: "b", status: "failed" },
            { id: "c", status: "pending", details: "waiting" },
            { id: "d", status: "provisioned", generation: 1.5, details: { ip: "10.0.0.1" } },
          ],
        }),
      ),
    ).toEqual([
      { id: "a", status: "failed", error: expect.stringMatching(/status "done", not pending/) },
      { id: "b", status: "failed", details: null, error: "the provisioner gave no reason" },
      { id: "c", status: "pending", details: { value: "waiting" }, error: null },
      { id: "d", status: "provisioned", details: { ip: "10.0.0.1" }, error: null },
    ]);
  });
});

describe("configuration", () => {
  it("always has local, which provisions nothing and says so", async () => {
    const [r] = await localProvisioner().provision(REQUEST, never);
    expect(r).toMatchObject({ id: "l1", generation: 2, status: "provisioned" });
    expect(r!.details).toMatchObject({ provisioner: "local", endpoint: "local://azure/svc.alias" });
    expect([...provisionersFrom({}).keys()]).toEqual(["local"]);
  });

  it.each([
    ["not JSON", "{", /is not JSON/],
    ["a list", "[]", /must be a JSON object/],
    ["a bad name", '{"Bad Name": {"kind": "local"}}', /must be a slug/],
    ["an unknown kind", '{"tf": {"kind": "shell"}}', /"kind" must be "command" or "local"/],
    ["no command", '{"tf": {"kind": "command"}}', /"command" must name the program/],
    ["args not strings", '{"tf": {"kind": "command", "command": "/x", "args": [1]}}', /"args"/],
    [
      "a tiny timeout",
      '{"tf": {"kind": "command", "command": "/x", "timeoutMs": 5}}',
      /"timeoutMs"/,
    ],
  ])("refuses %s with config.invalid", (_, raw, message) => {
    expect(() => provisionersFrom(parseProvisionersOption(raw))).toThrow(message);
    try {
      provisionersFrom(parseProvisionersOption(raw));
    } catch (err) {
      expect((err as { code: string }).code).toBe("config.invalid");
    }
  });
});
