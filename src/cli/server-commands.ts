// `flotilla up` (everything in one process, embedded store) and `flotilla hub` (one replica on PostgreSQL).
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type Agent, startAgent } from "../agent/index.js";
import {
  type Hub,
  type HubOptions,
  loadOrCreateKeyFile,
  type MasterKey,
  masterKeyFrom,
  parseProvisionersOption,
  rotateMasterKey,
  startHub,
} from "../hub/index.js";
import { createLogger, FlotillaError, type Logger } from "../shared/index.js";
import {
  copyInstallation,
  migrate,
  openPglite,
  openPostgres,
  parseEmbeddedSource,
  type TableCopy,
} from "../store/index.js";
import { openDataDirForWorkloads } from "./data-dir.js";
import {
  help,
  intOption,
  type OptionSpecs,
  parseOptions,
  stringOption,
  tlsOptions,
  untilStopSignal,
} from "./options.js";
import { localGateway } from "./up-gateway.js";

const COMMON: OptionSpecs = {
  host: { type: "string", env: "FLOTILLA_HOST", description: "Address to listen on" },
  port: {
    type: "string",
    env: "FLOTILLA_PORT",
    default: "8080",
    description: "HTTP port (Connect API, probes, metrics)",
  },
  "grpc-port": {
    type: "string",
    env: "FLOTILLA_GRPC_PORT",
    default: "8081",
    description: "Cleartext HTTP/2 port for gRPC callers",
  },
  "session-secret": {
    type: "string",
    env: "FLOTILLA_SESSION_SECRET",
    description:
      "Secret (32+ chars) that session and token keys derive from; shared by all replicas",
  },
  "admin-email": {
    type: "string",
    env: "FLOTILLA_ADMIN_EMAIL",
    description: "Create the first owner with this email instead of printing a setup token",
  },
  "admin-password": {
    type: "string",
    env: "FLOTILLA_ADMIN_PASSWORD",
    description: "Password for --admin-email",
  },
  "tls-cert": {
    type: "string",
    env: "FLOTILLA_TLS_CERT",
    description: "PEM certificate file: serve HTTPS, with gRPC on the same port (ALPN)",
  },
  "tls-key": {
    type: "string",
    env: "FLOTILLA_TLS_KEY",
    description: "PEM private key file for --tls-cert",
  },
  "max-body-bytes": {
    type: "string",
    env: "FLOTILLA_MAX_BODY_BYTES",
    default: "1048576",
    description: "Largest request body accepted",
  },
  "master-key": {
    type: "string",
    env: "FLOTILLA_MASTER_KEY",
    description:
      "32 random bytes in base64 that seal config secrets; the same on every replica (`flotilla up` generates one)",
  },
  "previous-master-keys": {
    type: "string",
    env: "FLOTILLA_MASTER_KEYS_PREVIOUS",
    description: "Comma-separated older master keys that still open secrets until rotate-key",
  },
  "sweep-interval-ms": {
    type: "string",
    env: "FLOTILLA_SWEEP_INTERVAL_MS",
    default: "15000",
    description: "How often dispatches past their deadline and stale server affinity are swept",
  },
  "auth-cache-ms": {
    type: "string",
    env: "FLOTILLA_AUTH_CACHE_MS",
    default: "5000",
    description:
      "Trust a resolved credential this long without a database lookup; changes reach every replica at once by NOTIFY, and this bounds a lost one (0: off)",
  },
  provisioners: {
    type: "string",
    env: "FLOTILLA_PROVISIONERS",
    description:
      'Private-link provisioners besides the built-in "local", as JSON: {"NAME": {"kind": "command", "command": "/path/to/program", "args": [], "timeoutMs": 600000}} (docs/provisioners.md); the same on every replica',
  },
  "dataplane-lease-ms": {
    type: "string",
    env: "FLOTILLA_DATAPLANE_LEASE_MS",
    default: "30000",
    description:
      "How long a replica's claim on a data plane's converge lasts without renewal (renewed every third of it); a dead replica's work moves on after this",
  },
  "log-level": {
    type: "string",
    env: "FLOTILLA_LOG_LEVEL",
    default: "info",
    description: "trace, debug, info, warn, error",
  },
  help: { type: "boolean", short: "h", description: "Show this help" },
};

