// Gateway figures in one run: requests/s and p99 through `flotilla gateway`, through nginx (one
// worker), through @fastify/http-proxy and through a plain Node byte pipe (the floor of any Node
// proxy), all in front of the same 1 KB upstream at 64 connections, interleaved slice by slice; then, against a hub on PostgreSQL with 10,000 API
// deployments: a full sync's time and peak RSS, restart-to-serving with 10,000 stored, and one
// change taking effect with 10,000 routes loaded. Prints one JSON line on stdout.
import { spawn, spawnSync } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import autocannon from "autocannon";
import pg from "pg";
import {
  CLI,
  connectJson,
  cpuSeconds,
  cpuTimes,
  createDatabase,
  envCount,
  freePorts,
  onCleanup,
  procStatusMb,
  progress,
  ROOT,
  requireBuild,
  round,
  runBenchmark,
  settings,
  sleep,
  startNode,
  summarize,
  tempDir,
  waitReady,
} from "./lib/common.mjs";
import { summarizeWrk, wrkPath, wrkSlice } from "./lib/wrk.mjs";

const TARGETS = {
  minRatioToNginx: 0.5,
  minRatioToFastifyProxy: 2,
  maxP99Ms: 5,
  fullSync10kMaxS: 5,
  fullSync10kMaxPeakRssMb: 150,
  restartToServingMaxMs: 1000,
  oneChangeMaxMs: 100,
};
const DEPLOYMENTS = envCount("BENCH_GATEWAY_DEPLOYMENTS", 10_000);
const ONE_CHANGE_SAMPLES = 5;
const ADMIN = { email: "bench-gw@example.com", password: "bench-gw-password-0123" };

