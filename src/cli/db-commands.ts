// CLI commands for managed databases: db create, connect-info, backup, backups, restore, schedule.
import { createInterface } from "node:readline";
import { toJson } from "@bufbuild/protobuf";
import {
  type Backup,
  BackupScheduleSchema,
  BackupSchema,
  type GetConnectionInfoResponse,
} from "../gen/flotilla/v1/databases_pb.js";
import { Driver, ServiceSchema } from "../gen/flotilla/v1/services_pb.js";
import { FlotillaError } from "../shared/index.js";
import { type Api, CONNECTION, connect, when } from "./client.js";
import { resolveEnvironment, resolveService } from "./domain-commands.js";
import { help, intOption, type OptionSpecs, parseOptions, stringOption } from "./options.js";
import { EXIT, printJson, printTable } from "./output.js";

const usage = (message: string) => new FlotillaError("config.invalid", message);

const SPECS: OptionSpecs = {
  ...CONNECTION,
  env: { type: "string", description: "create: PROJECT/ENV (or an environment id)" },
  template: { type: "string", description: "create: catalogue template (default postgres16)" },
  slug: { type: "string", description: "create: slug (default: from the name)" },
  server: { type: "string", description: "create: server id (default: the only server)" },
  driver: { type: "string", description: "create: exec or docker (default: docker if available)" },
  "no-deploy": { type: "boolean", description: "create: record it without deploying" },
  "no-wait": {
    type: "boolean",
    description: "create, backup, restore: return without waiting for the agent",
  },
  timeout: {
    type: "string",
    description: "Seconds to wait for the agent (create: rolling; default 120, backup 3600)",
  },
  limit: { type: "string", description: "backups: how many, newest first (default 50)" },
  retention: { type: "string", description: "schedule: scheduled backups kept (default 7)" },
  off: { type: "boolean", description: "schedule: remove the schedule" },
  yes: { type: "boolean", short: "y", description: "restore: do not ask for confirmation" },
};

const USAGE = [
  "flotilla db create NAME --env PROJECT/ENV [--template postgres16] [--server ID] [--driver exec|docker] [--no-deploy] [--no-wait]",
  "  | connect-info SERVICE          host, port, user, database and URI (the password needs config.reveal)",
  "  | backup SERVICE [--no-wait]    pg_dump (custom format) on its server; waits for the result",
  "  | backups SERVICE [--limit N]",
  "  | restore SERVICE BACKUP_ID [--yes]   replaces the database's contents with the backup's",
  "  | schedule SERVICE [CRON] [--retention N] [--off]   e.g. '0 3 * * *' (UTC); without CRON shows it",
  "SERVICE is PROJECT/ENV/SERVICE, PROJECT/SERVICE (production) or an id.",
  "Lifecycle: flotilla services start|stop|restart SERVICE; flotilla services delete SERVICE [--purge-data].",
].join("\n");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function seconds(values: Record<string, string | boolean | undefined>, fallback: number): number {
  const t = values.timeout === undefined ? fallback : Number(values.timeout);
  if (!Number.isFinite(t) || t <= 0) throw usage("--timeout must be seconds > 0");
  return t;
}

/** Polls the deployment until it runs or fails; the timeout resets whenever its status changes. */
async function waitForDeployment(
  api: Api,
  deploymentId: string,
  serverId: string,
  timeoutS: number,
  quiet: boolean,
): Promise<{ status: string; statusReason: string }> {
  let last = "";
  let deadline = Date.now() + timeoutS * 1000;
  for (let poll = 1; ; poll++) {
    const d = (await api.services.getDeployment({ deploymentId })).deployment!;
    if (d.status !== last) {
      last = d.status;
      deadline = Date.now() + timeoutS * 1000;
      if (!quiet)
        process.stderr.write(`  ${d.status}${d.statusReason ? ` (${d.statusReason})` : ""}\n`);
    }
    if (d.status === "running" || d.status === "failed" || d.status === "stopped") return d;
    if (Date.now() > deadline) return d;
    // Once a second: an agent that refuses the deployment outright (no such driver on the
    // server) fails its dispatch without reporting any status; waiting out the timeout for a
    // status would hide the reason.
    if (poll % 10 === 0) {
      const { dispatches } = await api.servers.listDispatches({ server: serverId, limit: 50 });
      const refused = dispatches.find(
        (x) => x.deploymentId === deploymentId && x.state === "failed",
      );
      if (refused) return { status: "failed", statusReason: refused.error };
    }
    await sleep(100);
  }
}

