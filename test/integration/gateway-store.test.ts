// The gateway's guards, in process with the real better-sqlite3 store: stale rows and events
// change nothing, equal timestamps resolve by deploymentId the same way in any order, one bad
// definition fails alone, and an archive with entries outside their directory is rejected whole
// (served by a hostile stand-in for the hub: the real hub never writes such an archive).
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  ConfigStore,
  HubSync,
  type HubSyncOptions,
  LocalStore,
  type StoredRow,
} from "../../src/gateway/index.js";
import {
  type DeploymentContent,
  expectedRowLine,
  GATEWAY_SYNC,
  readTar,
  type StatusReport,
  UnsafeArchiveError,
  writeTar,
} from "../../src/shared/index.js";

const dirs: string[] = [];
const newStore = () => {
  const dir = mkdtempSync(join(tmpdir(), "flotilla-gw-store-"));
  dirs.push(dir);
  return new LocalStore(dir, "fgw_test-token");
};

/** A HubSync on hubUrl with a quiet logger, and a fresh store and config unless given. */
const syncTo = (hubUrl: string, o: Partial<HubSyncOptions> = {}) =>
  new HubSync({
    hubUrl,
    token: "fgw_x",
    store: o.store ?? newStore(),
    config: o.config ?? new ConfigStore({ report: () => {} }),
    logger: { info() {}, warn() {}, error() {} },
    ...o,
  });
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const API = "0190a000-0000-7000-8000-000000000001";
const DEP_A = "0190a000-0000-7000-8000-00000000000a";
const DEP_B = "0190a000-0000-7000-8000-00000000000b";

function content(apiId: string, deploymentId: string, contextPath: string): string {
  const c: DeploymentContent = {
    apiId,
    deploymentId,
    name: `api-${contextPath.slice(1)}`,
    kind: "RestApi",
    definition: { contextPath, upstream: { url: "http://127.0.0.1:9" } },
  };
  return JSON.stringify(c);
}

const row = (
  deploymentId: string,
  deployedAt: number,
  state: "DEPLOYED" | "UNDEPLOYED" = "DEPLOYED",
  path = "/x",
): StoredRow => ({
  apiId: API,
  deploymentId,
  kind: "RestApi",
  state,
  deployedAt,
  content: state === "DEPLOYED" ? content(API, deploymentId, path) : null,
});

describe("the gateway's local store guard", () => {
  it("a write older than the stored row is ignored and reports no change", () => {
    const store = newStore();
    expect(store.upsert(row(DEP_B, 2000))).toBe(true);
    expect(store.upsert(row(DEP_A, 1000))).toBe(false);
    expect(store.get(API)).toMatchObject({ deploymentId: DEP_B, deployedAt: 2000 });
    // The same row again is no change either: the config store hears nothing.
    expect(store.upsert(row(DEP_B, 2000))).toBe(false);
  });

  it("an equal-timestamp tie resolves to the larger deploymentId in either arrival order", () => {
    const one = newStore();
    const two = newStore();
    one.upsert(row(DEP_A, 5000));
    one.upsert(row(DEP_B, 5000));
    two.upsert(row(DEP_B, 5000));
    two.upsert(row(DEP_A, 5000));
    expect(one.get(API)?.deploymentId).toBe(DEP_B);
    expect(two.get(API)?.deploymentId).toBe(DEP_B);
    expect(one.configHash()).toBe(two.configHash());
  });

  it("a state-only update keeps the content; a missing content fills in for the same deployment", () => {
    const store = newStore();
    expect(store.upsert({ ...row(DEP_A, 1000), content: null })).toBe(true);
    expect(store.upsert(row(DEP_A, 1000))).toBe(true);
    expect(store.upsert({ ...row(DEP_A, 1500, "UNDEPLOYED") })).toBe(true);
    expect(store.get(API)).toMatchObject({ state: "UNDEPLOYED", deployedAt: 1500 });
    expect(store.get(API)?.content).toContain(DEP_A);
  });

  it("the config hash follows every write that changes a row, and only those", () => {
    const store = newStore();
    const empty = store.configHash();
    store.upsert(row(DEP_A, 1000));
    const one = store.configHash();
    expect(one).not.toBe(empty);
    // A losing write changes nothing, so the hash stays.
    store.upsert(row(DEP_A, 900));
    expect(store.configHash()).toBe(one);
    store.upsert(row(DEP_A, 1500, "UNDEPLOYED"));
    expect(store.configHash()).not.toBe(one);
    expect(store.delete(API, DEP_A)).toBe(true);
    expect(store.configHash()).toBe(empty);
  });

  it("an LLM API's content (with its credential) is sealed at rest; another token cannot read it", () => {
    const dir = mkdtempSync(join(tmpdir(), "flotilla-gw-seal-"));
    dirs.push(dir);
    const a = new LocalStore(dir, "fgw_first");
    const secret = "sk-never-on-disk-in-clear-0123456789";
    a.upsert({
      ...row(DEP_A, 1000),
      kind: "LlmProvider",
      content: JSON.stringify({ credential: secret }),
    });
    expect(a.get(API)?.content).toContain(secret);
    a.close();
    const onDisk = ["gateway.sqlite", "gateway.sqlite-wal"]
      .map((f) => (existsSync(join(dir, f)) ? readFileSync(join(dir, f)).toString("latin1") : ""))
      .join("");
    expect(onDisk).not.toContain(secret);
    const b = new LocalStore(dir, "fgw_second");
    expect(b.get(API)).toMatchObject({ deploymentId: DEP_A, content: null });
    b.close();
  });
});

