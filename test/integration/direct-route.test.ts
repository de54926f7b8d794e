// The hub -> agent direct route on the wire: a dispatch's secrets never cross in clear, only an
// answer sealed under the server's key for that dispatch completes it, an admin endpoint's answer
// is capped and reduced to its expected shape, and the claim's lease outlives the HTTP deadline.
// Real PostgreSQL, the real agent admin server (src/agent/admin.ts) behind a recording TCP proxy;
// the agent's executor and the misbehaving endpoints are fakes, named as such.
import {
  createServer,
  type Server as HttpServer,
  type IncomingMessage,
  type ServerResponse,
} from "node:http";
import type { AddressInfo } from "node:net";
import {
  createConnection,
  createServer as createTcpServer,
  type Server as TcpServer,
} from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { serveAdmin } from "../../src/agent/admin.js";
import { Keyring } from "../../src/hub/config/index.js";
import { type ControlChannel, DispatchRouter } from "../../src/hub/control/index.js";
import { InternalHttpClient, InternalResponseTooLarge } from "../../src/hub/internal/index.js";
import { type Dispatch, DispatchStore, ServersService } from "../../src/hub/servers/index.js";
import {
  createLogger,
  DIRECT_ANSWER_SIGNATURE_HEADER,
  DIRECT_SIGNATURE_HEADER,
  directKey,
  directSealKey,
  FlotillaError,
  type HubFrame,
  sealDirectAnswer,
  signDirect,
  signDirectAnswer,
} from "../../src/shared/index.js";
import { migrate, openPostgres, type PgDb } from "../../src/store/index.js";
import { createTestDatabase, type TestDatabase } from "../support/pg.js";

const ORG = "00000000-0000-7000-8000-0000000000a1";
const SECRET = "server-secret-for-the-direct-route-test-0123456789";
/** What resolveArgs adds at the moment of sending, as the hub does for a database's password. */
const PASSWORD = "pg-password-NEVER-ON-THE-WIRE-5f2c";
/** A marker in the agent's answer: the outcome is sealed too. */
const RESULT_MARKER = "result-marker-NEVER-ON-THE-WIRE-91ab";

/** Everything that crossed a TCP proxy, both directions. */
interface Capture {
  url: string;
  bytes(): string;
}

