// The fleet health view (GetFleetStatus): an agent probed over the control channel this replica
// holds, a server with no agent reported offline, another organization's servers never shown,
// answers cached briefly (a refresh inside a second is still the cached answer), bad input refused.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Agent, startAgent } from "../../src/agent/index.js";
import { FleetService } from "../../src/gen/flotilla/v1/fleet_pb.js";
import { ServerService } from "../../src/gen/flotilla/v1/servers_pb.js";
import { createLogger } from "../../src/shared/index.js";
import {
  bootstrapOwner,
  signInToNewOrganization,
  startTestHub,
  type TestHub,
} from "../support/hub.js";

describe("fleet status", () => {
  let t: TestHub;
  let dir: string;
  let agent: Agent;
  let tokenA: string;
  let tokenA2: string;
  let connectedId: string;
  let idleId: string;

  const fleet = (token: string) =>
    createClient(
      FleetService,
      createConnectTransport({
        baseUrl: t.hub.url,
        httpVersion: "1.1",
        interceptors: [
          (next) => async (req) => {
            req.header.set("authorization", `Bearer ${token}`);
            return next(req);
          },
        ],
      }),
    );
  const serversOf = (token: string) =>
    createClient(
      ServerService,
      createConnectTransport({
        baseUrl: t.hub.url,
        httpVersion: "1.1",
        interceptors: [
          (next) => async (req) => {
            req.header.set("authorization", `Bearer ${token}`);
            return next(req);
          },
        ],
      }),
    );
  async function joinTokenFor(token: string, name: string) {
    const { token: joinToken } = await serversOf(token).createJoinToken({ name });
    return joinToken;
  }

  beforeAll(async () => {
    t = await startTestHub("postgres");
    dir = mkdtempSync(join(tmpdir(), "flotilla-fleet-"));
    const owner = await bootstrapOwner(t.hub);
    tokenA = owner.token;
    // A second organization of the same owner: its fleet is its own.
    tokenA2 = await signInToNewOrganization(t.hub.url, tokenA, owner.email, "Fleet Two");
    agent = await startAgent({
      hub: t.hub.url,
      joinToken: await joinTokenFor(tokenA, "connected"),
      dataDir: join(dir, "agent"),
      logger: createLogger({ level: "silent" }),
      adminPort: 0,
    });
    await agent.connected();
    connectedId = agent.serverId;
    // Enrolled, never connected: no agent answers for it.
    const joined = await fetch(`${t.hub.url}/agent/v1/join`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: await joinTokenFor(tokenA, "idle") }),
    });
    idleId = ((await joined.json()) as { server_id: string }).server_id;
  });

  afterAll(async () => {
    await agent?.close();
    await t?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("probes the agent this replica holds over its channel and reports the idle server offline", async () => {
    const r = await fleet(tokenA).getFleetStatus({ refresh: true });
    const byId = new Map(r.members.map((m) => [m.id, m]));
    expect([...byId.keys()].sort()).toEqual([connectedId, idleId].sort());
    expect(byId.get(connectedId)).toMatchObject({
      kind: "agent",
      name: "connected",
      health: "ok",
      probe: "channel",
      version: expect.any(String),
    });
    expect(byId.get(idleId)).toMatchObject({ name: "idle", health: "offline", probe: "none" });
  });

  it("shows another organization none of these servers", async () => {
    const r = await fleet(tokenA2).getFleetStatus({ refresh: true });
    expect(r.members).toEqual([]);
  });

  it("answers from the cache, even when asked to refresh within a second of the last probe round", async () => {
    const first = await fleet(tokenA).getFleetStatus({ refresh: true });
    const again = await fleet(tokenA).getFleetStatus({});
    expect(again.cached).toBe(true);
    expect(again.probedAt).toEqual(first.probedAt);
    const stormStarted = Date.now();
    const storm = await Promise.all(
      Array.from({ length: 20 }, () => fleet(tokenA).getFleetStatus({ refresh: true })),
    );
    // Twenty refreshes make at most one probe round per second they took (one, unless this
    // machine is so loaded that they spread over more than a second), never twenty.
    const rounds = new Set(
      storm.map((s) => s.probedAt?.seconds.toString() + String(s.probedAt?.nanos)),
    ).size;
    expect(rounds).toBeLessThanOrEqual(1 + Math.floor((Date.now() - stormStarted) / 1000));
    expect(storm.filter((s) => s.cached).length).toBeGreaterThanOrEqual(20 - rounds);
    await new Promise((r) => setTimeout(r, 1100));
    const fresh = await fleet(tokenA).getFleetStatus({ refresh: true });
    expect(fresh.cached).toBe(false);
  });

  it("reports a draining agent as draining", async () => {
    await agent.admin("drain");
    try {
      await new Promise((r) => setTimeout(r, 1100));
      const r = await fleet(tokenA).getFleetStatus({ refresh: true });
      expect(r.members.find((m) => m.id === connectedId)?.health).toBe("draining");
    } finally {
      await agent.admin("resume");
    }
  });

  it("refuses an unknown kind, too many kinds, and a kinds field of the wrong type", async () => {
    const unknown = await fleet(tokenA)
      .getFleetStatus({ kinds: ["satellite"] })
      .catch((e) => ConnectError.from(e));
    expect(unknown).toBeInstanceOf(ConnectError);
    expect((unknown as ConnectError).code).toBe(Code.InvalidArgument);
    expect((unknown as ConnectError).metadata.get("flotilla-error-field")).toBe("kinds[0]");
    const many = await fleet(tokenA)
      .getFleetStatus({ kinds: Array.from({ length: 9 }, () => "agent") })
      .catch((e) => ConnectError.from(e));
    expect((many as ConnectError).metadata.get("flotilla-error-field")).toBe("kinds");
    const wrongType = await fetch(`${t.hub.url}/flotilla.v1.FleetService/GetFleetStatus`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${tokenA}` },
      body: JSON.stringify({ kinds: "agent", refresh: "yes" }),
    });
    expect(wrongType.status).toBe(400);
    expect(await wrongType.json()).toMatchObject({
      code: "invalid_argument",
      message: expect.stringContaining("kinds"),
    });
  });
});
