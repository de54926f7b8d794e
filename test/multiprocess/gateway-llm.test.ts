// The LLM path through a real gateway process, called with the official `openai` client against
// an OpenAI-compatible upstream FAKE on loopback (no real provider is reachable here): credential
// injection, the model allowlist, unbuffered server-sent events, consumer keys (401) and the
// per-key token bucket (429).
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/pg.js";
import {
  ADMIN,
  eventually,
  type GatewayProcess,
  killGateways,
  rpc,
  startGatewayProcess,
} from "./gateway-procs.js";
import { type FlotillaProcess, killAll, SECRET_A, startFlotilla } from "./procs.js";

const UPSTREAM_KEY = "sk-fake-upstream-credential-0123456789";

/** An OpenAI-compatible FAKE: chat completions, plain and streamed. */
class FakeOpenAi {
  server: Server;
  seen: IncomingHttpHeaders[] = [];
  /** Resolved by the test when it has received the first streamed chunk. */
  private firstChunkSeen: (() => void) | undefined;
  firstChunkReceived = new Promise<void>((resolve) => {
    this.firstChunkSeen = resolve;
  });

  constructor() {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", async () => {
        this.seen.push(req.headers);
        if (req.headers.authorization !== `Bearer ${UPSTREAM_KEY}`) {
          res.writeHead(401, { "content-type": "application/json" });
          res.end(JSON.stringify({ error: { message: "fake: wrong upstream key", type: "auth" } }));
          return;
        }
        const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        const base = { id: "chatcmpl-fake", created: 1, model: body.model };
        if (!body.stream) {
          res.writeHead(200, { "content-type": "application/json" });
          res.end(
            JSON.stringify({
              ...base,
              object: "chat.completion",
              choices: [
                {
                  index: 0,
                  finish_reason: "stop",
                  message: { role: "assistant", content: `echo: ${body.messages[0].content}` },
                },
              ],
            }),
          );
          return;
        }
        res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
        const chunk = (content: string) =>
          `data: ${JSON.stringify({ ...base, object: "chat.completion.chunk", choices: [{ index: 0, delta: { content }, finish_reason: null }] })}\n\n`;
        res.write(chunk("first"));
        // The rest waits until the client has the first chunk: a buffering proxy would never
        // deliver it, and this test would time out instead of passing.
        await this.firstChunkReceived;
        res.write(chunk(" second"));
        res.end("data: [DONE]\n\n");
      });
    });
  }

  markFirstChunk() {
    this.firstChunkSeen?.();
  }

  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", () => r()));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/v1`;
  }
}

