// Gateways in the fleet view: pinged over the event stream this replica holds, unreachable when
// the pong never comes, online from their last request when no stream is here, offline when never
// seen; filtered by kind, invisible to another organization, bad input refused with its field.
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { GatewayService } from "../../src/gen/flotilla/v1/apis_pb.js";
import { FleetService } from "../../src/gen/flotilla/v1/fleet_pb.js";
import { FLOTILLA_VERSION, GATEWAY_SYNC, GATEWAY_VERSION_HEADER } from "../../src/shared/index.js";
import {
  bootstrapOwner,
  signInToNewOrganization,
  startTestHub,
  type TestHub,
} from "../support/hub.js";

describe("fleet status of gateways", () => {
  let t: TestHub;
  let tokenA: string;
  let tokenB: string;
  const sockets: WebSocket[] = [];
  const ids: Record<string, string> = {};

  const transport = (token: string) =>
    createConnectTransport({
      baseUrl: t.hub.url,
      httpVersion: "1.1",
      interceptors: [
        (next) => async (req) => {
          req.header.set("authorization", `Bearer ${token}`);
          return next(req);
        },
      ],
    });
  const fleet = (token: string) => createClient(FleetService, transport(token));

  /** The gateway's event stream, opened with its token (autoPong false: a stream that never answers pings). */
  async function openStream(
    gatewayToken: string,
    autoPong = true,
    version?: string,
  ): Promise<WebSocket> {
    const ws = new WebSocket(`${t.hub.url.replace(/^http/, "ws")}${GATEWAY_SYNC.events}`, {
      headers: {
        authorization: `Bearer ${gatewayToken}`,
        ...(version === undefined ? {} : { [GATEWAY_VERSION_HEADER]: version }),
      },
      autoPong,
    });
    sockets.push(ws);
    await new Promise<void>((resolve, reject) => {
      ws.on("message", (data) => {
        if (JSON.parse(String(data)).type === "hello") resolve();
      });
      ws.once("error", reject);
    });
    return ws;
  }

  beforeAll(async () => {
    t = await startTestHub("postgres");
    const owner = await bootstrapOwner(t.hub);
    tokenA = owner.token;
    tokenB = await signInToNewOrganization(t.hub.url, tokenA, owner.email, "Fleet Gateways Two");
    const gateways = createClient(GatewayService, transport(tokenA));
    const tokens: Record<string, string> = {};
    for (const name of ["streaming", "silent", "polling", "never", "unversioned", "garbled"]) {
      const r = await gateways.createGateway({ name });
      ids[name] = r.gateway!.id;
      tokens[name] = r.token;
    }
    await openStream(tokens.streaming!, true, FLOTILLA_VERSION);
    await openStream(tokens.silent!, false, FLOTILLA_VERSION);
    await openStream(tokens.unversioned!);
    await openStream(tokens.garbled!, true, `<img src=x onerror=alert(1)>${"9".repeat(80)}`);
    // A request without a stream: what a gateway held by another replica looks like from here.
    const polled = await fetch(`${t.hub.url}${GATEWAY_SYNC.configHash}`, {
      headers: { authorization: `Bearer ${tokens.polling}` },
    });
    expect(polled.status).toBe(200);
  });

  afterAll(async () => {
    for (const ws of sockets) ws.terminate();
    await t?.stop();
  });

  it("reports each gateway with how it was probed: channel ping, no pong, last request, never seen", async () => {
    const r = await fleet(tokenA).getFleetStatus({ kinds: ["gateway"], refresh: true });
    const byName = new Map(r.members.map((m) => [m.name, m]));
    expect([...byName.keys()].sort()).toEqual([
      "garbled",
      "never",
      "polling",
      "silent",
      "streaming",
      "unversioned",
    ]);
    for (const m of r.members) expect(m.kind).toBe("gateway");
    expect(byName.get("streaming")).toMatchObject({
      id: ids.streaming,
      health: "ok",
      probe: "channel",
    });
    expect(byName.get("streaming")!.lastHeartbeat).toBeDefined();
    expect(byName.get("silent")).toMatchObject({
      health: "unreachable",
      probe: "channel",
      detail: expect.stringContaining("no pong"),
    });
    expect(byName.get("polling")).toMatchObject({ health: "online", probe: "heartbeat" });
    expect(byName.get("never")).toMatchObject({
      health: "offline",
      probe: "none",
      detail: "has never connected",
    });
    // The version a gateway names on its stream; none, or one that is no version, stays empty.
    expect(byName.get("streaming")!.version).toBe(FLOTILLA_VERSION);
    expect(byName.get("unversioned")).toMatchObject({ health: "ok", version: "" });
    expect(byName.get("garbled")).toMatchObject({ health: "ok", version: "" });
  });

  it("lists gateways beside agents when no kind is named, and only agents when asked for agents", async () => {
    const all = await fleet(tokenA).getFleetStatus({ refresh: true });
    expect(all.members.filter((m) => m.kind === "gateway")).toHaveLength(6);
    const agents = await fleet(tokenA).getFleetStatus({ kinds: ["agent"], refresh: true });
    expect(agents.members.filter((m) => m.kind === "gateway")).toEqual([]);
  });

  it("shows another organization none of these gateways", async () => {
    const r = await fleet(tokenB).getFleetStatus({ kinds: ["gateway"], refresh: true });
    expect(r.members).toEqual([]);
  });

  it("refuses an unknown kind beside gateway, duplicates past the limit, and a kinds field of the wrong type", async () => {
    const unknown = await fleet(tokenA)
      .getFleetStatus({ kinds: ["gateway", "gateways"] })
      .catch((e) => ConnectError.from(e));
    expect((unknown as ConnectError).code).toBe(Code.InvalidArgument);
    expect((unknown as ConnectError).metadata.get("flotilla-error-field")).toBe("kinds[1]");
    expect((unknown as ConnectError).message).toContain("agent, gateway");
    const many = await fleet(tokenA)
      .getFleetStatus({ kinds: Array.from({ length: 9 }, () => "gateway") })
      .catch((e) => ConnectError.from(e));
    expect((many as ConnectError).metadata.get("flotilla-error-field")).toBe("kinds");
    const wrongType = await fetch(`${t.hub.url}/flotilla.v1.FleetService/GetFleetStatus`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${tokenA}` },
      body: JSON.stringify({ kinds: [7] }),
    });
    expect(wrongType.status).toBe(400);
    const unauthenticated = await fetch(`${t.hub.url}/flotilla.v1.FleetService/GetFleetStatus`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ kinds: ["gateway"] }),
    });
    expect(unauthenticated.status).toBe(401);
  });
});
