// `flotilla agent`: the agent of this server. Kept apart from the hub's commands so an agent
// process loads none of the hub (Fastify, pg, PGlite): its memory target is 60 MB idle.
import { resolve } from "node:path";
import { startAgent } from "../agent/index.js";
import { createLogger, FlotillaError } from "../shared/index.js";
import {
  help,
  intOption,
  type OptionSpecs,
  parseOptions,
  stringOption,
  untilStopSignal,
} from "./options.js";

const AGENT: OptionSpecs = {
  hub: {
    type: "string",
    env: "FLOTILLA_HUB",
    description: "Hub URL, or several replicas' URLs comma-separated (tried in turn on reconnect)",
  },
  "join-token": {
    type: "string",
    env: "FLOTILLA_JOIN_TOKEN",
    description: "One-time token from `flotilla servers add` (first start only)",
  },
  "data-dir": {
    type: "string",
    env: "FLOTILLA_AGENT_DATA_DIR",
    default: "./.flotilla-agent",
    description: "Agent state: credentials (0600) and the ledger of executed dispatches",
  },
  "workload-user": {
    type: "string",
    env: "FLOTILLA_WORKLOAD_USER",
    default: "nobody",
    description: "Unprivileged user workloads run as when the agent runs as root",
  },
  "admin-port": {
    type: "string",
    env: "FLOTILLA_AGENT_ADMIN_PORT",
    default: "8082",
    description: "Loopback port of the admin API (/status, /drain, /resume, /reload, probes)",
  },
  "admin-host": {
    type: "string",
    env: "FLOTILLA_AGENT_ADMIN_HOST",
    default: "127.0.0.1",
    description:
      "Address the admin API listens on; off loopback, every request must be signed by the hub",
  },
  "admin-advertise-url": {
    type: "string",
    env: "FLOTILLA_AGENT_ADMIN_URL",
    description:
      "URL hub replicas use to reach the admin API when none holds this agent's channel ({port} is replaced by the bound port)",
  },
  "advertise-host": {
    type: "string",
    env: "FLOTILLA_AGENT_ADVERTISE_HOST",
    description:
      "Address reported for PUBLIC services, which gateways on other hosts proxy to (default: this host's first non-internal IPv4 address, else 127.0.0.1)",
  },
  "log-level": {
    type: "string",
    env: "FLOTILLA_LOG_LEVEL",
    default: "info",
    description: "trace, debug, info, warn, error",
  },
  help: { type: "boolean", short: "h", description: "Show this help" },
};

export async function agentCommand(argv: string[]): Promise<number> {
  const { values } = parseOptions(argv, AGENT);
  if (values.help)
    return help(
      "flotilla agent --hub URL --join-token T [--data-dir DIR]\n\nRuns the agent of this server: joins the hub once, then keeps its control channel open.",
      AGENT,
    );
  const dataDir = resolve(stringOption(values, "data-dir")!);
  const logger = createLogger({ name: "flotilla-agent", level: String(values["log-level"]) });
  const hub = stringOption(values, "hub");
  const joinToken = stringOption(values, "join-token");
  const adminAdvertiseUrl = stringOption(values, "admin-advertise-url");
  const advertiseHost = stringOption(values, "advertise-host");
  // Becomes the host of "host:port" endpoints: a DNS name or IPv4 address, or [IPv6] in brackets.
  if (
    advertiseHost !== undefined &&
    !/^([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])$/.test(advertiseHost)
  )
    throw new FlotillaError(
      "config.invalid",
      `--advertise-host: "${advertiseHost.slice(0, 60)}" is not a host name, an IPv4 address or a bracketed [IPv6] address`,
      { field: "advertise-host" },
    );
  const agent = await startAgent({
    dataDir,
    logger,
    ...(advertiseHost ? { advertiseHost } : {}),
    workloadUser: stringOption(values, "workload-user")!,
    adminPort: intOption(values, "admin-port", { min: 0, max: 65535 })!,
    adminHost: stringOption(values, "admin-host")!,
    ...(adminAdvertiseUrl ? { adminAdvertiseUrl } : {}),
    ...(hub ? { hub } : {}),
    ...(joinToken ? { joinToken } : {}),
  }).catch((err: Error) => {
    throw new FlotillaError("config.invalid", err.message);
  });
  process.stdout.write(
    `Flotilla agent for server ${agent.serverId}; state in ${dataDir}; admin API ${agent.adminUrl}\n`,
  );
  await untilStopSignal();
  process.stdout.write("agent stopping: finishing dispatches in flight\n");
  await agent.close();
  return 0;
}