describe("LLM provider and proxy through a gateway process", () => {
  let database: TestDatabase;
  let hub: FlotillaProcess;
  let token: string;
  let dir: string;
  let gw: GatewayProcess;
  let fake: FakeOpenAi;
  let consumerKey: string;
  let tightKey: string;

  beforeAll(async () => {
    database = await createTestDatabase("mp_gateway_llm");
    dir = mkdtempSync(join(tmpdir(), "flotilla-gw-llm-"));
    hub = await startFlotilla("hub", {
      env: {
        FLOTILLA_DATABASE_URL: database.url,
        FLOTILLA_SESSION_SECRET: SECRET_A,
        FLOTILLA_ADMIN_EMAIL: ADMIN.email,
        FLOTILLA_ADMIN_PASSWORD: ADMIN.password,
        FLOTILLA_DB_POOL_MAX: "4",
      },
    });
    await hub.waitReady(30_000);
    token = String((await rpc(hub.url, "IdentityService/Login", ADMIN)).sessionToken);
    fake = new FakeOpenAi();
    const upstreamUrl = await fake.listen();
    const created = await rpc(hub.url, "GatewayService/CreateGateway", { name: "edge-llm" }, token);
    const gatewayId = (created.gateway as { id: string }).id;
    const provider = await rpc(
      hub.url,
      "ApiService/CreateApi",
      {
        name: "fake-llm",
        kind: "API_KIND_LLM_PROVIDER",
        definitionJson: JSON.stringify({
          contextPath: "/llm",
          upstreamUrl,
          models: ["fake-small"],
        }),
        credential: UPSTREAM_KEY,
      },
      token,
    );
    const providerId = (provider.api as { id: string }).id;
    const proxy = await rpc(
      hub.url,
      "ApiService/CreateApi",
      {
        name: "team-ai",
        kind: "API_KIND_LLM_PROXY",
        definitionJson: JSON.stringify({
          contextPath: "/ai",
          rateLimit: { requestsPerMinute: 600 },
        }),
        provider: providerId,
      },
      token,
    );
    const tight = await rpc(
      hub.url,
      "ApiService/CreateApi",
      {
        name: "tight-ai",
        kind: "API_KIND_LLM_PROXY",
        definitionJson: JSON.stringify({
          contextPath: "/tight",
          rateLimit: { requestsPerMinute: 2 },
        }),
        provider: providerId,
      },
      token,
    );
    const proxyId = (proxy.api as { id: string }).id;
    const tightId = (tight.api as { id: string }).id;
    consumerKey = String(
      (await rpc(hub.url, "ApiService/CreateConsumerKey", { api: proxyId, name: "alice" }, token))
        .key,
    );
    tightKey = String(
      (await rpc(hub.url, "ApiService/CreateConsumerKey", { api: tightId, name: "bob" }, token))
        .key,
    );
    for (const api of [providerId, proxyId, tightId])
      await rpc(hub.url, "ApiService/DeployApi", { api, gateway: gatewayId }, token);
    gw = await startGatewayProcess({
      hub: hub.url,
      token: String(created.token),
      dataDir: join(dir, "edge-llm"),
    });
    await eventually(async () => (await gw.status()).routes === 3, "three LLM routes");
  }, 120_000);

  afterAll(async () => {
    await killGateways();
    await killAll();
    fake?.server.close();
    await database?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  const client = (path: string, apiKey: string) =>
    new OpenAI({ baseURL: `${gw.url}${path}`, apiKey, maxRetries: 0 });

  it("the provider route injects the upstream credential; the caller's key never reaches the upstream", async () => {
    const before = fake.seen.length;
    const r = await client("/llm", "caller-key-not-forwarded").chat.completions.create({
      model: "fake-small",
      messages: [{ role: "user", content: "hello" }],
    });
    expect(r.choices[0]?.message.content).toBe("echo: hello");
    const headers = fake.seen[before]!;
    expect(headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
    expect(JSON.stringify(headers)).not.toContain("caller-key-not-forwarded");
    expect(headers["x-correlation-id"]).toBeTruthy();
  });

  it("a model outside the allowlist is refused with 403 and never reaches the upstream", async () => {
    const before = fake.seen.length;
    await expect(
      client("/llm", "x").chat.completions.create({
        model: "gpt-unlisted",
        messages: [{ role: "user", content: "hi" }],
      }),
    ).rejects.toBeInstanceOf(OpenAI.PermissionDeniedError);
    expect(fake.seen.length).toBe(before);
  });

  it("the allowlist cannot be dodged by the content type: other casing is checked, other types refused", async () => {
    const before = fake.seen.length;
    const post = (contentType: string | undefined) =>
      fetch(`${gw.url}/llm/chat/completions`, {
        method: "POST",
        headers: contentType ? { "content-type": contentType } : {},
        body: JSON.stringify({ model: "gpt-unlisted", messages: [] }),
      });
    expect((await post("Application/JSON; charset=utf-8")).status).toBe(403);
    expect((await post("text/plain")).status).toBe(415);
    expect(fake.seen.length).toBe(before);
  });

  it("the proxy streams server-sent events through unbuffered", async () => {
    const stream = await client("/ai", consumerKey).chat.completions.create({
      model: "fake-small",
      messages: [{ role: "user", content: "stream please" }],
      stream: true,
    });
    const parts: string[] = [];
    for await (const chunk of stream) {
      parts.push(chunk.choices[0]?.delta.content ?? "");
      if (parts.length === 1) fake.markFirstChunk();
    }
    expect(parts.join("")).toBe("first second");
  });

  it("a wrong consumer key gets 401, and the upstream is not called", async () => {
    const before = fake.seen.length;
    await expect(
      client("/ai", "fck_wrong").chat.completions.create({
        model: "fake-small",
        messages: [{ role: "user", content: "hi" }],
      }),
    ).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
    expect(fake.seen.length).toBe(before);
  });

  it("an exhausted token bucket gets 429 with retry-after", async () => {
    const c = client("/tight", tightKey);
    const ask = () =>
      c.chat.completions.create({
        model: "fake-small",
        messages: [{ role: "user", content: "x" }],
      });
    await ask();
    await ask();
    const err = await ask().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.RateLimitError);
    expect((err as InstanceType<typeof OpenAI.RateLimitError>).headers?.get("retry-after")).toMatch(
      /^\d+$/,
    );
    // Another key's bucket is its own.
    await expect(
      client("/ai", consumerKey).chat.completions.create({
        model: "fake-small",
        messages: [{ role: "user", content: "still fine" }],
      }),
    ).resolves.toBeTruthy();
  });
});