const UP: OptionSpecs = {
  "data-dir": {
    type: "string",
    env: "FLOTILLA_DATA_DIR",
    default: "./.flotilla",
    description: "Embedded store directory",
  },
  "no-agent": { type: "boolean", description: "Do not run a local agent in this process" },
  "no-gateway": { type: "boolean", description: "Do not run a local gateway in this process" },
  "gateway-base-domain": {
    type: "string",
    env: "FLOTILLA_GATEWAY_BASE_DOMAIN",
    default: "localhost",
    description: "PUBLIC services are routed at <service>-<env>-<project>.<this> on their gateways",
  },
  "gateway-port": {
    type: "string",
    env: "FLOTILLA_GATEWAY_PORT",
    default: "8000",
    description:
      "Port of the local gateway (PUBLIC services at <service>-<env>-<project>.<base domain>)",
  },
  "workload-user": {
    type: "string",
    env: "FLOTILLA_WORKLOAD_USER",
    default: "nobody",
    description: "Unprivileged user the local agent runs workloads as (when run as root)",
  },
  ...COMMON,
};

const NATS: OptionSpecs = {
  "nats-url": {
    type: "string",
    env: "FLOTILLA_NATS_URL",
    description:
      "nats://host:4222 (comma-separated for a cluster): publish events to NATS JetStream",
  },
  "nats-stream": {
    type: "string",
    env: "FLOTILLA_NATS_STREAM",
    default: "FLOTILLA_EVENTS",
    description: "The events stream (created if missing, validated if present)",
  },
  "nats-subject-root": {
    type: "string",
    env: "FLOTILLA_NATS_SUBJECT_ROOT",
    default: "flotilla",
    description: "First token of every event subject",
  },
  "nats-consumers": {
    type: "string",
    env: "FLOTILLA_NATS_CONSUMERS",
    default: "on",
    description: "on | off: run the durable consumers (audit projection, webhooks) on this replica",
  },
  "nats-ack-wait-ms": {
    type: "string",
    env: "FLOTILLA_NATS_ACK_WAIT_MS",
    default: "30000",
    description: "Consumers: redeliver a message not acked within this",
  },
  "nats-max-deliver": {
    type: "string",
    env: "FLOTILLA_NATS_MAX_DELIVER",
    default: "5",
    description: "Consumers: deliveries before a message is quarantined",
  },
  "nats-consumer-concurrency": {
    type: "string",
    env: "FLOTILLA_NATS_CONSUMER_CONCURRENCY",
    default: "16",
    description: "Consumers: handlers at once per consumer and replica (= max_ack_pending)",
  },
  "webhook-backoff-base-ms": {
    type: "string",
    env: "FLOTILLA_WEBHOOK_BACKOFF_BASE_MS",
    default: "5000",
    description: "First webhook retry after this, doubling per attempt",
  },
  "webhook-allow-private": {
    type: "string",
    env: "FLOTILLA_WEBHOOK_ALLOW_PRIVATE",
    default: "false",
    description:
      "true | false: let webhooks reach loopback and private networks (link-local stays refused)",
  },
  "webhook-allow-hosts": {
    type: "string",
    env: "FLOTILLA_WEBHOOK_ALLOW_HOSTS",
    description:
      "Comma-separated host names or IP addresses webhooks may reach whatever they resolve to",
  },
};

/** The NATS options of `flotilla hub`; none without --nats-url. */
function natsOptions(values: Record<string, string | boolean | undefined>): Partial<HubOptions> {
  const url = stringOption(values, "nats-url");
  const consumers = stringOption(values, "nats-consumers") ?? "on";
  if (consumers !== "on" && consumers !== "off")
    throw new FlotillaError("config.invalid", "--nats-consumers must be on or off");
  const allowPrivate = stringOption(values, "webhook-allow-private") ?? "false";
  if (allowPrivate !== "true" && allowPrivate !== "false")
    throw new FlotillaError(
      "config.invalid",
      "--webhook-allow-private (FLOTILLA_WEBHOOK_ALLOW_PRIVATE) must be true or false",
    );
  // Fault injection for the crash tests only: SIGKILL the relay between publish and mark.
  const killAfter = process.env.FLOTILLA_FAULT_KILL_AFTER_PUBLISHED;
  return {
    webhooks: {
      backoffBaseMs: intOption(values, "webhook-backoff-base-ms", { min: 10, max: 3_600_000 })!,
      allowPrivateNetworks: allowPrivate === "true",
      allowHosts: (stringOption(values, "webhook-allow-hosts") ?? "")
        .split(",")
        .map((h) => h.trim())
        .filter(Boolean),
    },
    ...(killAfter ? { relay: { killAfterPublished: Number(killAfter) } } : {}),
    ...(url
      ? {
          nats: {
            url,
            stream: stringOption(values, "nats-stream")!,
            subjectRoot: stringOption(values, "nats-subject-root")!,
            consumers: consumers === "on",
            consumer: {
              ackWaitMs: intOption(values, "nats-ack-wait-ms", { min: 1000, max: 3_600_000 })!,
              maxDeliver: intOption(values, "nats-max-deliver", { min: 1, max: 100 })!,
              concurrency: intOption(values, "nats-consumer-concurrency", { min: 1, max: 1000 })!,
            },
          },
        }
      : {}),
  };
}