function nginxPath() {
  const r = spawnSync("sh", ["-c", "command -v nginx || ls /usr/sbin/nginx"], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim().split("\n")[0] : null;
}

/** nginx as the measured proxy: one worker in front of the shared upstream, as a plain reverse proxy. */
function nginxProxyServer(port, upstreamPort) {
  return `upstream up { server 127.0.0.1:${upstreamPort}; keepalive 128; }
  server {
    listen 127.0.0.1:${port};
    location = /ready { return 200 "ok"; }
    location /bench/ {
      proxy_pass http://up/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }`;
}

/**
 * nginx as the shared upstream: the same 1 KB answer as bench/lib/upstream-1k.mjs at about a third
 * of its CPU per request, so the two cores go to the proxies being compared and not to the
 * upstream (with the Node upstream, it took 54-62% of a core at 20-27k req/s). Connections are
 * never closed by count (nginx's default closes each after 1,000 requests).
 */
function nginxUpstreamServer(port) {
  return `server {
    listen 127.0.0.1:${port};
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    default_type text/plain;
    location = /ready { return 200 "ok"; }
    location / { return 200 "${"x".repeat(1024)}"; }
  }`;
}

function startNginx(bin, dir, name, server) {
  const conf = join(dir, "nginx.conf");
  writeFileSync(
    conf,
    `daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  ${server}
}
`,
  );
  const child = spawn(bin, ["-c", conf, "-p", dir], { stdio: ["ignore", "ignore", "pipe"] });
  let status = null;
  const exited = new Promise((resolve) =>
    child.once("exit", (code, signal) => {
      status = { code, signal };
      resolve(status);
    }),
  );
  const proc = {
    name,
    pid: child.pid,
    exited,
    exitStatus: () => status,
    tail: () => "(see error.log)",
    async stop() {
      if (status) return status;
      child.kill("SIGQUIT");
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
      return status;
    },
  };
  onCleanup(() => proc.stop());
  return proc;
}

/** This process's CPU seconds (autocannon's, when it loads from here). */
function ownCpuSeconds() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

function getSlice(url, connections, durationS) {
  return autocannon({
    url,
    method: "GET",
    connections,
    duration: durationS,
    pipelining: 1,
    skipAggregateResult: true,
  });
}

async function waitFor(fn, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => null);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what} not after ${timeoutMs} ms`);
    await sleep(5);
  }
}

async function gatewayReady(adminUrl) {
  const res = await fetch(`${adminUrl}/ready`);
  return res.json();
}

async function main() {
  requireBuild();
  const cfg = settings();
  const logDir = tempDir("flotilla-bench-gateway-", { keep: cfg.keepLogs });
  const [upstreamPort, hubPort, hubGrpc, gwPort, gwAdmin, nginxPort, fastifyPort, pipePort] =
    await freePorts(8);
  const nginxBin = nginxPath();
  const upstreamKind = process.env.BENCH_GATEWAY_UPSTREAM || (nginxBin ? "nginx" : "node");
  if (upstreamKind !== "nginx" && upstreamKind !== "node")
    throw new Error(`BENCH_GATEWAY_UPSTREAM is nginx or node, not ${upstreamKind}`);
  if (upstreamKind === "nginx" && !nginxBin)
    throw new Error("BENCH_GATEWAY_UPSTREAM=nginx needs nginx (apt-get install nginx-light)");
  const upstream =
    upstreamKind === "nginx"
      ? startNginx(
          nginxBin,
          tempDir("flotilla-bench-upstream-"),
          "upstream",
          nginxUpstreamServer(upstreamPort),
        )
      : startNode("upstream", [join(ROOT, "bench/lib/upstream-1k.mjs"), String(upstreamPort)], {
          logDir,
        });
  await waitReady(upstream, `http://127.0.0.1:${upstreamPort}`);
  const upstreamUrl = `http://127.0.0.1:${upstreamPort}`;

  // --- the hub and the data set -------------------------------------------------------------
  const db = await createDatabase(cfg.pgAdminUrl, "flotilla_bench_gw");
  const hubEnv = {
    FLOTILLA_DATABASE_URL: db.url,
    FLOTILLA_SESSION_SECRET: randomBytes(32).toString("hex"),
    FLOTILLA_MASTER_KEY: randomBytes(32).toString("base64"),
    FLOTILLA_ADMIN_EMAIL: ADMIN.email,
    FLOTILLA_ADMIN_PASSWORD: ADMIN.password,
    FLOTILLA_LOG_LEVEL: "warn",
  };
  const hubUrl = `http://127.0.0.1:${hubPort}`;
  const hub = startNode(
    "hub",
    [CLI, "hub", "--host", "127.0.0.1", "--port", String(hubPort), "--grpc-port", String(hubGrpc)],
    { env: hubEnv, logDir },
  );
  await waitReady(hub, hubUrl);
  const login = await connectJson(`${hubUrl}/flotilla.v1.IdentityService/Login`, ADMIN);
  const auth = { authorization: `Bearer ${login.body.sessionToken}` };
  const created = await connectJson(
    `${hubUrl}/flotilla.v1.GatewayService/CreateGateway`,
    { name: "bench-edge" },
    auth,
  );
  const gatewayId = created.body.gateway.id;
  const token = created.body.token;
  const benchApi = await connectJson(
    `${hubUrl}/flotilla.v1.ApiService/CreateApi`,
    {
      name: "bench",
      kind: "API_KIND_REST_API",
      definitionJson: JSON.stringify({ contextPath: "/bench", upstream: { url: upstreamUrl } }),
    },
    auth,
  );
  await connectJson(
    `${hubUrl}/flotilla.v1.ApiService/DeployApi`,
    { api: benchApi.body.api.id, gateway: gatewayId },
    auth,
  );

  // --- throughput: gateway vs nginx vs @fastify/http-proxy ------------------------------------
  const gwDir = tempDir("flotilla-bench-gw-data-");
  let gateway = startNode(
    "gateway",
    [
      CLI,
      "gateway",
      "--hub",
      hubUrl,
      "--token",
      token,
      "--port",
      String(gwPort),
      "--host",
      "127.0.0.1",
      "--admin-port",
      String(gwAdmin),
      "--data-dir",
      gwDir,
    ],
    { logDir },
  );
  const gwAdminUrl = `http://127.0.0.1:${gwAdmin}`;
  await waitReady(gateway, gwAdminUrl);
  await waitFor(
    async () => (await fetch(`http://127.0.0.1:${gwPort}/bench/x`)).status === 200,
    30_000,
    "gateway route",
  );
  const fastifyProxy = startNode(
    "fastify-proxy",
    [join(ROOT, "bench/lib/fastify-proxy.mjs"), String(fastifyPort), upstreamUrl],
    { logDir },
  );
  await waitReady(fastifyProxy, `http://127.0.0.1:${fastifyPort}`);
  // What no Node proxy can beat on this machine: bytes copied between node:net sockets, no HTTP
  // parsed at all. When its p99 misses a target, the machine of the moment misses it.
  const pipe = startNode(
    "node-pipe",
    [join(ROOT, "bench/lib/pipe-proxy.mjs"), String(pipePort), String(upstreamPort)],
    { logDir },
  );
  await waitReady(pipe, `http://127.0.0.1:${pipePort}`);
  let nginx = null;
  if (nginxBin) {
    nginx = startNginx(
      nginxBin,
      tempDir("flotilla-bench-nginx-"),
      "nginx",
      nginxProxyServer(nginxPort, upstreamPort),
    );
    await waitReady(nginx, `http://127.0.0.1:${nginxPort}`);
  } else progress("nginx is not installed: skipped (apt-get install nginx; see bench/README.md)");

  const targets = [
    { key: "gateway", url: `http://127.0.0.1:${gwPort}/bench/item`, pid: gateway.pid },
    ...(nginx
      ? [{ key: "nginx", url: `http://127.0.0.1:${nginxPort}/bench/item`, pid: nginx.pid }]
      : []),
    {
      key: "fastifyHttpProxy",
      url: `http://127.0.0.1:${fastifyPort}/bench/item`,
      pid: fastifyProxy.pid,
    },
    { key: "nodePipeFloor", url: `http://127.0.0.1:${pipePort}/bench/item`, pid: pipe.pid },
  ];
  for (const t of targets) {
    const check = await fetch(t.url);
    const body = await check.text();
    if (check.status !== 200 || body.length !== 1024)
      throw new Error(
        `${t.key} does not proxy the 1 KB body (${check.status}, ${body.length} bytes)`,
      );
  }
  const sliceS = Math.max(2, Math.round(cfg.durationS / cfg.rounds));
  progress(
    `throughput: ${targets.map((t) => t.key).join(", ")}; ${cfg.rounds} rounds of ${sliceS} s each, ${cfg.connections} connections, interleaved`,
  );
  // wrk when installed (lib/wrk.mjs says why); autocannon, in this process, otherwise.
  const wrk = wrkPath();
  if (!wrk)
    progress("wrk is not installed: autocannon loads (apt-get install wrk; bench/README.md)");
  const slice = (url, durationS) =>
    wrk
      ? wrkSlice({ url, connections: cfg.connections, durationS })
      : getSlice(url, cfg.connections, durationS);
  for (const t of targets) await slice(t.url, cfg.warmupS || 1);
  const slices = Object.fromEntries(targets.map((t) => [t.key, []]));
  // Where the two cores went during each target's slices: the proxy (nginx: master and worker),
  // the shared upstream, and the load generator. On 2 cores all three compete, so a proxy's
  // requests/s also depends on what the other two cost per request.
  const cpu = Object.fromEntries(
    targets.map((t) => [
      t.key,
      { proxyUserS: 0, proxyKernelS: 0, upstreamS: 0, loadGeneratorS: 0, wallS: 0 },
    ]),
  );
  const cpuNow = (t) => {
    const proxy = cpuTimes(t.pid, { withChildren: t.key === "nginx" });
    return {
      proxyUserS: proxy?.userS ?? 0,
      proxyKernelS: proxy?.systemS ?? 0,
      upstreamS: cpuSeconds(upstream.pid, { withChildren: upstreamKind === "nginx" }) ?? 0,
      // wrk's own CPU is added per slice (wrkSlice reads it); autocannon's is this process's.
      loadGeneratorS: wrk ? 0 : ownCpuSeconds(),
      wallS: performance.now() / 1000,
    };
  };
  for (let r = 0; r < cfg.rounds; r++) {
    const order = r % 2 === 0 ? targets : [...targets].reverse();
    for (const t of order) {
      const before = cpuNow(t);
      const result = await slice(t.url, sliceS);
      slices[t.key].push(result);
      const after = cpuNow(t);
      for (const k of Object.keys(before)) cpu[t.key][k] += after[k] - before[k];
      if (wrk) cpu[t.key].loadGeneratorS += result.cpuS;
    }
  }
  const throughput = Object.fromEntries(
    targets.map((t) => {
      const figures = wrk
        ? summarizeWrk(slices[t.key], { connections: cfg.connections })
        : summarize(slices[t.key], { url: t.url, connections: cfg.connections });
      const c = cpu[t.key];
      const pct = (s) => round((100 * s) / c.wallS, 0);
      const perRequestUs = (s) => round((1e6 * s) / figures.requests, 1);
      figures.cpu = {
        proxyPct: pct(c.proxyUserS + c.proxyKernelS),
        upstreamPct: pct(c.upstreamS),
        loadGeneratorPct: pct(c.loadGeneratorS),
        proxyUsPerRequest: perRequestUs(c.proxyUserS + c.proxyKernelS),
        // The kernel's share is the loopback TCP work every proxy here makes (two reads, two
        // writes per request at least); 1e6 / proxyKernelUsPerRequest is the rate this proxy
        // could not pass on this machine even if its own code cost nothing.
        proxyUserUsPerRequest: perRequestUs(c.proxyUserS),
        proxyKernelUsPerRequest: perRequestUs(c.proxyKernelS),
        kernelOnlyCeilingRps:
          c.proxyKernelS > 0 ? round(figures.requests / c.proxyKernelS, 0) : null,
      };
      return [t.key, figures];
    }),
  );
  const gatewayRssUnderLoadMb = procStatusMb(gateway.pid, "VmHWM");
  await fastifyProxy.stop();
  await pipe.stop();
  if (nginx) await nginx.stop();
  await gateway.stop();

  // --- 10,000 API deployments, written straight into the hub's tables ------------------------
  progress(`writing ${DEPLOYMENTS} API deployments`);
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  const { rows: orgRows } = await client.query(
    "SELECT organization_id FROM gateways WHERE id = $1",
    [gatewayId],
  );
  const org = orgRows[0].organization_id;
  const baseMs = Date.now() - 60_000;
  for (let i = 0; i < DEPLOYMENTS; i += 1000) {
    const apiIds = [];
    const values = [];
    const params = [];
    const dvalues = [];
    const dparams = [];
    for (let j = i; j < Math.min(DEPLOYMENTS, i + 1000); j++) {
      const id = randomUUID();
      apiIds.push(id);
      const def = { contextPath: `/api-${j}`, upstream: { url: upstreamUrl } };
      params.push(id, org, `api-${j}`, JSON.stringify(def));
      values.push(
        `($${params.length - 3}, $${params.length - 2}, $${params.length - 1}, 'RestApi', $${params.length})`,
      );
      dparams.push(
        randomUUID(),
        org,
        id,
        gatewayId,
        new Date(baseMs + j),
        JSON.stringify({
          name: `api-${j}`,
          kind: "RestApi",
          definition: def,
          provider_api_id: null,
        }),
      );
      const n = dparams.length;
      dvalues.push(
        `($${n - 5}, $${n - 4}, $${n - 3}, $${n - 2}, 'DEPLOYED', $${n - 1}, $${n}, 'bench')`,
      );
    }
    await client.query(
      `INSERT INTO apis (id, organization_id, name, kind, definition) VALUES ${values.join(",")}`,
      params,
    );
    await client.query(
      `INSERT INTO api_deployments (deployment_id, organization_id, api_id, gateway_id, state, deployed_at, content, created_by) VALUES ${dvalues.join(",")}`,
      dparams,
    );
  }
  await client.end();
  const total = DEPLOYMENTS + 1;

  // --- full sync of 10,000 from an empty store ------------------------------------------------
  const syncDir = tempDir("flotilla-bench-gw-sync-");
  const syncStart = performance.now();
  gateway = startNode(
    "gateway-sync",
    [
      CLI,
      "gateway",
      "--hub",
      hubUrl,
      "--token",
      token,
      "--port",
      String(gwPort),
      "--host",
      "127.0.0.1",
      "--admin-port",
      String(gwAdmin),
      "--data-dir",
      syncDir,
      "--access-log",
      "off",
    ],
    { logDir },
  );
  await waitFor(
    async () => {
      const r = await gatewayReady(gwAdminUrl);
      return r.routes === total && r.converged;
    },
    120_000,
    "full sync",
  );
  const fullSyncMs = performance.now() - syncStart;
  const fullSyncPeakRssMb = procStatusMb(gateway.pid, "VmHWM");

  // --- one change with 10,000 routes loaded --------------------------------------------------
  // Five changes, 500 ms apart (one sample is at the mercy of whatever else the machine does);
  // the figure is their median, each from the DeployApi call to the route answering.
  const changes = [];
  for (let i = 0; i < ONE_CHANGE_SAMPLES; i++) {
    const changeApi = await connectJson(
      `${hubUrl}/flotilla.v1.ApiService/CreateApi`,
      {
        name: `one-change-${i}`,
        kind: "API_KIND_REST_API",
        definitionJson: JSON.stringify({
          contextPath: `/one-change-${i}`,
          upstream: { url: upstreamUrl },
        }),
      },
      auth,
    );
    const changeStart = performance.now();
    await connectJson(
      `${hubUrl}/flotilla.v1.ApiService/DeployApi`,
      { api: changeApi.body.api.id, gateway: gatewayId },
      auth,
    );
    const deployRpcMs = performance.now() - changeStart;
    await waitFor(
      async () => (await fetch(`http://127.0.0.1:${gwPort}/one-change-${i}/x`)).status === 200,
      30_000,
      "one change",
    );
    changes.push({
      ms: round(performance.now() - changeStart, 1),
      deployRpcMs: round(deployRpcMs, 1),
      eventToSwapMs: (await gatewayReady(gwAdminUrl)).lastEventToSwapMs,
    });
    await sleep(500);
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const oneChangeMs = median(changes.map((c) => c.ms));
  const idleRssMb = procStatusMb(gateway.pid, "VmRSS");

  // --- restart to serving with 10,000 stored (hub stopped: the store alone serves) -----------
  await gateway.stop();
  await hub.stop();
  const restartStart = performance.now();
  gateway = startNode(
    "gateway-restart",
    [
      CLI,
      "gateway",
      "--hub",
      hubUrl,
      "--token",
      token,
      "--port",
      String(gwPort),
      "--host",
      "127.0.0.1",
      "--admin-port",
      String(gwAdmin),
      "--data-dir",
      syncDir,
      "--access-log",
      "off",
    ],
    { logDir },
  );
  await waitFor(
    async () => (await fetch(`http://127.0.0.1:${gwPort}/api-${DEPLOYMENTS - 1}/x`)).status === 200,
    30_000,
    "serving after restart",
  );
  const restartToServingMs = performance.now() - restartStart;
  const restarted = await gatewayReady(gwAdminUrl);
  await gateway.stop();

  const ratio = (a, b) => (a && b ? round(a / b, 2) : null);
  const figures = {
    benchmark: "gateway",
    at: new Date().toISOString(),
    connections: cfg.connections,
    bodyBytes: 1024,
    throughput,
    ratios: {
      gatewayToNginx: nginx ? ratio(throughput.gateway.rps, throughput.nginx.rps) : null,
      gatewayToFastifyHttpProxy: ratio(throughput.gateway.rps, throughput.fastifyHttpProxy.rps),
      gatewayToNodePipeFloor: ratio(throughput.gateway.rps, throughput.nodePipeFloor.rps),
    },
    loadGenerator: wrk ? { wrk, threads: 1 } : { autocannon: "in the benchmark's process" },
    upstream: upstreamKind === "nginx" ? "nginx, one worker, return 200" : "node:http",
    nginx: nginx
      ? { worker_processes: 1, bin: nginxBin }
      : { skipped: "nginx is not installed (apt-get install nginx)" },
    gatewayPeakRssUnderLoadMb: gatewayRssUnderLoadMb,
    sync: {
      deployments: total,
      fullSyncMs: round(fullSyncMs, 0),
      fullSyncPeakRssMb,
      idleRssAfterSyncMb: idleRssMb,
      oneChangeMs,
      oneChangeSamples: changes,
      restartToServingMs: round(restartToServingMs, 0),
      restartInProcessStartupMs: restarted.startupMs,
      loadAverage1m: Number(readFileSync("/proc/loadavg", "utf8").split(" ")[0]),
    },
    targets: TARGETS,
    machine: { note: "2 shared cores; compare ratios measured in the same run" },
  };
  process.stdout.write(`${JSON.stringify(figures)}\n`);
}

runBenchmark(main);
