// Deploy latency and agent memory: a hub on PostgreSQL and an agent, as separate processes, run
// the example HTTP service with the exec driver. Measures the time from the Deploy RPC to the
// service running and answering at the endpoint the API reports (20 deploys: the first creates
// the instance, each later one replaces it), beside the time to spawn the same script directly
// and get a 200 from it; then the agent's RSS idle and with 20 instances running. Prints one JSON
// line on stdout.
import { randomBytes } from "node:crypto";
import { request } from "node:http";
import { availableParallelism, loadavg } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import {
  CLI,
  connectJson,
  createDatabase,
  distribution,
  envCount,
  freePorts,
  killMatching,
  onCleanup,
  pidsMatching,
  procStatusMb,
  progress,
  ROOT,
  requireBuild,
  round,
  runCleanups,
  settings,
  sleep,
  startNode,
  tempDir,
  waitReady,
} from "./lib/common.mjs";

const ADMIN_EMAIL = "bench@example.com";
const ADMIN_PASSWORD = "bench-password-0123456789";
const HELLO = join(ROOT, "examples", "hello-server.mjs");
/** Poll interval of GetService (observed state) and of the GET to the endpoint. */
const POLL_MS = 10;
/** Pause between two measurements, so one's tail (an old process exiting) is not in the next. */
const PAUSE_MS = 250;
/** A deploy (or a bare spawn) not running and answering within this is a failure. */
const DEPLOY_TIMEOUT_MS = 60_000;

/** The targets, reported beside the figures (never asserted). */
const TARGETS = {
  deployMaxMedianMs: 1000,
  agentMaxIdleRssMb: 60,
  agentMaxRssMbWith20: 80,
};

const cfg = settings();
const DEPLOYS = envCount("BENCH_DEPLOYS", 20);
const INSTANCES = envCount("BENCH_INSTANCES", 20);
/** Every workload (deployed or spawned bare) carries this in its command line; killed at the end. */
const MARKER = `flotilla-bench-deploy-${process.pid}-${randomBytes(4).toString("hex")}`;

/**
 * GET on a fresh connection (no keep-alive pool: a redeployed instance reuses its port, and a
 * pooled socket to the previous process would fail). Resolves to the status, or 0 on any error.
 */
function httpStatus(url, timeoutMs = 2_000) {
  return new Promise((resolve) => {
    const req = request(url, { agent: false, timeout: timeoutMs }, (res) => {
      res.resume();
      res.once("end", () => resolve(res.statusCode ?? 0));
      res.once("error", () => resolve(0));
    });
    req.once("timeout", () => req.destroy(new Error("timeout")));
    req.once("error", () => resolve(0));
    req.end();
  });
}

/** Polls GET url every POLL_MS until 200; returns the attempts. `alive()` false stops it early. */
async function until200(url, t0, alive = () => true) {
  for (let attempts = 1; ; attempts++) {
    if ((await httpStatus(url)) === 200) return attempts;
    if (!alive()) throw new Error(`the process behind ${url} exited`);
    if (performance.now() - t0 > DEPLOY_TIMEOUT_MS)
      throw new Error(`${url} did not answer 200 within ${DEPLOY_TIMEOUT_MS} ms`);
    await sleep(POLL_MS);
  }
}

function client(base, token) {
  return async (path, body) => {
    const res = await connectJson(`${base}/flotilla.v1.${path}`, body, {
      authorization: `Bearer ${token}`,
    });
    if (res.status !== 200)
      throw new Error(`${path} answered ${res.status}: ${JSON.stringify(res.body)}`);
    return res.body;
  };
}

async function startHub(logDir) {
  const db = await createDatabase(cfg.pgAdminUrl);
  progress(`created database ${db.name}`);
  const [port, grpcPort] = await freePorts(2);
  const t0 = Date.now();
  const proc = startNode(
    "flotilla-hub",
    [
      CLI,
      "hub",
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "--grpc-port",
      String(grpcPort),
      "--log-level",
      cfg.logLevel,
    ],
    {
      logDir,
      env: {
        FLOTILLA_DATABASE_URL: db.url,
        FLOTILLA_SESSION_SECRET: randomBytes(48).toString("base64url"),
        FLOTILLA_MASTER_KEY: randomBytes(32).toString("base64"),
        FLOTILLA_ADMIN_EMAIL: ADMIN_EMAIL,
        FLOTILLA_ADMIN_PASSWORD: ADMIN_PASSWORD,
      },
    },
  );
  const base = `http://127.0.0.1:${port}`;
  await waitReady(proc, base, 120_000);
  return { proc, base, readyMs: Date.now() - t0 };
}