const HUB: OptionSpecs = {
  "gateway-base-domain": {
    type: "string",
    env: "FLOTILLA_GATEWAY_BASE_DOMAIN",
    default: "localhost",
    description: "PUBLIC services are routed at <service>-<env>-<project>.<this> on their gateways",
  },
  "database-url": {
    type: "string",
    env: "FLOTILLA_DATABASE_URL",
    description: "postgres://user@host:5432/db (required)",
  },
  "db-pool-max": {
    type: "string",
    env: "FLOTILLA_DB_POOL_MAX",
    default: "20",
    description: "Pool connections",
  },
  "db-idle-timeout-ms": {
    type: "string",
    env: "FLOTILLA_DB_IDLE_TIMEOUT_MS",
    default: "30000",
    description: "Close idle pool connections after",
  },
  "db-max-lifetime-s": {
    type: "string",
    env: "FLOTILLA_DB_MAX_LIFETIME_S",
    default: "1800",
    description: "Recycle pool connections after",
  },
  ...NATS,
  ...COMMON,
};

function admin(values: Record<string, string | boolean | undefined>): HubOptions["admin"] {
  const email = stringOption(values, "admin-email");
  const password = stringOption(values, "admin-password");
  if (!email && !password) return undefined;
  if (!email || !password)
    throw new FlotillaError("config.invalid", "--admin-email and --admin-password go together");
  return { email, password };
}

function sessionSecret(
  values: Record<string, string | boolean | undefined>,
  fallbackFile?: string,
): string {
  const given = stringOption(values, "session-secret");
  if (given) {
    if (given.length < 32)
      throw new FlotillaError(
        "config.invalid",
        "--session-secret (FLOTILLA_SESSION_SECRET) must be at least 32 characters",
      );
    return given;
  }
  if (!fallbackFile) {
    throw new FlotillaError(
      "config.invalid",
      "set FLOTILLA_SESSION_SECRET (or --session-secret) to the same 32+ character secret on every replica, e.g. `openssl rand -base64 48`",
    );
  }
  // Embedded mode keeps a generated secret beside the data, readable by this user only.
  if (!existsSync(fallbackFile))
    writeFileSync(fallbackFile, randomBytes(48).toString("base64url"), { mode: 0o600 });
  return readFileSync(fallbackFile, "utf8").trim();
}

/** The embedded key file lives beside the data directory, so a copy of the data is not a copy of the key. */
export function embeddedKeyFile(dataDir: string): string {
  return join(dirname(dataDir), `${basename(dataDir)}.master-key`);
}

/** Where `config rotate-key` keeps the next embedded key until every secret is re-sealed with it. */
const pendingKeyFile = (keyFile: string) => `${keyFile}.next`;

