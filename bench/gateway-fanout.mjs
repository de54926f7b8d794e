// Cross-replica gateway fan-out: from DeployApi on replica A until a gateway whose event stream
// replica B holds serves the API, with the NATS per-replica durable beside the postgres bus
// (LISTEN/NOTIFY) in the same run. The gateway's periodic hash check is an hour, so only the
// event explains each change; `reconcilesDuringChanges` says so for each side.
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { connect } from "@nats-io/transport-node";
import {
  CLI,
  connectJson,
  createDatabase,
  distribution,
  freePorts,
  onCleanup,
  progress,
  ROOT,
  requireBuild,
  round,
  runBenchmark,
  settings,
  sleep,
  startNode,
  tempDir,
  waitReady,
} from "./lib/common.mjs";

const CHANGES = Number(process.env.BENCH_FANOUT_CHANGES || 40);
const ADMIN = { email: "bench-fanout@example.com", password: "bench-fanout-password-0123" };

async function until(fn, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => null);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what} not after ${timeoutMs} ms`);
    await sleep(1);
  }
}

async function syncFacts(adminUrl) {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  const facts = {};
  for (const m of text.matchAll(/^flotilla_gateway_sync\{fact="([a-z_]+)"\} (\S+)$/gm))
    facts[m[1]] = Number(m[2]);
  return facts;
}

/** The machine's nats-server on a port and store of this benchmark's own. */
async function startNats(logDir) {
  const [port] = await freePorts(1);
  const dir = tempDir("flotilla-bench-fanout-nats-");
  const child = spawn(
    "/usr/sbin/nats-server",
    ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", dir],
    { stdio: "ignore" },
  );
  onCleanup(
    () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.kill("SIGKILL");
      }),
  );
  const url = `nats://127.0.0.1:${port}`;
  await until(async () => {
    const nc = await connect({ servers: url, timeout: 1000 });
    await nc.close();
    return true;
  }, `nats-server at ${url} (logs in ${logDir})`);
  return url;
}

