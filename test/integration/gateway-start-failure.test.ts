// A gateway whose data or admin port will not listen fails its start with the listen error and
// leaves nothing open: no listening data port, no handle on its local store, no exit hook of its
// access log (what `flotilla up`, which starts one in its own process, relies on).
import { readdirSync, readlinkSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { createServer, type Server, connect as tcpConnect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startStoredGateway } from "../support/gateway.js";

let taken: Server;
let takenPort: number;

beforeAll(async () => {
  taken = createServer();
  await new Promise<void>((r) => taken.listen(0, "127.0.0.1", () => r()));
  takenPort = (taken.address() as AddressInfo).port;
  // Hooks registered once per process (pino's destination registers its own exit hook on first
  // use) are in place before any test counts them.
  await (await startStoredGateway([], { accessLog: { write: () => undefined } })).close();
});

afterAll(async () => {
  await new Promise<void>((r) => taken.close(() => r()));
});

/** Paths this process holds open under a gateway's temporary data directories. */
function openGatewayFiles(): string[] {
  return readdirSync("/proc/self/fd").flatMap((fd) => {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      return target.includes("flotilla-gw-test-") ? [target] : [];
    } catch {
      return []; // Closed while listing (the readdir's own descriptor).
    }
  });
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

const refused = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = tcpConnect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("error", () => resolve(true));
  });

describe("gateway start on a port that will not listen", () => {
  it("fails with the listen error when the data port is taken, leaving nothing open", async () => {
    const exitHooks = process.listenerCount("exit");
    const started = startStoredGateway([], {
      port: takenPort,
      accessLog: { write: () => undefined },
    });
    await expect(started).rejects.toMatchObject({ code: "EADDRINUSE" });
    expect(openGatewayFiles()).toEqual([]);
    expect(process.listenerCount("exit")).toBe(exitHooks);
  });

  it("fails when the admin port is taken, and closes the data port it had opened", async () => {
    const dataPort = await freePort();
    const exitHooks = process.listenerCount("exit");
    const started = startStoredGateway([], {
      port: dataPort,
      adminPort: takenPort,
      accessLog: { write: () => undefined },
    });
    await expect(started).rejects.toMatchObject({ code: "EADDRINUSE" });
    expect(await refused(dataPort)).toBe(true);
    expect(openGatewayFiles()).toEqual([]);
    expect(process.listenerCount("exit")).toBe(exitHooks);
  });
});