function masterKeys(
  values: Record<string, string | boolean | undefined>,
  keyFile?: string,
): { masterKey: MasterKey; previousMasterKeys: MasterKey[] } {
  const given = stringOption(values, "master-key");
  let masterKey: MasterKey;
  if (given) masterKey = masterKeyFrom(given, "--master-key (FLOTILLA_MASTER_KEY)");
  else if (keyFile) masterKey = loadOrCreateKeyFile(keyFile);
  else
    throw new FlotillaError(
      "config.invalid",
      "set FLOTILLA_MASTER_KEY (or --master-key) to the same key on every replica, e.g. `openssl rand -base64 32`; it seals config secrets",
    );
  const previous = (stringOption(values, "previous-master-keys") ?? "")
    .split(",")
    .map((k) => k.trim())
    .filter(Boolean)
    .map((k, i) => masterKeyFrom(k, `FLOTILLA_MASTER_KEYS_PREVIOUS[${i}]`));
  // An interrupted rotation left some secrets sealed with the next key: still open them.
  if (keyFile && existsSync(pendingKeyFile(keyFile)))
    previous.push(loadOrCreateKeyFile(pendingKeyFile(keyFile)));
  return { masterKey, previousMasterKeys: previous };
}

function listenOptions(values: Record<string, string | boolean | undefined>, defaultHost: string) {
  return {
    tls: tlsOptions(values),
    host: stringOption(values, "host") ?? defaultHost,
    port: intOption(values, "port")!,
    grpcPort: intOption(values, "grpc-port")!,
    maxBodyBytes: intOption(values, "max-body-bytes", { min: 1024, max: 64 * 1024 * 1024 })!,
    authCacheMs: intOption(values, "auth-cache-ms", { min: 0, max: 60_000 })!,
    sweepIntervalMs: intOption(values, "sweep-interval-ms", { min: 100, max: 3_600_000 })!,
    provisioners: parseProvisionersOption(stringOption(values, "provisioners")),
    dataPlaneController: {
      leaseMs: intOption(values, "dataplane-lease-ms", { min: 1000, max: 3_600_000 })!,
    },
  };
}

/** Runs until SIGTERM or SIGINT, then shuts down gracefully. */
async function serve(
  hub: Hub,
  banner: string[],
  beforeClose?: () => Promise<void>,
): Promise<number> {
  for (const line of banner) process.stdout.write(`${line}\n`);
  await untilStopSignal();
  process.stdout.write("shutting down: finishing in-flight requests\n");
  await beforeClose?.();
  await hub.close();
  return 0;
}

function loginHelp(hub: Hub): string[] {
  if (hub.setupToken) {
    return [
      "",
      "No owner exists yet. Create one (this token works once; a restart prints a new one):",
      `  npx flotilla setup --hub ${hub.url} --token ${hub.setupToken} --email you@example.com`,
      "or with curl:",
      `  curl -s ${hub.url}/flotilla.v1.IdentityService/Bootstrap -H 'content-type: application/json' \\`,
      `    -d '{"setupToken":"${hub.setupToken}","email":"you@example.com","password":"at-least-10-chars"}'`,
    ];
  }
  return [
    hub.createdOwner ? `Created the first owner ${hub.createdOwner}.` : "",
    "Sign in:",
    `  npx flotilla login --hub ${hub.url} --email you@example.com`,
  ].filter(Boolean);
}

/**
 * First start: initdb and the migrations grow PGlite's WASM heap to ~800 MB, and a WASM memory
 * never shrinks. Done in a child process, that memory goes with it; the hub then opens the
 * prepared directory (~0.4 s) and idles at ~370 MB.
 */
function prepareStoreInChild(dataDir: string): void {
  process.stdout.write(`Preparing the embedded store in ${dataDir} (first start, a few seconds)\n`);
  const main = fileURLToPath(new URL("./main.js", import.meta.url));
  const r = spawnSync(process.execPath, [main, "prepare-store", "--data-dir", dataDir], {
    stdio: ["ignore", "inherit", "inherit"],
  });
  if (r.status !== 0)
    throw new FlotillaError(
      "store.unavailable",
      `preparing the embedded store in ${dataDir} failed (exit ${r.status ?? r.signal})`,
    );
}

/** `flotilla prepare-store`: create and migrate an embedded data directory, then exit. */
export async function prepareStoreCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    "data-dir": UP["data-dir"]!,
    help: { type: "boolean", short: "h", description: "Show this help" },
  };
  const { values } = parseOptions(argv, specs);
  if (values.help)
    return help(
      "flotilla prepare-store [--data-dir DIR]\n\nCreates and migrates an embedded data directory (flotilla up runs it on a first start).",
      specs,
    );
  const dataDir = resolve(stringOption(values, "data-dir")!);
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const db = await openPglite(dataDir);
  try {
    const report = await migrate(db);
    process.stdout.write(`Embedded store ready: ${report.applied.length} migration(s) applied.\n`);
  } finally {
    await db.close();
  }
  return 0;
}