/** Starts the agent with a fresh join token and waits until the hub lists its server online. */
async function startAgent(hub, rpc, logDir, dataDir) {
  const { token } = await rpc("ServerService/CreateJoinToken", { name: "bench" });
  const t0 = Date.now();
  const proc = startNode(
    "flotilla-agent",
    [
      CLI,
      "agent",
      "--hub",
      hub.base,
      "--join-token",
      token,
      "--data-dir",
      dataDir,
      // An ephemeral admin port: the default (8082) may be taken by another agent here.
      "--admin-port",
      "0",
      "--log-level",
      cfg.logLevel,
    ],
    { logDir },
  );
  const deadline = t0 + 60_000;
  for (;;) {
    const status = proc.exitStatus();
    if (status)
      throw new Error(
        `the agent exited (${JSON.stringify(status)}) before joining:\n${proc.tail()}`,
      );
    const { servers = [] } = await rpc("ServerService/ListServers", {});
    const server = servers.find((s) => s.name === "bench");
    if (server?.status === "online") return { proc, serverId: server.id, joinMs: Date.now() - t0 };
    if (Date.now() > deadline)
      throw new Error(`the agent is not online after 60 s (${server?.status}):\n${proc.tail()}`);
    await sleep(50);
  }
}

async function createHello(rpc, environmentId, name) {
  const { service } = await rpc("ServicesService/CreateService", {
    environmentId,
    name,
    visibility: "VISIBILITY_PRIVATE",
    spec: {
      driver: "DRIVER_EXEC",
      exec: { command: process.execPath, args: [HELLO, `${MARKER}-svc-${name}`], port: 8000 },
      healthCheck: { type: "http", path: "/healthz" },
      restartPolicy: "RESTART_POLICY_ALWAYS",
    },
  });
  return service.id;
}

/**
 * Deploy RPC, then GetService every POLL_MS until the observed state is this deployment running,
 * then GET http://<observed endpoint>/ until 200. Times are from the moment the RPC is sent.
 */
async function deployOnce(rpc, serviceId) {
  const t0 = performance.now();
  const { deployment } = await rpc("ServicesService/Deploy", { serviceId });
  const rpcMs = performance.now() - t0;
  let polls = 0;
  let observed;
  for (;;) {
    const { service } = await rpc("ServicesService/GetService", { serviceId });
    polls++;
    observed = service.observed ?? {};
    if (observed.deploymentId === deployment.id) {
      if (observed.status === "running") break;
      if (observed.status === "failed")
        throw new Error(`deployment ${deployment.id} failed: ${observed.reason}`);
    }
    if (performance.now() - t0 > DEPLOY_TIMEOUT_MS)
      throw new Error(`not running after ${DEPLOY_TIMEOUT_MS} ms: ${JSON.stringify(observed)}`);
    await sleep(POLL_MS);
  }
  const runningMs = performance.now() - t0;
  if (!observed.endpoint)
    throw new Error(`running without an endpoint: ${JSON.stringify(observed)}`);
  const getAttempts = await until200(`http://${observed.endpoint}/`, t0);
  return {
    totalMs: performance.now() - t0,
    rpcMs,
    runningMs,
    polls,
    getAttempts,
    endpoint: observed.endpoint,
  };
}

/** The reference: spawn `node examples/hello-server.mjs` with PORT set, GET / until 200, stop it. */
async function bareSpawn(logDir, i) {
  const [port] = await freePorts(1);
  const t0 = performance.now();
  const proc = startNode(`bare-${i}`, [HELLO, `${MARKER}-bare-${i}`], {
    logDir,
    env: { PORT: String(port), HOST: "127.0.0.1" },
  });
  try {
    await until200(`http://127.0.0.1:${port}/`, t0, () => !proc.exitStatus());
    return performance.now() - t0;
  } finally {
    await proc.stop();
  }
}

const rssOf = (proc) => (proc && !proc.exitStatus() ? procStatusMb(proc.pid, "VmRSS") : null);
const ratio = (a, b) =>
  typeof a === "number" && typeof b === "number" && b > 0 ? round(a / b, 2) : null;
const below = (v, max) => (typeof v === "number" ? v < max : null);
const ms = (list) => list.map((v) => round(v, 1));