function infoJson(i: GetConnectionInfoResponse) {
  return {
    host: i.host,
    port: i.port,
    user: i.user,
    database: i.database,
    password: i.passwordIncluded ? i.password : null,
    uri: i.uri,
    status: i.status,
  };
}

function printInfo(i: GetConnectionInfoResponse) {
  process.stdout.write(
    [
      `host      ${i.host || "(not yet reported)"}`,
      `port      ${i.port || ""}`,
      `user      ${i.user}`,
      `database  ${i.database}`,
      `password  ${i.passwordIncluded ? i.password : "(hidden: needs config.reveal)"}`,
      `status    ${i.status}`,
      `uri       ${i.uri || "(known once the agent reports the endpoint)"}`,
      "",
    ].join("\n"),
  );
}

const backupRow = (b: Backup) => ({
  id: b.id,
  state: b.state,
  origin: b.origin,
  size: b.sizeBytes ? `${b.sizeBytes}` : "",
  sha256: b.sha256 ? b.sha256.slice(0, 12) : "",
  created: when(b.createdAt),
  error: b.error,
});

async function confirmRestore(slug: string, backupId: string): Promise<boolean> {
  if (!process.stdin.isTTY)
    throw usage(
      "restore replaces the database's contents: confirm with --yes (standard input is not a terminal to ask on)",
    );
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  const answer = await new Promise<string>((resolve) =>
    rl.question(
      `Restore backup ${backupId} into ${slug}? Its current contents are replaced. Type the database's name (${slug}) to confirm: `,
      resolve,
    ),
  );
  rl.close();
  return answer.trim() === slug;
}