export async function upCommand(argv: string[]): Promise<number> {
  const { values } = parseOptions(argv, UP);
  if (values.help)
    return help("flotilla up [options]\n\nRuns Flotilla in one process on the embedded store.", UP);
  const dataDir = resolve(stringOption(values, "data-dir")!);
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const logger = createLogger({ name: "flotilla", level: String(values["log-level"]) });
  if (!existsSync(join(dataDir, "pgdata"))) prepareStoreInChild(dataDir);
  const hub = await startHub({
    store: { kind: "embedded", dataDir },
    ...listenOptions(values, "127.0.0.1"),
    sessionSecret: sessionSecret(values, join(dataDir, "session.secret")),
    ...masterKeys(values, embeddedKeyFile(dataDir)),
    admin: admin(values),
    logger,
    gatewayBaseDomain: stringOption(values, "gateway-base-domain")!,
    // The local gateway runs in this process, beside the embedded agent: loopback reaches it.
    sameHostGateway: "local",
  });
  const gateway = values["no-gateway"]
    ? undefined
    : localGateway(
        hub,
        {
          dataDir: join(dataDir, "gateway"),
          port: intOption(values, "gateway-port", { min: 0, max: 65535 })!,
          host: stringOption(values, "host") ?? "127.0.0.1",
        },
        logger,
      );
  if (!values["no-agent"]) openDataDirForWorkloads(dataDir, "agent");
  const local = values["no-agent"]
    ? undefined
    : localAgent(hub, join(dataDir, "agent"), stringOption(values, "workload-user")!, logger);
  return serve(
    hub,
    [
      `Flotilla is running at ${hub.url} (gRPC ${hub.grpcUrl}); embedded store in ${dataDir}`,
      `  health ${hub.url}/health   ready ${hub.url}/ready   metrics ${hub.url}/metrics`,
      ...loginHelp(hub),
      values["no-agent"]
        ? ""
        : "  A local agent (server `local`) joins the first organization and runs what you deploy.",
      values["no-gateway"]
        ? ""
        : `  A local gateway (\`local\`) on port ${stringOption(values, "gateway-port")} serves PUBLIC services at <service>-<env>-<project>.${stringOption(values, "gateway-base-domain")}.`,
    ].filter(Boolean),
    async () => {
      await gateway?.stop();
      await local?.stop();
    },
  );
}

/**
 * `flotilla up` runs an agent in the same process, joined to the first organization as server
 * `local` once one exists (right away with --admin-email, else after setup).
 */
function localAgent(hub: Hub, agentDir: string, workloadUser: string, logger: Logger) {
  let agent: Agent | undefined;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const attempt = async () => {
    if (stopped) return;
    try {
      let joinToken: string | undefined;
      if (!existsSync(join(agentDir, "agent.json"))) {
        const owner = await hub.identity.firstOwner();
        if (!owner) {
          timer = setTimeout(attempt, 2000);
          return;
        }
        const caller = {
          organizationId: owner.organizationId,
          actor: { type: "user" as const, id: owner.userId },
        };
        joinToken = (await hub.servers.createJoinToken(caller, "local", 3600)).token;
      }
      agent = await startAgent({
        hub: hub.url,
        dataDir: agentDir,
        workloadUser,
        logger: logger.child({ component: "agent" }),
        ...(joinToken ? { joinToken } : {}),
        // Everything of `flotilla up` runs on this host: PUBLIC services stay on loopback.
        advertiseHost: "127.0.0.1",
      });
    } catch (err) {
      logger.error({ err }, "the local agent could not start; retrying in 10 s");
      timer = setTimeout(attempt, 10_000);
    }
  };
  void attempt();
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await agent?.close();
    },
  };
}

