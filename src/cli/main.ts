#!/usr/bin/env node
// The flotilla command: dispatches to server commands (up, hub) and API commands (login, whoami, ...).
import {
  auditCommand,
  loginCommand,
  logoutCommand,
  membersCommand,
  orgsCommand,
  setupCommand,
  tokensCommand,
  whoamiCommand,
} from "./api-commands.js";
import {
  configCommand,
  deployCommand,
  deploymentsCommand,
  envsCommand,
  eventsCommand,
  logsCommand,
  projectsCommand,
  rollbackCommand,
  serversCommand,
  servicesCommand,
} from "./domain-commands.js";
import { EXIT, reportError } from "./output.js";
import { agentCommand, hubCommand, upCommand } from "./server-commands.js";

const COMMANDS: Record<string, { run: (argv: string[]) => Promise<number>; summary: string }> = {
  up: { run: upCommand, summary: "Run Flotilla in one process on the embedded store" },
  hub: { run: hubCommand, summary: "Run one hub replica on PostgreSQL" },
  agent: { run: agentCommand, summary: "Run this server's agent (joins a hub once)" },
  setup: { run: setupCommand, summary: "Create the first owner with the setup token" },
  login: { run: loginCommand, summary: "Sign in and store an API token" },
  logout: { run: logoutCommand, summary: "Revoke and forget the stored token" },
  whoami: { run: whoamiCommand, summary: "Show who you are signed in as" },
  tokens: { run: tokensCommand, summary: "Create, list and revoke API tokens" },
  orgs: { run: orgsCommand, summary: "List, create and rename organizations" },
  members: { run: membersCommand, summary: "Manage the members of your organization" },
  audit: { run: auditCommand, summary: "Read your organization's audit log" },
  projects: { run: projectsCommand, summary: "Create, list, rename and delete projects" },
  envs: { run: envsCommand, summary: "Manage a project's environments" },
  services: { run: servicesCommand, summary: "Create, list, inspect, change and delete services" },
  config: {
    run: configCommand,
    summary: "Variables and sealed secrets of a service or environment",
  },
  deploy: { run: deployCommand, summary: "Deploy a service with its current spec and config" },
  deployments: { run: deploymentsCommand, summary: "A service's deployment history" },
  rollback: { run: rollbackCommand, summary: "Roll a service back to an earlier deployment" },
  events: { run: eventsCommand, summary: "Domain events, recent or live (--follow)" },
  logs: { run: logsCommand, summary: "A service's output, from its agent (--follow)" },
  servers: { run: serversCommand, summary: "Enrol servers, list them and their dispatches" },
};

function usage(): string {
  const lines = [
    "usage: flotilla <command> [options]   (flotilla <command> --help for its options)",
    "",
    "Commands:",
  ];
  for (const [name, c] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(12)} ${c.summary}`);
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
  },
  (err) => {
    process.stderr.write(`fatal: ${(err as Error).stack ?? err}\n`);
    process.exitCode = EXIT.failure;
  },
);
