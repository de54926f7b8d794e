// Process lifecycle: a hub drains and exits 0 on SIGTERM; an embedded installation's lock file
// survives a SIGKILL but is taken over by the next start, and refuses a second live process.
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/pg.js";
import { type FlotillaProcess, killAll, SECRET_A, sleep, startFlotilla } from "./procs.js";

describe("hub shutdown on SIGTERM", () => {
  let database: TestDatabase;

  beforeAll(async () => {
    database = await createTestDatabase("mp_shutdown");
  });
  afterEach(async () => {
    await killAll();
  });
  afterAll(async () => {
    await database?.drop();
  });

  it("stops being ready, says it is shutting down, and exits with code 0 within 15 s", async () => {
    const hub = await startFlotilla("hub", {
      env: { FLOTILLA_DATABASE_URL: database.url, FLOTILLA_SESSION_SECRET: SECRET_A },
    });
    await hub.waitReady(30_000);

    hub.child.kill("SIGTERM");
    const signalledAt = Date.now();
    // From now on /ready must stop answering 200: 503 while draining, or no listener at all.
    let notReady: string | undefined;
    while (!notReady && Date.now() - signalledAt < 15_000) {
      try {
        const res = await fetch(`${hub.url}/ready`, { signal: AbortSignal.timeout(2_000) });
        await res.body?.cancel();
        // 200 only until the signal handler has run.
        if (res.status !== 200) notReady = `GET /ready answered ${res.status}`;
      } catch (e) {
        notReady = `GET /ready failed: ${(e as Error).message}`;
      }
      if (!notReady) await sleep(20);
    }
    expect(notReady, hub.describe()).toMatch(/answered 503|failed/);

    const exit = await hub.waitExit(15_000 - (Date.now() - signalledAt));
    expect(exit, hub.describe()).toEqual({ code: 0, signal: null });
    expect(hub.stdout()).toContain("shutting down");
    expect(hub.logs().some((r) => r.msg === "hub stopped")).toBe(true);
    expect(hub.errorLogs(), hub.describe()).toEqual([]);
  }, 90_000);
  it("a request in flight when SIGTERM arrives still gets its answer, then the process exits 0", async () => {
    const hub = await startFlotilla("hub", {
      env: { FLOTILLA_DATABASE_URL: database.url, FLOTILLA_SESSION_SECRET: SECRET_A },
    });
    await hub.waitReady(30_000);

    // Send the headers and half the body, so the hub has the request in hand but cannot finish it.
    const body = Buffer.from("{}    ");
    const req = request(`${hub.url}/flotilla.v1.IdentityService/GetSetupStatus`, {
      method: "POST",
      headers: { "content-type": "application/json", "content-length": body.length },
    });
    const answered = new Promise<{ status: number; text: string }>((resolve, reject) => {
      req.on("response", (res) => {
        let text = "";
        res.setEncoding("utf8").on("data", (chunk: string) => {
          text += chunk;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
        res.on("error", reject);
      });
      req.on("error", reject);
    });
    req.write(body.subarray(0, 3));
    await sleep(300);

    hub.child.kill("SIGTERM");
    await sleep(300);
    // Draining: a new connection is refused, the process is still alive for the one in flight.
    await expect(
      fetch(`${hub.url}/ready`, { signal: AbortSignal.timeout(2_000) }).then((r) => r.status),
    ).rejects.toThrow();
    expect(hub.exitStatus(), hub.describe()).toBeNull();

    req.end(body.subarray(3));
    const res = await answered;
    expect(res.status, res.text).toBe(200);
    // Answered from the database, so the store was still open while the request drained.
    expect(JSON.parse(res.text)).toEqual({ setupRequired: true });

    expect(await hub.waitExit(15_000), hub.describe()).toEqual({ code: 0, signal: null });
    expect(hub.errorLogs(), hub.describe()).toEqual([]);
  }, 90_000);
});

describe("flotilla up: the data directory's lock file", () => {
  let dataDir: string;

  beforeAll(() => {
    dataDir = mkdtempSync(join(tmpdir(), "flotilla-mp-up-"));
  });
  afterAll(async () => {
    await killAll();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  const lockFile = () => join(dataDir, "flotilla.lock");
  let survivor: FlotillaProcess | undefined;

  it("a lock left by a SIGKILLed process is taken over by the next start", async () => {
    const first = await startFlotilla("up", { args: ["--data-dir", dataDir] });
    await first.waitReady(60_000); // the first open of an empty directory runs initdb
    expect(readFileSync(lockFile(), "utf8").trim()).toBe(String(first.pid));

    first.child.kill("SIGKILL");
    expect(await first.waitExit(15_000)).toEqual({ code: null, signal: "SIGKILL" });
    // Nothing cleaned up after the kill: the stale lock still names the dead process.
    expect(readFileSync(lockFile(), "utf8").trim()).toBe(String(first.pid));

    const second = await startFlotilla("up", { args: ["--data-dir", dataDir] });
    await second.waitReady(60_000);
    expect(readFileSync(lockFile(), "utf8").trim()).toBe(String(second.pid));
    expect(second.errorLogs(), second.describe()).toEqual([]);
    survivor = second;
  }, 150_000);

  it("a second start on a directory held by a live process exits non-zero naming that process", async () => {
    // Reuses the previous test's survivor (children live until afterAll); starts one if needed.
    if (!survivor || survivor.exitStatus()) {
      survivor = await startFlotilla("up", { args: ["--data-dir", dataDir] });
      await survivor.waitReady(60_000);
    }
    const holder = survivor;

    const intruder = await startFlotilla("up", { args: ["--data-dir", dataDir] });
    const exit = await intruder.waitExit(60_000);
    expect(exit.code, intruder.describe()).not.toBe(0);
    expect(exit.code, intruder.describe()).not.toBeNull();
    expect(intruder.stderr()).toContain("store.locked");
    expect(intruder.stderr()).toContain(`process ${holder.pid}`);

    // The holder is untouched and still owns the directory.
    expect(holder.exitStatus()).toBeNull();
    const res = await fetch(`${holder.url}/ready`);
    expect(res.status).toBe(200);
    expect(readFileSync(lockFile(), "utf8").trim()).toBe(String(holder.pid));

    // A clean shutdown releases the lock file.
    expect(await holder.stop(15_000)).toEqual({ code: 0, signal: null });
    expect(existsSync(lockFile())).toBe(false);
  }, 150_000);
});