export async function hubCommand(argv: string[]): Promise<number> {
  const { values } = parseOptions(argv, HUB);
  if (values.help)
    return help(
      "flotilla hub --database-url postgres://... [options]\n\nRuns one hub replica on PostgreSQL.",
      HUB,
    );
  const url = stringOption(values, "database-url");
  if (!url)
    throw new FlotillaError(
      "config.invalid",
      "--database-url (FLOTILLA_DATABASE_URL) is required, e.g. postgres://postgres@127.0.0.1:5432/flotilla",
    );
  const logger = createLogger({ name: "flotilla-hub", level: String(values["log-level"]) });
  const hub = await startHub({
    store: {
      kind: "postgres",
      url,
      pool: {
        max: intOption(values, "db-pool-max", { min: 1, max: 1000 })!,
        idleTimeoutMs: intOption(values, "db-idle-timeout-ms", { min: 0, max: 86_400_000 })!,
        maxLifetimeSeconds: intOption(values, "db-max-lifetime-s", { min: 0, max: 604_800 })!,
      },
    },
    ...listenOptions(values, "0.0.0.0"),
    sessionSecret: sessionSecret(values),
    ...masterKeys(values),
    admin: admin(values),
    logger,
    gatewayBaseDomain: stringOption(values, "gateway-base-domain")!,
    ...natsOptions(values),
  });
  return serve(hub, [
    `Flotilla hub ${hub.instanceId} at ${hub.url} (gRPC ${hub.grpcUrl}) on PostgreSQL${hub.nats ? `, events on NATS stream ${hub.nats.contract.name}` : ""}`,
    ...loginHelp(hub),
  ]);
}

const ROTATE: OptionSpecs = {
  "data-dir": {
    type: "string",
    env: "FLOTILLA_DATA_DIR",
    description: "Embedded store directory (its key file beside it is replaced)",
  },
  "database-url": {
    type: "string",
    env: "FLOTILLA_DATABASE_URL",
    description:
      "PostgreSQL installation: re-seal with --master-key, opening with the previous keys",
  },
  "master-key": COMMON["master-key"]!,
  "previous-master-keys": COMMON["previous-master-keys"]!,
  help: { type: "boolean", short: "h", description: "Show this help" },
};

/** `flotilla config rotate-key`: re-seals every secret under a new master key. */
export async function rotateKeyCommand(argv: string[]): Promise<number> {
  const { values } = parseOptions(argv, ROTATE);
  if (values.help)
    return help(
      [
        "flotilla config rotate-key --data-dir DIR",
        "flotilla config rotate-key --database-url URL --master-key NEW --previous-master-keys OLD[,OLDER]",
        "",
        "Re-seals every config secret under a new master key. Embedded: stop `flotilla up` first; a new",
        "key is generated and replaces the key file when done. PostgreSQL: replicas may keep running with",
        "NEW as FLOTILLA_MASTER_KEY and OLD in FLOTILLA_MASTER_KEYS_PREVIOUS; drop OLD after this finishes.",
      ].join("\n"),
      ROTATE,
    );
  const url = stringOption(values, "database-url");
  const dir = stringOption(values, "data-dir");
  if (Boolean(url) === Boolean(dir))
    throw new FlotillaError("config.invalid", "give exactly one of --data-dir or --database-url");
  if (url) {
    const keys = masterKeys(values);
    if (keys.previousMasterKeys.length === 0)
      throw new FlotillaError(
        "config.invalid",
        "--previous-master-keys (FLOTILLA_MASTER_KEYS_PREVIOUS) must name the key(s) the secrets are sealed with now",
      );
    const n = await rotateMasterKey(
      { kind: "postgres", url },
      keys.masterKey,
      keys.previousMasterKeys,
    );
    process.stdout.write(`Re-sealed ${n} secret(s) with key ${keys.masterKey.id}.\n`);
    return 0;
  }
  const dataDir = resolve(dir!);
  const keyFile = embeddedKeyFile(dataDir);
  if (!existsSync(keyFile))
    throw new FlotillaError(
      "config.invalid",
      `${keyFile} does not exist: is ${dataDir} a Flotilla data directory?`,
    );
  const current = loadOrCreateKeyFile(keyFile);
  // The next key is written before any secret moves to it, so a crash never loses a key.
  const next = loadOrCreateKeyFile(pendingKeyFile(keyFile));
  const n = await rotateMasterKey({ kind: "embedded", dataDir }, next, [current]);
  renameSync(pendingKeyFile(keyFile), keyFile);
  process.stdout.write(`Re-sealed ${n} secret(s); ${keyFile} now holds key ${next.id}.\n`);
  return 0;
}

