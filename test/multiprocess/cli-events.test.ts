// `flotilla webhooks` and `flotilla events quarantine` from the real binary against a `flotilla hub`
// on PostgreSQL and NATS: add, list, deliveries and remove endpoints; list and replay quarantine;
// --help and --json on each; bad input is refused naming the field.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/pg.js";
import { CLI, type FlotillaProcess, killAll, ROOT, SECRET_A, startFlotilla } from "./procs.js";

const run = promisify(execFile);
const ADMIN = { email: "cli-events@example.com", password: "cli-events-password-1" };
const NATS_URL = "nats://127.0.0.1:4222";

describe("webhooks and quarantine from the CLI", () => {
  let dir: string;
  let database: TestDatabase;
  let hub: FlotillaProcess;
  let env: NodeJS.ProcessEnv;
  const stream = `T${randomBytes(5).toString("hex")}`;

  async function flotilla(...args: string[]) {
    try {
      const r = await run(process.execPath, [CLI, ...args], { cwd: ROOT, env, timeout: 30_000 });
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  }
  async function flotillaJson(...args: string[]) {
    const r = await flotilla(...args, "--json");
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout);
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "flotilla-cli-events-"));
    database = await createTestDatabase("mp_cli_events");
    hub = await startFlotilla("hub", {
      env: {
        FLOTILLA_DATABASE_URL: database.url,
        FLOTILLA_SESSION_SECRET: SECRET_A,
        FLOTILLA_ADMIN_EMAIL: ADMIN.email,
        FLOTILLA_ADMIN_PASSWORD: ADMIN.password,
        FLOTILLA_NATS_URL: NATS_URL,
        FLOTILLA_NATS_STREAM: stream,
        FLOTILLA_NATS_SUBJECT_ROOT: stream.toLowerCase(),
      },
    });
    await hub.waitReady(60_000);
    env = { ...process.env, FLOTILLA_CONFIG_DIR: join(dir, "config"), FLOTILLA_HUB: hub.url };
    for (const k of ["FLOTILLA_TOKEN", "FLOTILLA_PASSWORD"]) delete env[k];
    const login = await flotilla("login", "--email", ADMIN.email, "--password", ADMIN.password);
    expect(login.code, login.stderr).toBe(0);
  }, 120_000);

  afterAll(async () => {
    await killAll();
    await database?.drop();
    rmSync(dir, { recursive: true, force: true });
    const nc = await connect({ servers: NATS_URL });
    await (await jetstreamManager(nc)).streams.delete(stream).catch(() => {});
    await nc.close();
  });

  it("adds, lists and removes a webhook endpoint; the secret is printed once", async () => {
    const added = await flotillaJson(
      "webhooks",
      "add",
      "https://hooks.example.com/flotilla",
      "--events",
      "deployment.*",
      "--description",
      "ops",
    );
    expect(added.secret).toMatch(/^whsec_/);
    expect(added.endpoint.eventTypes).toEqual(["deployment.*"]);
    const list = await flotillaJson("webhooks", "list");
    expect(list).toHaveLength(1);
    expect(JSON.stringify(list)).not.toContain(added.secret);
    expect(await flotillaJson("webhooks", "deliveries", "--endpoint", added.endpoint.id)).toEqual(
      [],
    );
    const table = await flotilla("webhooks");
    expect(table.stdout).toContain("https://hooks.example.com/flotilla");
    expect(await flotillaJson("webhooks", "remove", added.endpoint.id)).toEqual({
      removed: added.endpoint.id,
    });
    expect(await flotillaJson("webhooks", "list")).toEqual([]);
  });

  it("refuses bad input with a message naming the field and a non-zero exit", async () => {
    const bad = await flotilla("webhooks", "add", "ftp://example.com/x");
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/url/);
    const badEvents = await flotilla(
      "webhooks",
      "add",
      "https://example.com/",
      "--events",
      "project.*",
    );
    expect(badEvents.code).not.toBe(0);
    expect(badEvents.stderr).toMatch(/event_types/);
    const missing = await flotilla("webhooks", "remove");
    expect(missing.code).not.toBe(0);
    const badLimit = await flotilla("events", "quarantine", "list", "--limit", "9999");
    expect(badLimit.code).not.toBe(0);
    expect(badLimit.stderr).toMatch(/--limit/);
    expect(await flotillaJson("webhooks", "list")).toEqual([]);
  });

  it("lists the quarantine (empty) and refuses to replay an unknown id", async () => {
    expect(await flotillaJson("events", "quarantine", "list", "--all")).toEqual([]);
    const unknown = await flotilla(
      "events",
      "quarantine",
      "replay",
      "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    );
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toMatch(/not found/);
  });

  it("has --help on both commands", async () => {
    for (const args of [
      ["webhooks", "--help"],
      ["events", "quarantine", "--help"],
    ]) {
      const r = await flotilla(...args);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain("--json");
    }
  });
});