async function main(out) {
  requireBuild();
  const logDir = tempDir("flotilla-bench-logs-", { keep: cfg.keepLogs });
  // The agent keeps credentials, pid files and workload logs here (the workloads run as `nobody`
  // but the agent, as root, opens their log files for them).
  const agentDir = tempDir("flotilla-bench-agent-", { keep: cfg.keepLogs });
  // Registered before the agent starts, so it runs after the agent has stopped (cleanups run
  // newest first): a running agent would restart what we kill. Workloads outlive their agent by
  // design (they are adopted at its next start), so they are killed by the marker they carry.
  onCleanup(async () => {
    const n = await killMatching(MARKER);
    if (n > 0) progress(`killed ${n} workload process(es) marked ${MARKER}`);
  });
  progress(
    `deploy: ${DEPLOYS} deploys of the example service and ${DEPLOYS} bare spawns, interleaved; ` +
      `then ${INSTANCES} instances; hub and agent log level ${cfg.logLevel}; logs in ${logDir}`,
  );

  const hub = await startHub(logDir);
  out.hub = { readyMs: hub.readyMs };
  progress(`hub ready in ${hub.readyMs} ms (pid ${hub.proc.pid})`);
  const login = await connectJson(`${hub.base}/flotilla.v1.IdentityService/Login`, {
    email: ADMIN_EMAIL,
    password: ADMIN_PASSWORD,
  });
  if (login.status !== 200) throw new Error(`Login answered ${login.status}`);
  const rpc = client(hub.base, login.body.sessionToken);

  const agent = await startAgent(hub, rpc, logDir, agentDir);
  out.agent = { joinMs: agent.joinMs };
  progress(`agent joined and online in ${agent.joinMs} ms (pid ${agent.proc.pid})`);
  await sleep(cfg.idleMs);
  out.agent.idleRssMb = rssOf(agent.proc);
  out.hub.idleRssMb = rssOf(hub.proc);
  progress(`idle RSS: agent ${out.agent.idleRssMb} MB, hub ${out.hub.idleRssMb} MB`);

  const { production } = await rpc("ProjectService/CreateProject", { name: "Bench" });
  const environmentId = production.id;

  // 1. One service deployed DEPLOYS times, interleaved with bare spawns (alternating which goes
  // first), so a burst of other work on the machine hits both alike.
  const first = await createHello(rpc, environmentId, "hello-1");
  const deploys = [];
  const bare = [];
  const endpoints = new Set();
  for (let i = 0; i < DEPLOYS; i++) {
    const runDeploy = async () => {
      const d = await deployOnce(rpc, first);
      deploys.push(d);
      endpoints.add(d.endpoint);
    };
    const runBare = async () => bare.push(await bareSpawn(logDir, i));
    for (const step of i % 2 === 0 ? [runDeploy, runBare] : [runBare, runDeploy]) {
      await step();
      await sleep(PAUSE_MS);
    }
    const d = deploys.at(-1);
    progress(
      `round ${i + 1}/${DEPLOYS}: deploy ${round(d.totalMs, 0)} ms (rpc ${round(d.rpcMs, 0)}, ` +
        `observed running ${round(d.runningMs, 0)}, ${d.polls} polls), bare spawn ${round(bare.at(-1), 0)} ms`,
    );
  }
  const total = deploys.map((d) => d.totalMs);
  out.deploy = {
    ...distribution(total),
    firstMs: round(total[0], 1),
    replaceMedianMs: distribution(total.slice(1))?.median ?? null,
    rpc: distribution(deploys.map((d) => d.rpcMs)),
    observedRunning: distribution(deploys.map((d) => d.runningMs)),
    reachableAfterRunning: distribution(deploys.map((d) => d.totalMs - d.runningMs)),
    getServicePollsMedian: distribution(
      deploys.map((d) => d.polls),
      0,
    ).median,
    endpoints: endpoints.size,
    allMs: ms(total),
  };
  out.bareSpawn = { ...distribution(bare), allMs: ms(bare) };
  out.deployRatioToBare = ratio(out.deploy.median, out.bareSpawn.median);
  out.deployRatioToBareByRound = total.map((t, i) => ratio(t, bare[i]));

  // 2. INSTANCES services running side by side (the measured one is the first).
  const more = [];
  for (let n = 2; n <= INSTANCES; n++) {
    const serviceId = await createHello(rpc, environmentId, `hello-${n}`);
    const d = await deployOnce(rpc, serviceId);
    more.push(d.totalMs);
    progress(`service ${n}/${INSTANCES} running in ${round(d.totalMs, 0)} ms`);
  }
  out.moreServicesFirstDeploy = more.length > 0 ? { ...distribution(more), allMs: ms(more) } : null;
  await sleep(cfg.idleMs);
  const workloads = pidsMatching(`${MARKER}-svc-`);
  out.instancesRunning = workloads.length;
  out.workloadsRssMbTotal = round(
    workloads.reduce((sum, pid) => sum + (procStatusMb(pid, "VmRSS") ?? 0), 0),
    1,
  );
  out.agent.rssMbWithInstances = rssOf(agent.proc);
  out.agent.peakRssMb = agent.proc.exitStatus() ? null : procStatusMb(agent.proc.pid, "VmHWM");
  out.hub.rssMbWithInstances = rssOf(hub.proc);
  out.hub.peakRssMb = hub.proc.exitStatus() ? null : procStatusMb(hub.proc.pid, "VmHWM");
  progress(
    `${workloads.length} instances running: agent RSS ${out.agent.rssMbWithInstances} MB ` +
      `(peak ${out.agent.peakRssMb}), hub ${out.hub.rssMbWithInstances} MB; ` +
      `workloads ${out.workloadsRssMbTotal} MB together`,
  );
  progress(
    `deploy median ${out.deploy.median} ms, p90 ${out.deploy.p90} ms; bare spawn median ` +
      `${out.bareSpawn.median} ms; ratio ${out.deployRatioToBare}`,
  );
  for (const proc of [agent.proc, hub.proc]) {
    const status = proc.exitStatus();
    if (status) throw new Error(`${proc.name} exited during the run (${JSON.stringify(status)})`);
  }
  // Stopped here rather than at cleanup, to report how each stops: on SIGTERM (code 0), or only
  // by the SIGKILL after the grace period (signal SIGKILL). The agent goes first, with its
  // instances still running (they outlive it by design and are killed by their marker later).
  out.agent.stop = await timedStop(agent.proc);
  out.hub.stop = await timedStop(hub.proc);
  progress(`stopped: agent ${JSON.stringify(out.agent.stop)}, hub ${JSON.stringify(out.hub.stop)}`);
}