const MIGRATE: OptionSpecs = {
  from: {
    type: "string",
    description:
      "The embedded installation: its data directory (pglite:///abs, pglite://rel, file:/abs, or a path)",
  },
  to: {
    type: "string",
    env: "FLOTILLA_DATABASE_URL",
    description: "The PostgreSQL database to copy into: postgres://user@host:5432/db",
  },
  "drop-source": {
    type: "boolean",
    description: "Remove the embedded data directory once the copy is verified",
  },
  "batch-size": {
    type: "string",
    default: "1000",
    description: "Rows read and written per statement",
  },
  json: { type: "boolean", description: "Print the summary as JSON" },
  help: { type: "boolean", short: "h", description: "Show this help" },
};

/** `flotilla migrate`: an embedded installation copied into PostgreSQL, counts verified. */
export async function migrateCommand(argv: string[]): Promise<number> {
  const { values } = parseOptions(argv, MIGRATE);
  if (values.help)
    return help(
      [
        "flotilla migrate --from ./.flotilla --to postgres://... [--drop-source]",
        "",
        "Copies an embedded installation (stop `flotilla up` first) into PostgreSQL: every table in",
        "foreign-key order, in batches, in one transaction, counts verified per table. A rerun copies",
        "nothing twice. The source is opened read-only and removed only after success, and only with",
        "--drop-source. Then run hubs on the database with the embedded master key (printed below).",
      ].join("\n"),
      MIGRATE,
    );
  const dataDir = parseEmbeddedSource(stringOption(values, "from") ?? "");
  const url = stringOption(values, "to");
  if (!url) throw new FlotillaError("config.invalid", "--to (FLOTILLA_DATABASE_URL) is required");
  if (!existsSync(join(dataDir, "pgdata")))
    throw new FlotillaError(
      "config.invalid",
      `${dataDir} is not a Flotilla data directory (no pgdata/ in it)`,
    );
  const batchSize = intOption(values, "batch-size", { min: 1, max: 10_000 })!;
  const tty = process.stderr.isTTY;
  const source = await openPglite(dataDir);
  let report: TableCopy[];
  try {
    // Read-only: nothing in this session may write to the source.
    await source.query("SET default_transaction_read_only = on");
    const target = openPostgres(url, { max: 2 });
    try {
      await migrate(target);
      report = await copyInstallation(source, target, {
        batchSize,
        progress: {
          table: (table, total) => {
            if (!tty) process.stderr.write(`  ${table.padEnd(20)} ${total} rows\n`);
          },
          rows: (table, done, total) => {
            if (!tty) return;
            const width = 30;
            const filled = Math.round((done / Math.max(total, 1)) * width);
            process.stderr.write(
              `\r  ${table.padEnd(20)} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ${done}/${total}${done === total ? "\n" : ""}`,
            );
          },
        },
      });
    } finally {
      await target.close();
    }
  } finally {
    await source.close();
  }
  const keyFile = embeddedKeyFile(dataDir);
  // Only the store: the data directory also holds the local agent's state and its services'
  // volumes (a managed database's files), which outlive the move to PostgreSQL.
  if (values["drop-source"]) {
    rmSync(join(dataDir, "pgdata"), { recursive: true, force: true });
    rmSync(join(dataDir, "flotilla.lock"), { force: true });
  }
  const rows = report.reduce((n, r) => n + r.source, 0);
  const copied = report.reduce((n, r) => n + r.inserted, 0);
  if (values.json) {
    printJsonLine({
      tables: report,
      rows,
      copied,
      droppedSource: Boolean(values["drop-source"]),
      masterKeyFile: keyFile,
    });
  } else {
    for (const r of report)
      process.stdout.write(
        `  ${r.table.padEnd(20)} ${String(r.source).padStart(7)} rows, ${r.inserted} copied, verified\n`,
      );
    process.stdout.write(
      [
        `Copied ${copied} of ${rows} rows in ${report.length} tables; every table's count matches.`,
        values["drop-source"]
          ? `Removed the embedded store (${join(dataDir, "pgdata")}); the rest of ${dataDir} (the local agent's state and volumes) is kept.`
          : `The source is untouched: ${dataDir}.`,
        `Secrets are sealed with the embedded master key: run the hubs with`,
        `  FLOTILLA_MASTER_KEY="$(cat ${keyFile})"`,
        "",
      ].join("\n"),
    );
  }
  return 0;
}

function printJsonLine(value: unknown) {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}
