// `flotilla dataplanes` and `flotilla links` with the real binary against `flotilla up` (embedded
// store, the built-in `local` provisioner): create, add, list until observed, update with and
// without a current --generation, remove; --json output equals the API's rows; errors are typed.
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI, type FlotillaProcess, killAll, ROOT, startFlotilla } from "./procs.js";

const run = promisify(execFile);
const EMAIL = "links@example.com";
const PASSWORD = "links-password-1";
const GCP = {
  service_attachment: "projects/acme/regions/us-central1/serviceAttachments/db",
  region: "us-central1",
  dns_zone_name: "db.internal.",
  dns_record_names: ["primary.db.internal."],
};

describe("flotilla dataplanes and flotilla links", () => {
  let dir: string;
  let up: FlotillaProcess;
  let env: NodeJS.ProcessEnv;

  async function flotilla(...args: string[]) {
    try {
      const r = await run(process.execPath, [CLI, ...args], { cwd: ROOT, env, timeout: 30_000 });
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  }
  async function json(...args: string[]) {
    const r = await flotilla(...args, "--json");
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout);
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "flotilla-cli-links-"));
    up = await startFlotilla("up", {
      args: ["--data-dir", join(dir, "data"), "--no-agent"],
      env: { FLOTILLA_ADMIN_EMAIL: EMAIL, FLOTILLA_ADMIN_PASSWORD: PASSWORD },
    });
    await up.waitReady(60_000);
    env = { ...process.env, FLOTILLA_CONFIG_DIR: join(dir, "config"), FLOTILLA_HUB: up.url };
    for (const k of ["FLOTILLA_TOKEN", "FLOTILLA_PASSWORD"]) delete env[k];
    const login = await flotilla("login", "--email", EMAIL, "--password", PASSWORD);
    expect(login.code, login.stderr).toBe(0);
  }, 120_000);

  afterAll(async () => {
    await killAll();
    rmSync(dir, { recursive: true, force: true });
  });

  it("every subcommand has --help", async () => {
    for (const command of ["dataplanes", "links"]) {
      const r = await flotilla(command, "--help");
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain(`flotilla ${command}`);
      expect(r.stdout).toContain("--json");
    }
    expect((await flotilla("links", "--help")).stdout).toContain("service_attachment");
  });

  it("creates a data plane, adds a link, sees the local provisioner's honest details, updates it with a compare-and-set generation, removes it", async () => {
    const plane = await json("dataplanes", "create", "edge", "--region", "us-central1");
    expect(plane).toMatchObject({ name: "edge", region: "us-central1", provisioner: "local" });
    expect((await json("dataplanes")).map((p: { name: string }) => p.name)).toEqual([
      "default",
      "edge",
    ]);

    const file = join(dir, "link.json");
    writeFileSync(file, JSON.stringify(GCP));
    const added = await json(
      "links",
      "add",
      "--data-plane",
      "edge",
      "--provider",
      "gcp",
      "--config-file",
      file,
    );
    expect(added).toMatchObject({
      provider: "gcp",
      status: "pending",
      generation: "1",
      serviceIdentity: GCP.service_attachment,
    });

    let listed: Array<Record<string, unknown>> = [];
    for (let i = 0; i < 200 && listed[0]?.status !== "provisioned"; i++) {
      listed = await json("links", "list", "--data-plane", "edge");
      if (listed[0]?.status !== "provisioned") await new Promise((r) => setTimeout(r, 50));
    }
    expect(listed).toHaveLength(1);
    expect(listed[0]).toMatchObject({
      id: added.id,
      status: "provisioned",
      details: { provisioner: "local" },
    });
    expect(String((listed[0]!.details as { note: string }).note)).toMatch(
      /nothing was provisioned/,
    );
    // The table form shows the same row.
    const table = await flotilla("links", "list", "--data-plane", "edge");
    expect(table.stdout).toContain(GCP.service_attachment);
    expect(table.stdout).toContain("provisioned");

    const config = JSON.stringify({ ...GCP, all_ports: true });
    const stale = await flotilla(
      "links",
      "update",
      added.id,
      "--data-plane",
      "edge",
      "--config",
      config,
      "--generation",
      "5",
      "--json",
    );
    expect(stale.code).not.toBe(0);
    expect(JSON.parse(stale.stderr || stale.stdout)).toMatchObject({
      error: { code: "resource.conflict" },
    });
    const updated = await json(
      "links",
      "update",
      added.id,
      "--data-plane",
      "edge",
      "--config",
      config,
      "--generation",
      "1",
    );
    expect(updated).toMatchObject({ generation: "2", status: "pending" });

    const invalid = await flotilla(
      "links",
      "add",
      "--data-plane",
      "edge",
      "--provider",
      "gcp",
      "--config",
      '{"region": "us-central1"}',
      "--json",
    );
    expect(invalid.code).not.toBe(0);
    expect(JSON.parse(invalid.stderr || invalid.stdout)).toMatchObject({
      error: {
        code: "validation.failed",
        message: expect.stringMatching(/^config\.service_attachment: is required/),
      },
    });
    const notJson = await flotilla(
      "links",
      "add",
      "--data-plane",
      "edge",
      "--provider",
      "gcp",
      "--config",
      "{nope",
    );
    expect(notJson.code).not.toBe(0);
    expect(notJson.stderr).toMatch(/not JSON/);

    expect(await json("links", "remove", added.id, "--data-plane", "edge")).toEqual({
      removed: added.id,
    });
    expect(await json("links", "list", "--data-plane", "edge")).toEqual([]);
    const gone = await flotilla("links", "remove", added.id, "--data-plane", "edge", "--json");
    expect(JSON.parse(gone.stderr || gone.stdout)).toMatchObject({
      error: { code: "resource.not_found" },
    });
  });
});