describe("direct route to an agent's admin endpoint", () => {
  let database: TestDatabase;
  let db: PgDb;
  let dispatches: DispatchStore;
  let servers: ServersService;
  let http: InternalHttpClient;
  let router: DispatchRouter;
  const keyring = new Keyring({ id: "direct-test", key: Buffer.alloc(32, 7) });
  const closers: Array<() => Promise<void> | void> = [];
  let serverSeq = 0;

  beforeAll(async () => {
    database = await createTestDatabase("direct_route");
    db = openPostgres(database.url, { max: 10 });
    await migrate(db);
    dispatches = new DispatchStore(db);
    servers = new ServersService(db, keyring);
    http = new InternalHttpClient({ retryBaseMs: 5, retryCapMs: 20 });
    await db.query("INSERT INTO organizations (id, slug, name) VALUES ($1, 'org', 'Org')", [ORG]);
    // A stand-in for this replica's control channel: it holds no agent socket, so every call
    // takes the direct route (the channel itself is exercised by the multi-process tests).
    const noSockets = {
      holds: () => false,
      wake: () => {},
      admin: () => Promise.reject(new Error("no socket here")),
    } as unknown as ControlChannel;
    router = new DispatchRouter({
      control: noSockets,
      servers,
      dispatches,
      http,
      hubId: "hub-direct-test",
      logger: createLogger({ level: "silent" }),
      resolveArgs: async (d: Dispatch) => ({ ...d.args, env: { POSTGRES_PASSWORD: PASSWORD } }),
    });
  });
  afterAll(async () => {
    for (const close of closers.reverse()) await close();
    await http?.close();
    await db?.close();
    await database?.drop();
  });

  /** A server whose secret is SECRET and whose agent advertises `adminUrl`. */
  async function server(adminUrl: string): Promise<string> {
    serverSeq++;
    const id = `00000000-0000-7000-8000-${String(serverSeq).padStart(12, "0")}`;
    const { sealed, keyId } = keyring.seal(SECRET, `flotilla/server-secret/${id}`);
    await db.query(
      `INSERT INTO servers (id, organization_id, name, secret_sealed, secret_key_id, admin_url)
       VALUES ($1, $2, $3, $4, $5, $6)`,
      [id, ORG, `box-${serverSeq}`, sealed, keyId, adminUrl],
    );
    return id;
  }

  async function intent(serverId: string, op: "stop" | "job", args = {}): Promise<Dispatch> {
    return db.tx((tx) => dispatches.insert(tx, { organizationId: ORG, serverId, op, args }));
  }

  /** A TCP proxy to `target` that keeps every byte in both directions. */
  async function recordingProxy(target: string): Promise<Capture> {
    const { hostname, port } = new URL(target);
    const chunks: Buffer[] = [];
    const proxy: TcpServer = createTcpServer((client) => {
      const upstream = createConnection({ host: hostname, port: Number(port) });
      client.on("data", (c: Buffer) => chunks.push(c));
      upstream.on("data", (c: Buffer) => chunks.push(c));
      client.pipe(upstream);
      upstream.pipe(client);
      client.on("error", () => upstream.destroy());
      upstream.on("error", () => client.destroy());
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", () => resolve()));
    closers.push(() => new Promise<void>((resolve) => proxy.close(() => resolve())));
    return {
      url: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`,
      bytes: () => Buffer.concat(chunks).toString("latin1"),
    };
  }

  /** The real agent admin server, with a fake executor that records what it was asked to run. */
  async function realAgentAdmin(
    serverId: string,
    ran: Array<Extract<HubFrame, { type: "dispatch" }>>,
  ) {
    const admin = await serveAdmin({
      port: 0,
      host: "127.0.0.1",
      status: () => ({
        version: "test",
        server_id: serverId,
        connected: false,
        draining: false,
        dispatches_in_flight: 0,
        instances: [],
      }),
      admin: async () => ({}),
      log: createLogger({ level: "silent" }),
      signingKey: () => directKey(SECRET, serverId),
      sealingKey: () => directSealKey(SECRET, serverId),
      dispatch: async (frame) => {
        ran.push(frame);
        return { ok: true, result: { marker: RESULT_MARKER } };
      },
    });
    closers.push(() => admin.close());
    return admin.url;
  }

  /** A fake agent endpoint answering every request with `answer`. */
  async function fakeEndpoint(
    answer: (res: ServerResponse, body: string, req: IncomingMessage) => void,
  ): Promise<string> {
    const s: HttpServer = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => answer(res, Buffer.concat(chunks).toString("utf8"), req));
    });
    await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", () => resolve()));
    closers.push(
      () =>
        new Promise<void>((resolve) => {
          s.closeAllConnections();
          s.close(() => resolve());
        }),
    );
    return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
  }

  it("a dispatch's decrypted secrets and the agent's outcome never cross the wire in clear", async () => {
    // The server row is made first, the agent's endpoint next (it needs the id), then the
    // proxy in front of it becomes the advertised address.
    const serverId = await server("http://127.0.0.1:1");
    const ran: Array<Extract<HubFrame, { type: "dispatch" }>> = [];
    const agentUrl = await realAgentAdmin(serverId, ran);
    const wire = await recordingProxy(agentUrl);
    await db.query("UPDATE servers SET admin_url = $2 WHERE id = $1", [serverId, wire.url]);

    const d = await intent(serverId, "stop");
    expect(await router.deliverDirect(d.id, wire.url)).toBe("done");
    // The agent got the secret (so it was on its way), yet the wire never showed it.
    expect(ran).toHaveLength(1);
    expect((ran[0]!.args.env as Record<string, string>).POSTGRES_PASSWORD).toBe(PASSWORD);
    expect(wire.bytes()).toContain("POST /v1/dispatch");
    expect(wire.bytes()).not.toContain(PASSWORD);
    expect(wire.bytes()).not.toContain(RESULT_MARKER);
    expect(await dispatches.get(d.id)).toMatchObject({
      state: "done",
      result: { marker: RESULT_MARKER },
    });
  });

  it("the agent refuses a dispatch frame that is signed but not sealed, and runs nothing", async () => {
    const serverId = await server("http://127.0.0.1:1");
    const ran: Array<Extract<HubFrame, { type: "dispatch" }>> = [];
    const agentUrl = await realAgentAdmin(serverId, ran);
    const frame = JSON.stringify({
      v: 1,
      type: "dispatch",
      id: "00000000-0000-4000-8000-00000000c1ea",
      ctx: {
        correlation: "plain",
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      },
      op: "stop",
      service_id: null,
      deployment_id: null,
      args: { env: { POSTGRES_PASSWORD: PASSWORD } },
    });
    const res = await http.call({
      method: "POST",
      url: `${agentUrl}/v1/dispatch`,
      body: frame,
      deadlineMs: 5000,
      idempotent: false,
      // The signature is valid: only the missing seal is wrong.
      sign: (m, p, b) => signDirect(directKey(SECRET, serverId), m, p, b),
    });
    expect(res.status).toBe(400);
    expect(JSON.parse(res.body)).toMatchObject({ code: "frame.malformed" });
    expect(ran).toEqual([]);
  });

  it("an answer that is forged, tampered, sealed under another key or for another dispatch never completes the dispatch", async () => {
    const cases: Array<[string, (dispatchId: string, serverId: string) => string]> = [
      ["forged in clear", () => JSON.stringify({ ok: true, result: { forged: true } })],
      [
        "sealed under another server's key",
        (id) => sealDirectAnswer(directSealKey("not-the-secret", id), id, { ok: true }),
      ],
      [
        "a captured answer to another dispatch",
        (_id, serverId) =>
          sealDirectAnswer(
            directSealKey(SECRET, serverId),
            "00000000-0000-4000-8000-0000000000ff",
            { ok: true, result: { forged: true } },
          ),
      ],
      [
        "stale (stamped ten minutes ago)",
        (id, serverId) =>
          sealDirectAnswer(directSealKey(SECRET, serverId), id, { ok: true }, Date.now() - 600_000),
      ],
      [
        "tampered in transit",
        (id, serverId) => {
          const good = JSON.parse(
            sealDirectAnswer(directSealKey(SECRET, serverId), id, { ok: false, error: "x" }),
          ) as { v: 1; sealed: string };
          const box = Buffer.from(good.sealed, "base64");
          box[20] = box[20]! ^ 0x01;
          return JSON.stringify({ v: 1, sealed: box.toString("base64") });
        },
      ],
    ];
    for (const [name, forge] of cases) {
      let target = { dispatchId: "", serverId: "" };
      const url = await fakeEndpoint((res) => {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(forge(target.dispatchId, target.serverId));
      });
      const serverId = await server(url);
      const d = await intent(serverId, "job", { timeout_ms: 5000 });
      target = { dispatchId: d.id, serverId };
      expect(await router.deliverDirect(d.id, url), name).toBe("pending");
      expect(await dispatches.get(d.id), name).toMatchObject({
        state: "pending",
        claimedBy: null,
        result: null,
        error: null,
      });
    }
  });

  it("the claim's lease outlives the HTTP deadline, for a lifecycle operation and for a job", async () => {
    let hold = true;
    let release: () => void = () => {};
    const seen: string[] = [];
    const url = await fakeEndpoint((res) => {
      seen.push("request");
      const refuse = () => {
        res.writeHead(503);
        res.end();
      };
      // The first attempt is held until the test has read the lease; then every attempt is
      // refused, so the dispatch goes back to pending.
      if (hold) release = refuse;
      else refuse();
    });
    const serverId = await server(url);
    for (const [op, args, httpDeadlineSeconds] of [
      ["stop", {}, 300],
      ["job", { timeout_ms: 10_000 }, 70],
    ] as const) {
      const d = await intent(serverId, op, args);
      hold = true;
      seen.length = 0;
      const delivered = router.deliverDirect(d.id, url);
      for (let i = 0; i < 400 && seen.length === 0; i++)
        await new Promise((r) => setTimeout(r, 25));
      const { rows } = await db.query<{ lease: number; claimed_by: string }>(
        "SELECT extract(epoch FROM deadline_at - updated_at)::float8 AS lease, claimed_by FROM dispatches WHERE id = $1",
        [d.id],
      );
      expect(rows[0]!.claimed_by).toBe("hub-direct-test");
      expect(rows[0]!.lease).toBeGreaterThan(httpDeadlineSeconds);
      hold = false;
      release();
      expect(await delivered).toBe("pending");
      expect(await dispatches.get(d.id)).toMatchObject({ state: "pending", claimedBy: null });
    }
  });

  it("an endless answer from an advertised endpoint is cut off at the cap with a typed error", async () => {
    let written = 0;
    const url = await fakeEndpoint((res) => {
      res.writeHead(200, { "content-type": "application/json" });
      const chunk = Buffer.alloc(64 * 1024, "a");
      const pump = () => {
        while (!res.destroyed && res.write(chunk)) written += chunk.length;
        if (!res.destroyed) res.once("drain", pump);
      };
      pump();
    });
    const serverId = await server(url);
    const err = await router.admin(serverId, "status", 10_000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InternalResponseTooLarge);
    expect((err as FlotillaError).code).toBe("agent.unavailable");
    // Cut off near the cap: the hub did not buffer the stream.
    expect(written).toBeLessThan(64 * 1024 * 1024);
  });

  /** An endpoint answering as the agent of the next server row would, its answers signed. */
  async function signingEndpoint(status: number, text: string) {
    const serverId = `00000000-0000-7000-8000-${String(serverSeq + 1).padStart(12, "0")}`;
    const url = await fakeEndpoint((res, _body, req) => {
      const requestSignature = String(req.headers[DIRECT_SIGNATURE_HEADER]);
      res.writeHead(status, {
        "content-type": "application/json",
        [DIRECT_ANSWER_SIGNATURE_HEADER]: signDirectAnswer(
          directKey(SECRET, serverId),
          requestSignature,
          status,
          text,
        ),
      });
      res.end(text);
    });
    expect(await server(url)).toBe(serverId);
    return serverId;
  }

  it("an admin answer not signed by the agent for this very request is refused, whatever it says", async () => {
    const good = JSON.stringify({
      version: "9.9.9",
      server_id: "s",
      connected: true,
      draining: false,
      dispatches_in_flight: 0,
      instances: [],
    });
    // Forged on the path: no signature, a malformed one, one under another key.
    const forgeries: Array<(requestSignature: string) => string | undefined> = [
      () => undefined,
      () => "not-hex",
      (sig) => signDirectAnswer(directKey("another-secret", "x"), sig, 200, good),
    ];
    for (const forge of forgeries) {
      const url = await fakeEndpoint((res, _body, req) => {
        const signature = forge(String(req.headers[DIRECT_SIGNATURE_HEADER]));
        res.writeHead(200, {
          "content-type": "application/json",
          ...(signature ? { [DIRECT_ANSWER_SIGNATURE_HEADER]: signature } : {}),
        });
        res.end(good);
      });
      const err = await router.admin(await server(url), "status", 5000).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(FlotillaError);
      expect((err as FlotillaError).code).toBe("agent.unavailable");
      expect((err as Error).message).toContain("not signed by its agent");
    }
    // Replayed: a genuine answer to an earlier request, sent again for a later one.
    let first: { signature: string } | undefined;
    const replayId = `00000000-0000-7000-8000-${String(serverSeq + 1).padStart(12, "0")}`;
    const replaying = await fakeEndpoint((res, _body, req) => {
      first ??= {
        signature: signDirectAnswer(
          directKey(SECRET, replayId),
          String(req.headers[DIRECT_SIGNATURE_HEADER]),
          200,
          good,
        ),
      };
      res.writeHead(200, {
        "content-type": "application/json",
        [DIRECT_ANSWER_SIGNATURE_HEADER]: first.signature,
      });
      res.end(good);
    });
    expect(await server(replaying)).toBe(replayId);
    expect(await router.admin(replayId, "status", 5000)).toMatchObject({ version: "9.9.9" });
    await new Promise((r) => setTimeout(r, 5));
    const replayed = await router.admin(replayId, "status", 5000).catch((e: unknown) => e);
    expect((replayed as Error).message).toContain("not signed by its agent");
  });

  it("admin status returns only the fields of an agent status, never the endpoint's own text", async () => {
    const answers = [
      "<html>this text must not reach the caller</html>",
      JSON.stringify({ message: "this text must not reach the caller" }),
    ];
    for (const text of answers) {
      const serverId = await signingEndpoint(200, text);
      const err = await router.admin(serverId, "status", 5000).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(FlotillaError);
      expect((err as Error).message).not.toContain("must not reach");
    }
    const refusing = await signingEndpoint(
      500,
      JSON.stringify({ code: "internal", message: "this text must not reach the caller" }),
    );
    const refusedErr = await router.admin(refusing, "status", 5000).catch((e: unknown) => e);
    expect((refusedErr as Error).message).not.toContain("must not reach");

    const shaped = await signingEndpoint(
      200,
      JSON.stringify({
        version: "1.2.3",
        server_id: "s",
        connected: true,
        draining: false,
        dispatches_in_flight: 2,
        instances: [{ serviceId: "a", deploymentId: "b", pid: 3, port: 4, extra: "dropped" }],
        injected: "dropped",
      }),
    );
    expect(await router.admin(shaped, "status", 5000)).toEqual({
      version: "1.2.3",
      server_id: "s",
      connected: true,
      draining: false,
      dispatches_in_flight: 2,
      instances: [{ serviceId: "a", deploymentId: "b", pid: 3, port: 4 }],
    });
  });
});