describe("the gateway's config store", () => {
  it("one invalid definition fails alone and is reported; the others get routes", async () => {
    const reports: StatusReport[] = [];
    const config = new ConfigStore({ report: (r) => reports.push(r) });
    const ids = [1, 2, 3].map((n) => `0190a000-0000-7000-8000-00000000010${n}`);
    const rows: StoredRow[] = ids.map((id, i) => ({
      apiId: id,
      deploymentId: id,
      kind: "RestApi",
      state: "DEPLOYED",
      deployedAt: 1000,
      content: content(id, id, i === 1 ? "relative-path" : `/api${i}`),
    }));
    config.apply(rows);
    await config.settled();
    expect(config.table.size).toBe(2);
    expect(config.table.match("any", "/api0/x")?.apiId).toBe(ids[0]);
    expect(config.table.match("any", "/api2")?.apiId).toBe(ids[2]);
    expect(reports.find((r) => r.apiId === ids[1])).toMatchObject({ status: "failed" });
    expect(reports.find((r) => r.apiId === ids[1])?.reason).toContain("contextPath");
    expect(reports.filter((r) => r.status === "deployed")).toHaveLength(2);
  });

  it("of two APIs with one context path, the one created later is reported failed, naming the other, until the other goes; then it serves", async () => {
    const reports: StatusReport[] = [];
    const config = new ConfigStore({ report: (r) => reports.push(r) });
    // UUIDv7 order is creation order: first, then second; a third has the path on one host.
    const [first, second, third] = [1, 2, 3].map((n) => `0190a000-0000-7000-8000-00000000020${n}`);
    const deployed = (id: string, path: string, hosts?: string[], deploymentId = id): StoredRow => {
      const c = JSON.parse(content(id, deploymentId, path)) as DeploymentContent;
      if (hosts) (c.definition as Record<string, unknown>).hosts = hosts;
      return {
        apiId: id,
        deploymentId,
        kind: "RestApi",
        state: "DEPLOYED",
        deployedAt: 1,
        content: JSON.stringify(c),
      };
    };
    const last = (id: string) => reports.filter((r) => r.apiId === id).at(-1);
    config.apply([
      deployed(second!, "/orders"),
      deployed(first!, "/orders"),
      deployed(third!, "/orders", ["shop.example"]),
    ]);
    await config.settled();
    expect(config.table.match("any.example", "/orders/1")?.apiId).toBe(first);
    expect(config.table.match("shop.example", "/orders/1")?.apiId).toBe(third);
    expect(last(first!)).toMatchObject({ status: "deployed" });
    expect(last(third!)).toMatchObject({ status: "deployed" });
    expect(last(second!)).toMatchObject({ status: "failed" });
    expect(last(second!)?.reason).toContain(
      `its path /orders is served by API api-orders (${first})`,
    );
    expect(config.failures.get(second!)?.reason).toBe(last(second!)?.reason);
    // Applied again (a reconcile), it is told failed again after the swap, not left deployed.
    config.apply([deployed(second!, "/orders")]);
    await config.settled();
    expect(last(second!)).toMatchObject({ status: "failed" });
    // The first redeployed (a new, later deployment id) keeps its path: the API created first.
    config.apply([deployed(first!, "/orders", undefined, "0190a000-0000-7000-8000-000000000299")]);
    await config.settled();
    expect(config.table.match("any.example", "/orders/1")?.apiId).toBe(first);
    expect(last(second!)).toMatchObject({ status: "failed" });
    // The first undeployed: the second serves and is reported deployed.
    config.apply([{ ...deployed(first!, "/orders"), state: "UNDEPLOYED", content: null }]);
    await config.settled();
    expect(config.table.match("any.example", "/orders/1")?.apiId).toBe(second);
    expect(last(second!)).toMatchObject({ status: "deployed" });
    expect(config.failures.has(second!)).toBe(false);
  });

  it("many changes in one turn rebuild the table once, swapped whole", async () => {
    const config = new ConfigStore({ report: () => {} });
    const before = config.swaps;
    for (let i = 0; i < 50; i++) {
      const id = `0190a000-0000-7000-8000-${String(i).padStart(12, "0")}`;
      config.apply([
        {
          apiId: id,
          deploymentId: id,
          kind: "RestApi",
          state: "DEPLOYED",
          deployedAt: 1,
          content: content(id, id, `/r${i}`),
        },
      ]);
    }
    expect(config.table.size).toBe(0);
    await config.settled();
    expect(config.swaps - before).toBe(1);
    expect(config.table.size).toBe(50);
  });
});