export async function dbCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseOptions(argv, SPECS);
  const [sub, arg, arg2] = positionals;
  if (values.help || !sub) {
    help(USAGE, SPECS);
    return sub || values.help ? EXIT.ok : EXIT.usage;
  }
  const api = connect(values);
  const asJson = Boolean(values.json);
  if (!arg) throw usage(`db ${sub} needs ${sub === "create" ? "a NAME" : "a SERVICE"}`);

  if (sub === "create") {
    const env = await resolveEnvironment(api, stringOption(values, "env"));
    const driverName = stringOption(values, "driver");
    const driver =
      driverName === undefined
        ? Driver.UNSPECIFIED
        : driverName === "exec"
          ? Driver.EXEC
          : driverName === "docker"
            ? Driver.DOCKER
            : undefined;
    if (driver === undefined) throw usage("--driver must be exec or docker");
    const r = await api.databases.createDatabaseService({
      environmentId: env.id,
      name: arg,
      slug: stringOption(values, "slug") ?? "",
      templateId: stringOption(values, "template") ?? "postgres16",
      serverId: stringOption(values, "server") ?? "",
      deployNow: !values["no-deploy"],
      driver,
    });
    const s = r.service!;
    if (!asJson)
      process.stderr.write(
        `Database ${s.slug} created (${s.id}), template ${s.templateId}, private${r.deploymentId ? "" : `; deploy it with: flotilla deploy ${s.id}`}.\n`,
      );
    let status = "";
    if (r.deploymentId && s.serverId && !values["no-wait"]) {
      const d = await waitForDeployment(
        api,
        r.deploymentId,
        s.serverId,
        seconds(values, 120),
        asJson,
      );
      status = d.status;
      if (d.status !== "running") {
        process.stderr.write(
          `error: the database's first deployment is ${d.status}: ${d.statusReason || "no progress before the timeout"} [database.not_running]\n`,
        );
        if (asJson) printJson({ service: toJson(ServiceSchema, s), deploymentId: r.deploymentId });
        return EXIT.failure;
      }
    }
    const info = await api.databases.getConnectionInfo({ serviceId: s.id });
    if (asJson)
      printJson({
        service: toJson(ServiceSchema, s),
        deploymentId: r.deploymentId,
        connection: infoJson(info),
      });
    else {
      if (status === "running") process.stderr.write(`Database ${s.slug} is running.\n`);
      process.stdout.write(
        `${info.uri || "(the URI is known once the agent reports the endpoint: flotilla db connect-info)"}\n`,
      );
    }
    return EXIT.ok;
  }

  const service = await resolveService(api, arg);
  if (sub === "connect-info") {
    const info = await api.databases.getConnectionInfo({ serviceId: service.id });
    if (asJson) printJson(infoJson(info));
    else printInfo(info);
    return EXIT.ok;
  }
  if (sub === "backup") {
    let b = (await api.databases.createBackup({ serviceId: service.id })).backup!;
    if (!values["no-wait"]) {
      const deadline = Date.now() + seconds(values, 3600) * 1000;
      while ((b.state === "pending" || b.state === "running") && Date.now() < deadline) {
        await sleep(100);
        b = (await api.databases.getBackup({ backupId: b.id })).backup!;
      }
    }
    if (asJson) printJson(toJson(BackupSchema, b));
    else if (b.state === "done")
      process.stdout.write(
        `Backup ${b.id} of ${service.slug}: ${b.sizeBytes} bytes, sha256 ${b.sha256}, in ${b.durationMs} ms (${b.file} on its server).\n`,
      );
    else if (b.state === "failed")
      process.stderr.write(
        `error: backup ${b.id} of ${service.slug} failed: ${b.error} [backup.failed]\n`,
      );
    else process.stdout.write(`Backup ${b.id} of ${service.slug} is ${b.state}.\n`);
    return b.state === "failed" ? EXIT.failure : EXIT.ok;
  }
  if (sub === "backups") {
    const r = await api.databases.listBackups({
      serviceId: service.id,
      limit: intOption(values, "limit", { min: 1, max: 500 }) ?? 0,
    });
    if (asJson) printJson(r.backups.map((b) => toJson(BackupSchema, b)));
    else
      printTable(r.backups.map(backupRow), [
        "id",
        "state",
        "origin",
        "size",
        "sha256",
        "created",
        "error",
      ]);
    return EXIT.ok;
  }
  if (sub === "restore") {
    if (!arg2)
      throw usage(
        "db restore needs SERVICE and BACKUP_ID (flotilla db backups SERVICE lists them)",
      );
    if (!values.yes && !(await confirmRestore(service.slug, arg2))) {
      process.stderr.write("Not restored: the confirmation did not match.\n");
      return EXIT.failure;
    }
    const { jobId } = await api.databases.restoreBackup({
      serviceId: service.id,
      backupId: arg2,
      confirm: true,
    });
    let job = (await api.services.getJob({ jobId })).job!;
    if (!values["no-wait"]) {
      const deadline = Date.now() + seconds(values, 3600) * 1000;
      while ((job.state === "pending" || job.state === "in_progress") && Date.now() < deadline) {
        await sleep(100);
        job = (await api.services.getJob({ jobId })).job!;
      }
    }
    if (asJson) printJson({ jobId, state: job.state, error: job.error });
    else if (job.state === "done")
      process.stdout.write(`Restored backup ${arg2} into ${service.slug}.\n`);
    else if (job.state === "failed")
      process.stderr.write(
        `error: restore of ${arg2} into ${service.slug} failed: ${job.error} [restore.failed]\n`,
      );
    else process.stdout.write(`Restore job ${jobId} is ${job.state}.\n`);
    return job.state === "failed" ? EXIT.failure : EXIT.ok;
  }
  if (sub === "schedule") {
    const cron = values.off ? "" : arg2;
    const r =
      cron === undefined
        ? await api.databases.getBackupSchedule({ serviceId: service.id })
        : await api.databases.setBackupSchedule({
            serviceId: service.id,
            cron,
            retention: intOption(values, "retention", { min: 1, max: 1000 }) ?? 0,
          });
    const s = r.schedule;
    if (asJson) printJson(s ? toJson(BackupScheduleSchema, s) : null);
    else if (!s) process.stdout.write(`${service.slug} has no backup schedule.\n`);
    else
      process.stdout.write(
        `${service.slug}: backups at "${s.cron}" (UTC), keeping ${s.retention}; next ${when(s.nextRunAt)}${s.lastRunAt ? `, last ${when(s.lastRunAt)}` : ""}.\n`,
      );
    return EXIT.ok;
  }
  throw usage(
    `unknown db subcommand ${sub}; use create, connect-info, backup, backups, restore or schedule`,
  );
}
