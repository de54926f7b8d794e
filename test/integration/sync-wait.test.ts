// The server-side wait (wait_seconds) on its own: a wait outlives wait_seconds while events about
// the service keep coming (the timeout is rolling), events about another service do not keep it
// alive, and a failed outcome comes back with the agent's reason. No agent here: the test plays
// the executing replica by claiming and finishing the dispatch row itself.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ServerService } from "../../src/gen/flotilla/v1/servers_pb.js";
import { appendEvent } from "../../src/hub/outbox/index.js";
import { type Api, api, createFixture } from "../support/core.js";
import { bootstrapOwner, startTestHub, type TestHub } from "../support/hub.js";

describe("synchronous wait over asynchronous delivery", () => {
  let t: TestHub;
  let a: Api;
  let serverId: string;
  let organizationId: string;
  let serviceId: string;
  let otherServiceId: string;

  beforeAll(async () => {
    t = await startTestHub("postgres");
    const { token } = await bootstrapOwner(t.hub);
    a = api(t.hub.url, token);
    const auth: Interceptor = (next) => async (req) => {
      req.header.set("authorization", `Bearer ${token}`);
      return next(req);
    };
    const servers = createClient(
      ServerService,
      createConnectTransport({ baseUrl: t.hub.url, httpVersion: "1.1", interceptors: [auth] }),
    );
    // The organization's only server (no agent ever connects): services are placed on it.
    const { token: joinToken } = await servers.createJoinToken({ name: "box" });
    const joined = await fetch(`${t.hub.url}/agent/v1/join`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: joinToken }),
    });
    ({ server_id: serverId, organization_id: organizationId } = (await joined.json()) as {
      server_id: string;
      organization_id: string;
    });
    serviceId = (await createFixture(a, "wait")).serviceId;
    otherServiceId = (await createFixture(a, "other")).serviceId;
  });

  afterAll(async () => {
    await t?.stop();
  });

  /** The newest dispatch of the service, once the request has written it. */
  async function written(service: string, notId?: string): Promise<string> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (Date.now() > deadline) throw new Error(`no new dispatch for ${service}`);
      const { rows } = await t.hub.db.query<{ id: string }>(
        "SELECT id FROM dispatches WHERE service_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
        [service],
      );
      if (rows[0] && rows[0].id !== notId) return rows[0].id;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  const progress = (about: string) =>
    t.hub.db.tx((tx) =>
      appendEvent(tx, {
        organizationId,
        type: "service.status_changed",
        subjectId: about,
        payload: { service_id: about, status: "deploying" },
      }),
    );
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it("keeps waiting past wait_seconds while progress comes, and answers the outcome", async () => {
    const call = a.services.stopService({ serviceId, waitSeconds: 1 }, { timeoutMs: 0 });
    const id = await written(serviceId);
    // Six progress events 400 ms apart: 2.4 s in all, more than twice the 1 s wait.
    for (let i = 0; i < 6; i++) {
      await sleep(400);
      await progress(serviceId);
    }
    expect(await t.hub.dispatches.claim(id, "test-executor")).not.toBeNull();
    expect(await t.hub.dispatches.finish(id, serverId, { ok: true })).not.toBeNull();
    const r = await call;
    expect(r.dispatch).toMatchObject({ id, state: "done", error: "" });
  });

  it("does not count events about another service as progress", async () => {
    const before = await written(serviceId);
    const call = a.services
      .stopService({ serviceId, waitSeconds: 1 }, { timeoutMs: 0 })
      .catch((e) => ConnectError.from(e));
    const id = await written(serviceId, before);
    for (let i = 0; i < 6; i++) {
      await sleep(400);
      await progress(otherServiceId);
    }
    const err = await call;
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.DeadlineExceeded);
    expect((err as ConnectError).metadata.get("flotilla-error-code")).toBe("dispatch.timeout");
    expect((err as ConnectError).rawMessage).toContain(id);
    // The work goes on: the row is still there to be delivered.
    expect((await t.hub.dispatches.get(id)).state).toBe("pending");
  });

  it("stops waiting when the client hangs up, and leaves the work pending", async () => {
    const before = await written(serviceId);
    const hangUp = new AbortController();
    const call = a.services
      .stopService({ serviceId, waitSeconds: 30 }, { timeoutMs: 0, signal: hangUp.signal })
      .catch((e) => e);
    const id = await written(serviceId, before);
    await sleep(200);
    hangUp.abort();
    await call;
    // The hub's own record of the call: it ended long before the 30 s wait, because the call
    // was cancelled, not because the dispatch finished.
    const deadline = Date.now() + 5_000;
    let ended: Record<string, unknown> | undefined;
    while (!ended && Date.now() < deadline) {
      ended = t.logs.find(
        (r) =>
          r.msg === "rpc" &&
          r.rpc === "flotilla.v1.ServicesService/StopService" &&
          r.code === "server.draining",
      );
      if (!ended) await sleep(50);
    }
    expect(ended).toBeDefined();
    expect((await t.hub.dispatches.get(id)).state).toBe("pending");
  });

  it("answers a failed outcome with the agent's reason", async () => {
    const before = await written(serviceId);
    const call = a.services.stopService({ serviceId, waitSeconds: 30 }, { timeoutMs: 0 });
    const id = await written(serviceId, before);
    await t.hub.dispatches.claim(id, "test-executor");
    await t.hub.dispatches.finish(id, serverId, { ok: false, error: "the driver refused" });
    const r = await call;
    expect(r.dispatch).toMatchObject({ id, state: "failed", error: "the driver refused" });
  });
});