describe("archives and events from the hub", () => {
  let hostile: Server | undefined;
  afterAll(() => hostile?.close());

  /** A raw ustar entry, so a test can write names writeTar refuses to produce. */
  function rawEntry(name: string, body: string): Buffer {
    const h = Buffer.alloc(512);
    h.write(name, 0, 100, "utf8");
    h.write("0000644\0", 100);
    h.write(`${Buffer.byteLength(body).toString(8).padStart(11, "0")}\0`, 124);
    h.write("0", 156);
    h.write("ustar\0", 257);
    const data = Buffer.alloc(Math.ceil(Buffer.byteLength(body) / 512) * 512);
    data.write(body);
    return Buffer.concat([h, data]);
  }

  it("readTar rejects ../, absolute and top-level entries, and reads a good archive back", () => {
    for (const name of [`${DEP_A}/../../etc/passwd`, "/etc/passwd", "api.json", `${DEP_A}/./x`]) {
      expect(() => readTar(Buffer.concat([rawEntry(name, "{}"), Buffer.alloc(1024)]))).toThrow(
        UnsafeArchiveError,
      );
    }
    const good = writeTar([{ path: `${DEP_A}/api.json`, body: Buffer.from("{}") }]);
    expect(readTar(good)).toEqual([{ path: `${DEP_A}/api.json`, body: Buffer.from("{}") }]);
  });

  it("a sync whose archive has a ../ entry writes nothing and counts the rejection", async () => {
    hostile = createServer((req, res) => {
      if (req.url?.startsWith(GATEWAY_SYNC.deployments)) {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(
          JSON.stringify({
            gatewayId: "g",
            configHash: "h",
            deployments: [
              {
                apiId: API,
                deploymentId: DEP_A,
                kind: "RestApi",
                state: "DEPLOYED",
                deployedAt: 1000,
              },
            ],
          }),
        );
        return;
      }
      res.writeHead(200, { "content-type": "application/x-tar" });
      res.end(
        Buffer.concat([
          rawEntry(`${DEP_A}/api.json`, content(API, DEP_A, "/x")),
          rawEntry(`${DEP_A}/../${DEP_B}/api.json`, content(API, DEP_B, "/y")),
          Buffer.alloc(1024),
        ]),
      );
    });
    await new Promise<void>((r) => hostile!.listen(0, "127.0.0.1", () => r()));
    const store = newStore();
    const config = new ConfigStore({ report: () => {} });
    const logger = { info() {}, warn() {}, error() {} };
    const sync = syncTo(`http://127.0.0.1:${(hostile.address() as AddressInfo).port}`, {
      store,
      config,
      logger,
    });
    await expect(sync.reconcileOnce()).rejects.toThrow(UnsafeArchiveError);
    expect(store.all()).toEqual([]);
    expect(sync.stats.archivesRejected).toBe(1);
  });

  /** A stand-in hub serving these APIs (one deployment each); no WebSocket; `fail` answers 500. */
  async function standInHub(
    apis: string[],
    fail: Set<string> = new Set(),
    /** A content request naming this deployment is answered only once `until` resolves. */
    hold?: { index: number; until: Promise<void> },
  ) {
    const rows = apis.map((apiId, i) => ({
      apiId,
      deploymentId: `${apiId.slice(0, -4)}d${String(i).padStart(3, "0")}`,
      kind: "RestApi",
      state: "DEPLOYED" as const,
      deployedAt: 1000 + i,
    }));
    const configHash = createHash("sha256")
      .update(rows.map(expectedRowLine).sort().join("\n"))
      .digest("hex");
    const server = createServer((req, res) => {
      const url = req.url ?? "";
      if (url.startsWith(GATEWAY_SYNC.deployments)) {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ gatewayId: "g", configHash, deployments: rows }));
        return;
      }
      if (url.startsWith(GATEWAY_SYNC.content)) {
        let body = "";
        req.on("data", (c) => {
          body += c;
        });
        req.on("end", async () => {
          const ids = (JSON.parse(body) as { deploymentIds: string[] }).deploymentIds;
          if (hold && ids.includes(rows[hold.index]!.deploymentId)) await hold.until;
          if (ids.some((id) => fail.has(id))) {
            res.writeHead(500);
            res.end("stand-in failure");
            return;
          }
          const entries = rows
            .filter((r) => ids.includes(r.deploymentId))
            .map((r) => ({
              path: `${r.deploymentId}/api.json`,
              body: Buffer.from(content(r.apiId, r.deploymentId, `/${r.deploymentId}`)),
            }));
          res.writeHead(200, { "content-type": "application/x-tar" });
          res.end(writeTar(entries));
        });
        return;
      }
      // The event stream (an upgrade request lands here: no upgrade handler) and the rest.
      res.writeHead(404);
      res.end();
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    return { server, rows, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
  }
  const apiIds = (n: number) =>
    Array.from(
      { length: n },
      (_, i) => `0190a000-0000-7000-8000-00000000${String(i).padStart(4, "0")}`,
    );

  it("a sync failing part-way serves exactly what it wrote: store and routes agree", async () => {
    const ids = apiIds(12);
    const hub = await standInHub(ids);
    hub.server.close();
    const failing = await standInHub(ids, new Set([hub.rows[7]!.deploymentId]));
    try {
      const store = newStore();
      const config = new ConfigStore({ report: () => {} });
      const sync = syncTo(failing.url, {
        store,
        config,
        batchSize: 1,
      });
      await expect(sync.reconcileOnce()).rejects.toThrow(/answered 500/);
      await config.settled();
      const written = store.all().filter((r) => r.content !== null);
      expect(written.length).toBeGreaterThan(0);
      expect(written.map((r) => r.deploymentId)).not.toContain(hub.rows[7]!.deploymentId);
      expect(config.table.size).toBe(written.length);
      for (const r of written)
        expect(config.table.match("any", `/${r.deploymentId}/x`)?.apiId).toBe(r.apiId);
    } finally {
      failing.server.close();
    }
  });

  it("an undeploy event during a sync is not undone by the sync's rows written before it", async () => {
    let release!: () => void;
    const until = new Promise<void>((r) => {
      release = r;
    });
    const ids = apiIds(2);
    // The second content answer waits: the first row is written, the sync is still running.
    const hub = await standInHub(ids, new Set(), { index: 1, until });
    const store = newStore();
    const config = new ConfigStore({ report: () => {} });
    const sync = syncTo(hub.url, {
      store,
      config,
      batchSize: 1,
    });
    try {
      const pass = sync.reconcileOnce();
      const first = hub.rows[0]!;
      while (!store.get(first.apiId)) await new Promise((r) => setTimeout(r, 5));
      await sync.applyEvent({
        type: "event",
        id: "e-undeploy",
        event: "api.undeployed",
        row: { ...first, state: "UNDEPLOYED", deployedAt: first.deployedAt + 1 },
        ctx: {
          correlation: "c",
          traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        },
      });
      release();
      await pass;
      await config.settled();
      expect(store.get(first.apiId)).toMatchObject({ state: "UNDEPLOYED" });
      expect(config.table.match("any", `/${first.deploymentId}/x`)).toBeUndefined();
      expect(config.table.match("any", `/${hub.rows[1]!.deploymentId}/x`)?.apiId).toBe(
        hub.rows[1]!.apiId,
      );
    } finally {
      release();
      hub.server.close();
    }
  });

  it("a hub whose event stream does not open is still synced, once, and the stream retried", async () => {
    const hub = await standInHub(apiIds(3));
    const store = newStore();
    const config = new ConfigStore({ report: () => {} });
    const warnings: string[] = [];
    const sync = syncTo(hub.url, {
      store,
      config,
      logger: { info() {}, warn: (_o, msg) => warnings.push(msg), error() {} },
      backoffMinMs: 20,
      backoffMaxMs: 40,
    });
    try {
      sync.start();
      const deadline = Date.now() + 10_000;
      while (sync.stats.reconciles === 0 && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 20));
      await config.settled();
      expect(sync.stats.connected).toBe(false);
      expect(config.table.size).toBe(3);
      // Reconnect attempts go on; none of them starts another pass once one has succeeded.
      await new Promise((r) => setTimeout(r, 300));
      expect(sync.stats.reconciles).toBe(1);
      expect(warnings).not.toContain("reconcile failed; retrying");
    } finally {
      await sync.stop();
      hub.server.close();
    }
  });

  it("stop() returns at once while the hub holds a request unanswered; waiting reports still go", async () => {
    const received: unknown[] = [];
    let listAsked!: () => void;
    const asked = new Promise<void>((r) => {
      listAsked = r;
    });
    // Answers status reports; never answers the deployment list (a hub that hangs mid-sync).
    const hanging = createServer((req, res) => {
      if (req.url?.startsWith(GATEWAY_SYNC.status)) {
        let body = "";
        req.on("data", (c) => {
          body += c;
        });
        req.on("end", () => {
          received.push(JSON.parse(body));
          res.writeHead(200, { "content-type": "application/json" });
          res.end("{}");
        });
        return;
      }
      if (req.url?.startsWith(GATEWAY_SYNC.deployments)) return listAsked();
      res.writeHead(404);
      res.end();
    });
    await new Promise<void>((r) => hanging.listen(0, "127.0.0.1", () => r()));
    const sync = syncTo(`http://127.0.0.1:${(hanging.address() as AddressInfo).port}`, {
      // The request cut by stop() fails, and the pass would pause before retrying: not for long.
      backoffMinMs: 60_000,
      backoffMaxMs: 60_000,
    });
    try {
      sync.start();
      await asked;
      sync.reporter({ apiId: API, deploymentId: DEP_A, deployedAt: 1, status: "deployed" });
      const started = Date.now();
      await sync.stop();
      // The request timeout is 30 s; a stop that waited for it would take that long.
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(received).toEqual([
        { reports: [{ apiId: API, deploymentId: DEP_A, deployedAt: 1, status: "deployed" }] },
      ]);
    } finally {
      hanging.closeAllConnections();
      hanging.close();
    }
  });

  it("stop() ends a backoff pause at once", async () => {
    const sync = syncTo("http://127.0.0.1:9", {
      backoffMinMs: 60_000,
      backoffMaxMs: 60_000,
    });
    sync.start();
    const deadline = Date.now() + 5_000;
    while (sync.stats.reconcileFailures === 0 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 10));
    expect(sync.stats.reconcileFailures).toBe(1);
    const started = Date.now();
    await sync.stop();
    // The pause after the failure is 30 to 60 s.
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it("an event older than the stored row is ignored; a newer one applies", async () => {
    const store = newStore();
    const config = new ConfigStore({ report: () => {} });
    const sync = syncTo("http://127.0.0.1:9", {
      store,
      config,
    });
    store.upsert(row(DEP_B, 2000));
    const ctx = {
      correlation: "c",
      traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    };
    // Stale: an undeploy of the older deployment arriving late.
    await sync.applyEvent({
      type: "event",
      id: "e1",
      event: "api.undeployed",
      row: {
        apiId: API,
        deploymentId: DEP_A,
        kind: "RestApi",
        state: "UNDEPLOYED",
        deployedAt: 1500,
      },
      ctx,
    });
    expect(store.get(API)).toMatchObject({ deploymentId: DEP_B, state: "DEPLOYED" });
    expect(sync.stats.eventsIgnored).toBe(1);
    // Newer: the undeploy of the current deployment (state-only, no fetch needed).
    await sync.applyEvent({
      type: "event",
      id: "e2",
      event: "api.undeployed",
      row: {
        apiId: API,
        deploymentId: DEP_B,
        kind: "RestApi",
        state: "UNDEPLOYED",
        deployedAt: 2500,
      },
      ctx,
    });
    expect(store.get(API)).toMatchObject({
      deploymentId: DEP_B,
      state: "UNDEPLOYED",
      deployedAt: 2500,
    });
    expect(sync.stats.eventsApplied).toBe(1);
  });
});