async function timedStop(proc) {
  const t0 = Date.now();
  const { code, signal } = await proc.stop();
  return { ms: Date.now() - t0, code, signal };
}

const loadAvgBefore = round(loadavg()[0]);
const out = {};
let error;
try {
  await main(out);
} catch (err) {
  progress(`deploy FAILED: ${err?.stack ?? err}`);
  error = String(err?.message ?? err).split("\n")[0];
} finally {
  await runCleanups();
}

const figures = {
  bench: "deploy",
  at: new Date().toISOString(),
  node: process.version,
  cpus: availableParallelism(),
  ...(error ? { error } : {}),
  workload: "node examples/hello-server.mjs (exec driver, http health check /healthz)",
  deploys: DEPLOYS,
  instances: INSTANCES,
  pollMs: POLL_MS,
  logLevel: cfg.logLevel,
  idleMs: cfg.idleMs,
  loadAvg1Before: loadAvgBefore,
  loadAvg1After: round(loadavg()[0]),
  targets: TARGETS,
  deploy: out.deploy ?? null,
  bareSpawn: out.bareSpawn ?? null,
  deployRatioToBare: out.deployRatioToBare ?? null,
  deployRatioToBareByRound: out.deployRatioToBareByRound ?? null,
  moreServicesFirstDeploy: out.moreServicesFirstDeploy ?? null,
  instancesRunning: out.instancesRunning ?? null,
  workloadsRssMbTotal: out.workloadsRssMbTotal ?? null,
  agent: out.agent ?? null,
  hub: out.hub ?? null,
  meetsTargets: {
    deployMedian: below(out.deploy?.median, TARGETS.deployMaxMedianMs),
    agentIdleRss: below(out.agent?.idleRssMb, TARGETS.agentMaxIdleRssMb),
    // Only when the run had exactly the target's 20 instances running.
    agentRssWith20:
      out.instancesRunning === 20
        ? below(out.agent?.rssMbWithInstances, TARGETS.agentMaxRssMbWith20)
        : null,
  },
};
process.stdout.write(`${JSON.stringify(figures)}\n`);
process.exit(error ? 1 : 0);
