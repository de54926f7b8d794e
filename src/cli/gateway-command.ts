// `flotilla gateway`: an edge proxy for one registered gateway. Loads no hub code (no Fastify,
// PGlite or Connect runtime): its store is better-sqlite3.
import { resolve } from "node:path";
import { type Gateway, startGateway } from "../gateway/index.js";
import { FlotillaError } from "../shared/index.js";
import {
  help,
  intOption,
  type OptionSpecs,
  parseOptions,
  stringOption,
  tlsOptions,
  untilStopSignal,
} from "./options.js";

const GATEWAY: OptionSpecs = {
  hub: {
    type: "string",
    env: "FLOTILLA_HUB",
    description:
      "Hub URL; several comma-separated (replicas): a lost event stream moves to the next",
  },
  token: {
    type: "string",
    env: "FLOTILLA_GATEWAY_TOKEN",
    description: "The gateway's token (from `flotilla gateways create`)",
  },
  port: {
    type: "string",
    env: "FLOTILLA_GATEWAY_PORT",
    default: "8000",
    description: "Data port: API traffic",
  },
  host: {
    type: "string",
    env: "FLOTILLA_GATEWAY_HOST",
    default: "0.0.0.0",
    description: "Address the data port binds",
  },
  "tls-cert": {
    type: "string",
    env: "FLOTILLA_GATEWAY_TLS_CERT",
    description: "PEM certificate file: the data port speaks HTTPS (HTTP/1.1)",
  },
  "tls-key": {
    type: "string",
    env: "FLOTILLA_GATEWAY_TLS_KEY",
    description: "PEM private key file for --tls-cert",
  },
  "tls-cert-dir": {
    type: "string",
    env: "FLOTILLA_GATEWAY_TLS_CERT_DIR",
    description:
      "Certificates by server name (SNI): NAME.crt + NAME.key pairs, or certbot's live/ (NAME/fullchain.pem + privkey.pem); each serves its subjectAltName's DNS names, --tls-cert any other. Read again on SIGHUP",
  },
  "admin-port": {
    type: "string",
    env: "FLOTILLA_GATEWAY_ADMIN_PORT",
    default: "8001",
    description: "Loopback port of /health, /ready, /metrics and /status",
  },
  "data-dir": {
    type: "string",
    env: "FLOTILLA_GATEWAY_DATA_DIR",
    default: "./.flotilla-gateway",
    description: "Local store (SQLite): the gateway serves from it at once after a restart",
  },
  "batch-size": {
    type: "string",
    env: "FLOTILLA_GATEWAY_BATCH_SIZE",
    default: "50",
    description: "Deployments per content request during a sync (1-500)",
  },
  "hash-check-seconds": {
    type: "string",
    env: "FLOTILLA_GATEWAY_HASH_CHECK_SECONDS",
    default: "30",
    description: "How often the config hash is compared with the hub's",
  },
  "access-log": {
    type: "string",
    env: "FLOTILLA_GATEWAY_ACCESS_LOG",
    default: "on",
    description: "on or off: one JSON line per request on stdout",
  },
  "log-level": {
    type: "string",
    env: "FLOTILLA_LOG_LEVEL",
    default: "info",
    description: "trace, debug, info, warn, error",
  },
  help: { type: "boolean", short: "h", description: "Show this help" },
};

export async function gatewayCommand(argv: string[]): Promise<number> {
  const { values } = parseOptions(argv, GATEWAY);
  if (values.help)
    return help(
      "flotilla gateway --hub URL --token T [--port P] [--data-dir DIR]\n\nRuns an edge proxy: serves the stored config at once, then keeps in sync with the hub.",
      GATEWAY,
    );
  const hubUrl = stringOption(values, "hub");
  const token = stringOption(values, "token");
  if (!hubUrl?.replace(/[,\s]/g, ""))
    throw new FlotillaError("validation.failed", "--hub is required", { field: "hub" });
  if (!token)
    throw new FlotillaError("validation.failed", "--token is required", { field: "token" });
  const accessLog = stringOption(values, "access-log");
  if (accessLog !== "on" && accessLog !== "off")
    throw new FlotillaError("validation.failed", "--access-log must be on or off", {
      field: "access-log",
    });
  const certificateDir = stringOption(values, "tls-cert-dir");
  // A renewal (certbot's deploy hook, say) sends SIGHUP: new handshakes get the new certificates.
  // Listened to from before the start to after the drain, so a SIGHUP never stops the process.
  let gateway: Gateway | undefined;
  let reloadWhenStarted = false;
  const reload = () => {
    if (gateway) gateway.reloadCertificates();
    else reloadWhenStarted = true;
  };
  if (certificateDir) process.on("SIGHUP", reload);
  const port = intOption(values, "port", { min: 0, max: 65535 })!;
  const adminPort = intOption(values, "admin-port", { min: 0, max: 65535 })!;
  try {
    gateway = await startGateway({
      hubUrl,
      token,
      port,
      host: stringOption(values, "host")!,
      adminPort,
      dataDir: resolve(stringOption(values, "data-dir")!),
      batchSize: intOption(values, "batch-size", { min: 1, max: 500 })!,
      hashCheckIntervalMs: intOption(values, "hash-check-seconds", { min: 1, max: 86_400 })! * 1000,
      accessLog: accessLog === "on",
      logLevel: stringOption(values, "log-level")!,
      tls: tlsOptions(values),
      ...(certificateDir ? { certificateDir: resolve(certificateDir) } : {}),
    }).catch((err: NodeJS.ErrnoException & { port?: number }) => {
      // A port that will not listen is the operator's to change, not an internal error.
      if (err.code !== "EADDRINUSE" && err.code !== "EACCES") throw err;
      const taken = err.port === adminPort && adminPort !== port ? "--admin-port" : "--port";
      throw new FlotillaError(
        "config.invalid",
        `${taken} ${err.port}: ${err.code === "EADDRINUSE" ? "another process listens there (flotilla up's local gateway takes 8000 and 8001)" : "not permitted for this user"}; pick another port`,
      );
    });
    if (reloadWhenStarted) gateway.reloadCertificates();
    await untilStopSignal();
    await gateway.close();
  } finally {
    process.off("SIGHUP", reload);
  }
  return 0;
}
