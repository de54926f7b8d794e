// `flotilla gateway --tls-cert-dir`: the process serves each server name its certificate, reads
// the directory again on SIGHUP (a renewal) and keeps serving; a directory that does not read
// whole stops it from starting, with config.invalid on stderr.
import { mkdtempSync, rmSync } from "node:fs";
import { type AddressInfo, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { presentedCommonName, selfSignedPair } from "../support/tls.js";
import { eventually, killGateways, startGatewayProcess } from "./gateway-procs.js";

let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "flotilla-gw-sighup-"));
});

afterAll(async () => {
  await killGateways();
  rmSync(dir, { recursive: true, force: true });
});

const presented = (port: number, servername: string) => presentedCommonName(port, servername);

describe("flotilla gateway --tls-cert-dir", () => {
  it("serves the renewed certificate after SIGHUP, on the same process and port", async () => {
    const certs = mkdtempSync(join(dir, "certs-"));
    selfSignedPair(join(certs, "a.crt"), join(certs, "a.key"), "DNS:a.example", "first");
    const gateway = await startGatewayProcess({
      // No hub answers: the gateway serves from its (empty) store meanwhile.
      hub: "http://127.0.0.1:1",
      token: "fgw_sighup-test",
      dataDir: mkdtempSync(join(dir, "data-")),
      extra: ["--tls-cert-dir", certs],
    });
    expect(gateway.url.startsWith("https://")).toBe(true);
    const port = Number(new URL(gateway.url).port);
    expect(await presented(port, "a.example")).toBe("first");

    selfSignedPair(join(certs, "a.crt"), join(certs, "a.key"), "DNS:a.example", "renewed");
    gateway.child.kill("SIGHUP");
    await eventually(
      async () => gateway.logs().some((l) => l.msg === "certificates reloaded"),
      "the reload's log line",
    );
    expect(await presented(port, "a.example")).toBe("renewed");
    // A renewal caught halfway (the key not there yet): logged, and the renewed one still serves.
    selfSignedPair(join(certs, "b.crt"), join(dir, "b-not-yet.key"), "DNS:b.example", "half");
    gateway.child.kill("SIGHUP");
    await eventually(
      async () =>
        gateway
          .logs()
          .some(
            (l) =>
              l.msg === "certificates not reloaded; the old ones serve" &&
              String(l.err).includes("b.key: ENOENT"),
          ),
      "the failed reload's log line",
    );
    expect(await presented(port, "a.example")).toBe("renewed");
    expect(gateway.child.exitCode).toBeNull();
    await gateway.kill("SIGTERM");
    expect(gateway.child.exitCode).toBe(0);
  });

  it("does not start on a directory without a whole pair, and says why", async () => {
    const certs = mkdtempSync(join(dir, "half-"));
    selfSignedPair(join(certs, "b.crt"), join(dir, "b-elsewhere.key"), "DNS:b.example");
    const started = startGatewayProcess({
      hub: "http://127.0.0.1:1",
      token: "fgw_sighup-test",
      dataDir: mkdtempSync(join(dir, "data-")),
      extra: ["--tls-cert-dir", certs],
    });
    await expect(started).rejects.toThrow(
      /config\.invalid[\s\S]*b\.key: ENOENT|b\.key: ENOENT[\s\S]*config\.invalid/,
    );
  });
});

describe("flotilla gateway on a port another process holds", () => {
  it("does not start, and names the port and what to do (config.invalid, not an internal error)", async () => {
    const holder = createServer();
    await new Promise<void>((r) => holder.listen(0, "127.0.0.1", () => r()));
    const { port } = holder.address() as AddressInfo;
    try {
      const started = startGatewayProcess({
        hub: "http://127.0.0.1:1",
        token: "fgw_busy-port-test",
        dataDir: mkdtempSync(join(dir, "data-")),
        port,
      });
      await expect(started).rejects.toThrow(
        new RegExp(`--port ${port}: another process listens there[\\s\\S]*config\\.invalid`),
      );
    } finally {
      holder.close();
    }
  });
});
