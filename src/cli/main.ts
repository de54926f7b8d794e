#!/usr/bin/env node
// The flotilla command: dispatches to server commands (up, hub) and API commands (login, whoami, ...).
import { setFlagsFromString } from "node:v8";
import { EXIT, reportError } from "./output.js";

type Command = (argv: string[]) => Promise<number>;
/** Each command's module is loaded only when it runs: `flotilla agent` must not load the hub. */
const lazy =
  <M extends Record<string, unknown>>(load: () => Promise<M>, name: keyof M): Command =>
  async (argv) =>
    ((await load())[name] as Command)(argv);
const dataplanes = () => import("./dataplanes-commands.js");
const api = () => import("./api-commands.js");
const domain = () => import("./domain-commands.js");
const server = () => import("./server-commands.js");
const fleet = () => import("./fleet-command.js");
const agent = () => {
  // An agent waits on sockets and child processes; its JavaScript runs a few times a second at
  // most, so it gains nothing from V8's baseline and optimizing compilers, which cost it ~8 MB of
  // its 60 MB idle budget (RSS after loading the agent: 60.2 -> 51.8 MB). Set before its code loads.
  setFlagsFromString("--no-opt");
  setFlagsFromString("--no-sparkplug");
  return import("./agent-command.js");
};
const gateway = () => import("./gateway-command.js");
const gatewayApi = () => import("./gateway-api-commands.js");
const db = () => import("./db-commands.js");

const COMMANDS: Record<string, { run: Command; summary: string }> = {
  up: {
    run: lazy(server, "upCommand"),
    summary: "Run Flotilla in one process on the embedded store",
  },
  hub: { run: lazy(server, "hubCommand"), summary: "Run one hub replica on PostgreSQL" },
  agent: {
    run: lazy(agent, "agentCommand"),
    summary: "Run this server's agent (joins a hub once)",
  },
  "prepare-store": {
    run: lazy(server, "prepareStoreCommand"),
    summary: "Create and migrate an embedded data directory (up does it on a first start)",
  },
  migrate: {
    run: lazy(server, "migrateCommand"),
    summary: "Copy an embedded installation into PostgreSQL",
  },
  setup: { run: lazy(api, "setupCommand"), summary: "Create the first owner with the setup token" },
  login: { run: lazy(api, "loginCommand"), summary: "Sign in and store an API token" },
  logout: { run: lazy(api, "logoutCommand"), summary: "Revoke and forget the stored token" },
  whoami: { run: lazy(api, "whoamiCommand"), summary: "Show who you are signed in as" },
  tokens: { run: lazy(api, "tokensCommand"), summary: "Create, list and revoke API tokens" },
  orgs: { run: lazy(api, "orgsCommand"), summary: "List, create and rename organizations" },
  members: { run: lazy(api, "membersCommand"), summary: "Manage the members of your organization" },
  audit: { run: lazy(api, "auditCommand"), summary: "Read your organization's audit log" },
  projects: {
    run: lazy(domain, "projectsCommand"),
    summary: "Create, list, rename and delete projects",
  },
  envs: { run: lazy(domain, "envsCommand"), summary: "Manage a project's environments" },
  services: {
    run: lazy(domain, "servicesCommand"),
    summary: "Create, list, inspect, change and delete services",
  },
  config: {
    run: lazy(domain, "configCommand"),
    summary: "Variables and sealed secrets of a service or environment",
  },
  deploy: {
    run: lazy(domain, "deployCommand"),
    summary: "Deploy a service with its current spec and config",
  },
  deployments: {
    run: lazy(domain, "deploymentsCommand"),
    summary: "A service's deployment history",
  },
  rollback: {
    run: lazy(domain, "rollbackCommand"),
    summary: "Roll a service back to an earlier deployment",
  },
  events: {
    run: lazy(domain, "eventsCommand"),
    summary: "Domain events, recent or live (--follow)",
  },
  run: {
    run: lazy(domain, "runCommand"),
    summary: "Run a one-off command in a service's context (a job)",
  },
  logs: {
    run: lazy(domain, "logsCommand"),
    summary: "A service's output, from its agent (--follow)",
  },
  webhooks: {
    run: lazy(() => import("./events-commands.js"), "webhooksCommand"),
    summary: "Webhook endpoints for deployment and database events, and their deliveries",
  },
  servers: {
    run: lazy(domain, "serversCommand"),
    summary: "Enrol servers, list them and their dispatches",
  },
  gateway: {
    run: lazy(gateway, "gatewayCommand"),
    summary: "Run an edge proxy for a registered gateway",
  },
  apis: {
    run: lazy(gatewayApi, "apisCommand"),
    summary: "APIs (REST, LLM provider, LLM proxy), consumer keys, deployments",
  },
  gateways: {
    run: lazy(gatewayApi, "gatewaysCommand"),
    summary: "Register gateways (token shown once), list and remove them",
  },
  fleet: {
    run: lazy(fleet, "fleetCommand"),
    summary: "Health of every agent, probed by the hub (status)",
  },
  dataplanes: {
    run: lazy(dataplanes, "dataplanesCommand"),
    summary: "List, inspect and create data planes",
  },
  links: {
    run: lazy(dataplanes, "linksCommand"),
    summary: "A data plane's private links: list, add, update, remove",
  },
  db: {
    run: lazy(db, "dbCommand"),
    summary: "Managed databases: create, connection info, backups, restore, schedules",
  },
};

function usage(): string {
  const lines = [
    "usage: flotilla <command> [options]   (flotilla <command> --help for its options)",
    "",
    "Commands:",
  ];
  for (const [name, c] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(14)} ${c.summary}`);
  return lines.join("\n");
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(`${usage()}\n`);
    return name ? EXIT.ok : EXIT.usage;
  }
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(`error: unknown command ${name}\n${usage()}\n`);
    return EXIT.usage;
  }
  try {
    return await command.run(rest);
  } catch (err) {
    return reportError(err, rest.includes("--json"));
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // A server command has shut down cleanly; should a stray handle (a keep-alive socket, a
    // timer of a dependency) still hold the event loop, exit anyway rather than hang a restart.
    setTimeout(() => process.exit(code), 2000).unref();
  },
  (err) => {
    process.stderr.write(`fatal: ${(err as Error).stack ?? err}\n`);
    process.exitCode = EXIT.failure;
  },
);