async function measure(mode, cfg, logDir, upstreamUrl) {
  const db = await createDatabase(cfg.pgAdminUrl, "flotilla_bench_fanout");
  const env = {
    FLOTILLA_DATABASE_URL: db.url,
    FLOTILLA_SESSION_SECRET: randomBytes(32).toString("hex"),
    FLOTILLA_MASTER_KEY: randomBytes(32).toString("base64"),
    FLOTILLA_ADMIN_EMAIL: ADMIN.email,
    FLOTILLA_ADMIN_PASSWORD: ADMIN.password,
    FLOTILLA_DB_POOL_MAX: "6",
    FLOTILLA_LOG_LEVEL: "warn",
  };
  if (mode === "nats") {
    env.FLOTILLA_NATS_URL = await startNats(logDir);
    env.FLOTILLA_NATS_STREAM = `B${randomBytes(5).toString("hex")}`;
    env.FLOTILLA_NATS_SUBJECT_ROOT = env.FLOTILLA_NATS_STREAM.toLowerCase();
  }
  const [aPort, aGrpc, bPort, bGrpc, gwPort, gwAdmin] = await freePorts(6);
  const hub = (name, port, grpc) =>
    startNode(
      `${mode}-${name}`,
      [CLI, "hub", "--host", "127.0.0.1", "--port", String(port), "--grpc-port", String(grpc)],
      { env, logDir },
    );
  const aUrl = `http://127.0.0.1:${aPort}`;
  const bUrl = `http://127.0.0.1:${bPort}`;
  const a = hub("hub-a", aPort, aGrpc);
  await waitReady(a, aUrl);
  const b = hub("hub-b", bPort, bGrpc);
  await waitReady(b, bUrl);
  const login = await connectJson(`${aUrl}/flotilla.v1.IdentityService/Login`, ADMIN);
  const auth = { authorization: `Bearer ${login.body.sessionToken}` };
  const created = await connectJson(
    `${aUrl}/flotilla.v1.GatewayService/CreateGateway`,
    { name: "bench-fanout" },
    auth,
  );
  const gatewayId = created.body.gateway.id;
  const apiIds = [];
  for (let i = 0; i < CHANGES; i++) {
    const r = await connectJson(
      `${aUrl}/flotilla.v1.ApiService/CreateApi`,
      {
        name: `fanout-${i}`,
        kind: "API_KIND_REST_API",
        definitionJson: JSON.stringify({
          contextPath: `/fanout-${i}`,
          upstream: { url: upstreamUrl },
        }),
      },
      auth,
    );
    apiIds.push(r.body.api.id);
  }
  const gwAdminUrl = `http://127.0.0.1:${gwAdmin}`;
  const gateway = startNode(
    `${mode}-gateway`,
    [
      CLI,
      "gateway",
      "--hub",
      `${bUrl},${aUrl}`,
      "--token",
      created.body.token,
      "--port",
      String(gwPort),
      "--host",
      "127.0.0.1",
      "--admin-port",
      String(gwAdmin),
      "--data-dir",
      tempDir("flotilla-bench-fanout-gw-"),
      "--hash-check-seconds",
      "3600",
      "--access-log",
      "off",
    ],
    { logDir },
  );
  await until(async () => {
    const f = await syncFacts(gwAdminUrl);
    return f.connected === 1 && f.converged === 1 && f.reconciles >= 2;
  }, "gateway connected to B and converged");
  const before = await syncFacts(gwAdminUrl);
  const totals = [];
  const rpcs = [];
  const inGateway = [];
  for (let i = 0; i < CHANGES; i++) {
    const started = performance.now();
    const r = await connectJson(
      `${aUrl}/flotilla.v1.ApiService/DeployApi`,
      { api: apiIds[i], gateway: gatewayId },
      auth,
    );
    if (r.status !== 200) throw new Error(`DeployApi answered ${r.status}`);
    rpcs.push(performance.now() - started);
    await until(async () => {
      const res = await fetch(`http://127.0.0.1:${gwPort}/fanout-${i}/`);
      await res.body?.cancel();
      return res.status === 200;
    }, `change ${i} served`);
    totals.push(performance.now() - started);
    const ready = await (await fetch(`${gwAdminUrl}/ready`)).json();
    inGateway.push(ready.lastEventToSwapMs);
  }
  const after = await syncFacts(gwAdminUrl);
  await gateway.stop();
  await Promise.all([a.stop(), b.stop()]);
  return {
    deployOnAToServedViaB: distribution(totals),
    deployRpc: distribution(rpcs),
    eventToSwapInGateway: distribution(inGateway),
    eventsApplied: after.events_applied - before.events_applied,
    reconcilesDuringChanges: after.reconciles - before.reconciles,
  };
}

async function main() {
  requireBuild();
  const cfg = settings();
  const logDir = tempDir("flotilla-bench-fanout-", { keep: cfg.keepLogs });
  const [upstreamPort] = await freePorts(1);
  const upstream = startNode(
    "upstream",
    [join(ROOT, "bench/lib/upstream-1k.mjs"), String(upstreamPort)],
    { logDir },
  );
  const upstreamUrl = `http://127.0.0.1:${upstreamPort}`;
  await waitReady(upstream, upstreamUrl);
  progress(`nats: ${CHANGES} deploys through replica A, gateway held by replica B`);
  const nats = await measure("nats", cfg, logDir, upstreamUrl);
  progress(`postgres: the same with the postgres bus (LISTEN/NOTIFY)`);
  const postgres = await measure("postgres", cfg, logDir, upstreamUrl);
  const figures = {
    bench: "gateway-fanout",
    unit: "ms",
    changes: CHANGES,
    nats,
    postgres,
    ratios: {
      natsToPostgresMedian: round(
        nats.deployOnAToServedViaB.median / postgres.deployOnAToServedViaB.median,
      ),
    },
    loadAverage1m: Number(readFileSync("/proc/loadavg", "utf8").split(" ")[0]),
    machine: { note: "2 shared cores; compare the two sides measured in the same run" },
  };
  process.stdout.write(`${JSON.stringify(figures)}\n`);
}

runBenchmark(main);
