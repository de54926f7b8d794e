// CLI commands over the core domain: projects, envs, services, config, deploy, deployments, rollback, events.
import { type DescMessage, type MessageShape, toJson } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import { ConfigKind, ConfigScope, type ConfigTarget } from "../gen/flotilla/v1/config_pb.js";
import {
  type Environment,
  EnvironmentSchema,
  type Project,
  ProjectSchema,
} from "../gen/flotilla/v1/projects_pb.js";
import { AgentAction, DispatchSchema, ServerSchema } from "../gen/flotilla/v1/servers_pb.js";
import {
  type Deployment,
  DeploymentSchema,
  Driver,
  type Event,
  EventSchema,
  RestartPolicy,
  type Service,
  ServiceSchema,
  type ServiceSpec,
  Visibility,
} from "../gen/flotilla/v1/services_pb.js";
import { FlotillaError } from "../shared/index.js";
import { type Api, CONNECTION, connect, when } from "./client.js";
import {
  help,
  intOption,
  type OptionSpecs,
  parseOptions,
  readOptionFile,
  stopSignal,
  stringOption,
} from "./options.js";
import { printJson, printTable } from "./output.js";
import { rotateKeyCommand } from "./server-commands.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const usage = (message: string) => new FlotillaError("config.invalid", message);

/** Protobuf JSON exactly as the API answers it (defaults omitted), so scripts can use either. */
const json = <D extends DescMessage>(schema: D, message: MessageShape<D>) =>
  toJson(schema, message);

/** An environment from its id or PROJECT/ENV (slugs or ids). */
export async function resolveEnvironment(api: Api, ref: string | undefined): Promise<Environment> {
  if (!ref) throw usage("--env is required: PROJECT/ENV (e.g. demo/production) or an id");
  if (UUID.test(ref)) {
    return { id: ref } as Environment;
  }
  const [project, env, ...rest] = ref.split("/");
  if (!project || !env || rest.length > 0)
    throw usage(`--env ${ref}: expected PROJECT/ENV (e.g. demo/production) or an id`);
  const r = await api.projects.getProject({ project });
  const found = r.environments.find((e) => e.slug === env || e.id === env);
  if (!found) {
    const names = r.environments.map((e) => e.slug).join(", ");
    throw new FlotillaError(
      "resource.not_found",
      `project ${project} has no environment ${env} (it has: ${names})`,
    );
  }
  return found;
}

/** A service from its id, PROJECT/ENV/SERVICE, or PROJECT/SERVICE (in production). */
export async function resolveService(api: Api, ref: string | undefined): Promise<Service> {
  if (!ref) throw usage("name a service: PROJECT/ENV/SERVICE, PROJECT/SERVICE or an id");
  if (UUID.test(ref)) return (await api.services.getService({ serviceId: ref })).service!;
  const parts = ref.split("/");
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !p))
    throw usage(`${ref}: expected PROJECT/ENV/SERVICE, PROJECT/SERVICE or an id`);
  const [project, envSlug, slug] = parts.length === 3 ? parts : [parts[0], "production", parts[1]];
  const env = await resolveEnvironment(api, `${project}/${envSlug}`);
  const list = await api.services.listServices({ project: project!, environmentId: env.id });
  const found = list.services.find((s) => s.slug === slug);
  if (!found)
    throw new FlotillaError("resource.not_found", `no service ${slug} in ${project}/${envSlug}`);
  return found;
}

const projectRow = (p: Project) => ({
  slug: p.slug,
  name: p.name,
  id: p.id,
  created: when(p.createdAt),
});
const envRow = (e: Environment) => ({
  slug: e.slug,
  name: e.name,
  id: e.id,
  created: when(e.createdAt),
});
const serviceRow = (s: Service) => ({
  slug: s.slug,
  name: s.name,
  visibility: s.visibility === Visibility.PUBLIC ? "public" : "private",
  status: s.observed?.status ?? "",
  endpoint: s.observed?.endpoint ?? "",
  id: s.id,
});
const deploymentRow = (d: Deployment) => ({
  "#": String(d.number),
  reason: d.reason,
  status: d.status,
  desired: d.desired ? "*" : "",
  config: d.configVersion,
  by: d.createdBy,
  created: when(d.createdAt),
  id: d.id,
});

function printList<T>(
  asJson: boolean,
  items: T[],
  toJsonValue: (t: T) => unknown,
  toRow: (t: T) => Record<string, string>,
  columns: string[],
) {
  if (asJson) printJson(items.map(toJsonValue));
  else printTable(items.map(toRow), columns);
}

/** Options of the commands that create (with a slug) and delete (with force) named things. */
const NAMED_OPTIONS: OptionSpecs = {
  ...CONNECTION,
  slug: { type: "string", description: "Slug for create (default: from the name)" },
  force: { type: "boolean", description: "delete: also delete running services" },
};

export async function projectsCommand(argv: string[]): Promise<number> {
  const specs = NAMED_OPTIONS;
  const { values, positionals } = parseOptions(argv, specs);
  const [sub = "list", arg, arg2] = positionals;
  if (values.help)
    return help(
      "flotilla projects [list] | create NAME [--slug S] | get PROJECT | rename PROJECT NAME | delete PROJECT [--force]",
      specs,
    );
  const api = connect(values);
  const asJson = Boolean(values.json);
  if (sub === "list") {
    const r = await api.projects.listProjects({});
    printList(asJson, r.projects, (p) => json(ProjectSchema, p), projectRow, [
      "slug",
      "name",
      "id",
      "created",
    ]);
    return 0;
  }
  if (!arg) throw usage(`projects ${sub} needs ${sub === "create" ? "a NAME" : "a PROJECT"}`);
  if (sub === "create") {
    const r = await api.projects.createProject({ name: arg, slug: stringOption(values, "slug") });
    if (asJson)
      printJson({
        project: json(ProjectSchema, r.project!),
        production: json(EnvironmentSchema, r.production!),
      });
    else
      process.stdout.write(
        `Project ${r.project?.slug} created with environment production (${r.production?.id}).\n`,
      );
    return 0;
  }
  if (sub === "get") {
    const r = await api.projects.getProject({ project: arg });
    if (asJson)
      printJson({
        project: json(ProjectSchema, r.project!),
        environments: r.environments.map((e) => json(EnvironmentSchema, e)),
      });
    else {
      process.stdout.write(`${r.project?.name} (${r.project?.slug}) ${r.project?.id}\n\n`);
      printTable(r.environments.map(envRow), ["slug", "name", "id", "created"]);
    }
    return 0;
  }
  if (sub === "rename") {
    if (!arg2) throw usage("projects rename needs PROJECT and NAME");
    const r = await api.projects.renameProject({ project: arg, name: arg2 });
    if (asJson) printJson(json(ProjectSchema, r.project!));
    else process.stdout.write(`Project ${r.project?.slug} renamed to ${r.project?.name}.\n`);
    return 0;
  }
  if (sub === "delete") {
    await api.projects.deleteProject({ project: arg, force: Boolean(values.force) });
    if (asJson) printJson({ deleted: arg });
    else process.stdout.write(`Project ${arg} deleted.\n`);
    return 0;
  }
  throw usage(`unknown projects subcommand ${sub}; use list, create, get, rename or delete`);
}

export async function envsCommand(argv: string[]): Promise<number> {
  const specs = NAMED_OPTIONS;
  const { values, positionals } = parseOptions(argv, specs);
  const [sub = "list", arg, arg2] = positionals;
  if (values.help)
    return help(
      "flotilla envs list PROJECT | create PROJECT NAME [--slug S] | rename PROJECT/ENV NAME | delete PROJECT/ENV [--force]",
      specs,
    );
  const api = connect(values);
  const asJson = Boolean(values.json);
  if (!arg)
    throw usage(
      `envs ${sub} needs ${sub === "rename" || sub === "delete" ? "PROJECT/ENV" : "a PROJECT"}`,
    );
  if (sub === "list") {
    const r = await api.projects.listEnvironments({ project: arg });
    printList(asJson, r.environments, (e) => json(EnvironmentSchema, e), envRow, [
      "slug",
      "name",
      "id",
      "created",
    ]);
    return 0;
  }
  if (sub === "create") {
    if (!arg2) throw usage("envs create needs PROJECT and NAME");
    const r = await api.projects.createEnvironment({
      project: arg,
      name: arg2,
      slug: stringOption(values, "slug"),
    });
    if (asJson) printJson(json(EnvironmentSchema, r.environment!));
    else process.stdout.write(`Environment ${arg}/${r.environment?.slug} created.\n`);
    return 0;
  }
  const env = await resolveEnvironment(api, arg);
  if (sub === "rename") {
    if (!arg2) throw usage("envs rename needs PROJECT/ENV and NAME");
    const r = await api.projects.renameEnvironment({ environmentId: env.id, name: arg2 });
    if (asJson) printJson(json(EnvironmentSchema, r.environment!));
    else process.stdout.write(`Environment ${arg} renamed to ${r.environment?.name}.\n`);
    return 0;
  }
  if (sub === "delete") {
    await api.projects.deleteEnvironment({ environmentId: env.id, force: Boolean(values.force) });
    if (asJson) printJson({ deleted: env.id });
    else process.stdout.write(`Environment ${arg} deleted.\n`);
    return 0;
  }
  throw usage(`unknown envs subcommand ${sub}; use list, create, rename or delete`);
}

const SPEC_OPTIONS: OptionSpecs = {
  image: {
    type: "string",
    description: "Docker image (docker driver); else the exec driver runs the command after --",
  },
  port: {
    type: "string",
    description:
      "The service listens on a port (0: none). exec: the agent picks a free port and passes it as PORT, which the command must listen on; --image: the container's port",
  },
  workdir: { type: "string", description: "exec: absolute working directory" },
  health: { type: "string", description: "Health check: tcp, or http:/path" },
  restart: { type: "string", description: "Restart policy: always (default), on-failure or never" },
  volume: { type: "string", description: "Volumes, comma-separated NAME:/mount/path" },
  public: { type: "boolean", description: "Give the service a public route (default: private)" },
  server: { type: "string", description: "Server id to place the service on" },
};

const RESTART: Record<string, RestartPolicy> = {
  always: RestartPolicy.ALWAYS,
  "on-failure": RestartPolicy.ON_FAILURE,
  never: RestartPolicy.NEVER,
};

function specFrom(values: Record<string, string | boolean | undefined>, command: string[]) {
  const port = values.port === undefined ? 0 : Number(values.port);
  if (!Number.isInteger(port)) throw usage("--port must be a whole number");
  const health = stringOption(values, "health") ?? "";
  const [healthType, healthPath = ""] = health.startsWith("http:")
    ? ["http", health.slice(5)]
    : [health, ""];
  const restart = stringOption(values, "restart");
  const restartPolicy = restart === undefined ? RestartPolicy.UNSPECIFIED : RESTART[restart];
  if (restartPolicy === undefined) throw usage("--restart must be always, on-failure or never");
  const volumes = (stringOption(values, "volume") ?? "")
    .split(",")
    .filter(Boolean)
    .map((v) => {
      const i = v.indexOf(":");
      if (i <= 0) throw usage(`--volume ${v}: expected NAME:/mount/path`);
      return { name: v.slice(0, i), mountPath: v.slice(i + 1) };
    });
  const image = stringOption(values, "image");
  if (!image && command.length === 0)
    throw usage("give the command to run after --, e.g. -- node server.js (or --image for docker)");
  return {
    driver: image ? Driver.DOCKER : Driver.EXEC,
    exec: image
      ? undefined
      : {
          command: command[0]!,
          args: command.slice(1),
          workingDirectory: stringOption(values, "workdir") ?? "",
          port,
        },
    docker: image ? { image, command, port } : undefined,
    healthCheck: { type: healthType, path: healthPath },
    restartPolicy,
    volumes,
  } as ServiceSpec;
}

/** Splits `NAME --opt x -- cmd args` so the workload's own flags never reach our parser. */
function splitCommand(argv: string[]): [string[], string[]] {
  const i = argv.indexOf("--");
  return i < 0 ? [argv, []] : [argv.slice(0, i), argv.slice(i + 1)];
}

export async function servicesCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    ...SPEC_OPTIONS,
    env: { type: "string", description: "PROJECT/ENV (create, list) or an environment id" },
    project: { type: "string", description: "list: only this project" },
    slug: { type: "string", description: "create: slug (default: from the name)" },
    name: { type: "string", description: "update: new display name" },
    deploy: { type: "boolean", description: "create: deploy at once, in the same transaction" },
    "no-wait": {
      type: "boolean",
      description: "start, stop, restart, delete: return once the intent is recorded",
    },
    timeout: {
      type: "string",
      description:
        "start, stop, restart, delete: the hub gives up waiting after this many seconds without progress (default 120)",
    },
    "purge-data": {
      type: "boolean",
      description: "delete: also remove its volumes (a database's data) and backups on its server",
    },
  };
  const [own, command] = splitCommand(argv);
  const { values, positionals } = parseOptions(own, specs);
  const [sub = "list", arg] = positionals;
  if (values.help)
    return help(
      [
        "flotilla services [list] [--project P] [--env P/E]",
        "  | create NAME --env PROJECT/ENV [--port N] [--health tcp|http:/path] [--public] [--deploy] -- COMMAND [ARGS...]",
        "  | create NAME --env PROJECT/ENV --image IMAGE [--port N] [-- COMMAND...]",
        "  | get SERVICE | update SERVICE [spec options] [-- COMMAND...]",
        "  | start|stop|restart SERVICE [--no-wait] [--timeout S] | delete SERVICE [--purge-data] [--no-wait] [--timeout S]",
        "start, stop, restart and delete wait on the hub until the agent has done it (exit 0) or failed (exit 1).",
        "SERVICE is PROJECT/ENV/SERVICE, PROJECT/SERVICE (production) or an id.",
      ].join("\n"),
      specs,
    );
  const api = connect(values);
  const asJson = Boolean(values.json);
  const columns = ["slug", "name", "visibility", "status", "endpoint", "id"];
  if (sub === "list") {
    const env = values.env ? await resolveEnvironment(api, stringOption(values, "env")) : null;
    const r = await api.services.listServices({
      project: stringOption(values, "project") ?? "",
      environmentId: env?.id ?? "",
    });
    printList(asJson, r.services, (s) => json(ServiceSchema, s), serviceRow, columns);
    return 0;
  }
  if (!arg) throw usage(`services ${sub} needs ${sub === "create" ? "a NAME" : "a SERVICE"}`);
  if (sub === "create") {
    const env = await resolveEnvironment(api, stringOption(values, "env"));
    const r = await api.services.createService({
      environmentId: env.id,
      name: arg,
      slug: stringOption(values, "slug") ?? "",
      visibility: values.public ? Visibility.PUBLIC : Visibility.PRIVATE,
      serverId: stringOption(values, "server") ?? "",
      spec: specFrom(values, command),
      deployNow: Boolean(values.deploy),
    });
    if (asJson)
      printJson({
        service: json(ServiceSchema, r.service!),
        deployment: r.deployment ? json(DeploymentSchema, r.deployment) : null,
      });
    else
      process.stdout.write(
        `Service ${r.service?.slug} created (${r.service?.id})${r.deployment ? `; deployment #${r.deployment.number} is desired` : `; deploy it with: flotilla deploy ${r.service?.id}`}.\n`,
      );
    return 0;
  }
  const service = await resolveService(api, arg);
  if (sub === "get") {
    const r = await api.services.getService({ serviceId: service.id });
    if (asJson)
      printJson({
        service: json(ServiceSchema, r.service!),
        configChanged: r.configChanged,
        effectiveConfigVersion: r.effectiveConfigVersion,
      });
    else {
      const s = r.service!;
      const spec = s.spec;
      const run = spec?.docker
        ? `docker ${spec.docker.image} ${spec.docker.command.join(" ")}`
        : `exec ${spec?.exec?.command} ${spec?.exec?.args.join(" ")}`;
      process.stdout.write(
        [
          `${s.name} (${s.slug}) ${s.id}`,
          `  visibility  ${serviceRow(s).visibility}`,
          `  runs        ${run.trim()}`,
          `  desired     ${s.desiredDeploymentId || "(never deployed)"}`,
          `  observed    ${s.observed?.status}${s.observed?.reason ? ` (${s.observed.reason})` : ""}${s.observed?.endpoint ? ` at ${s.observed.endpoint}` : ""}`,
          `  config      ${r.effectiveConfigVersion}${r.configChanged ? " (changed since the desired deployment: run flotilla deploy to apply it)" : ""}`,
          "",
        ].join("\n"),
      );
    }
    return 0;
  }
  if (sub === "update") {
    const current = service.spec!;
    // Only what was given changes: every other field of the spec keeps its current value.
    // (--public and --server are the service's, not its spec's.)
    const given = Object.fromEntries(
      Object.entries(values).filter(
        ([k, v]) => v !== undefined && k in SPEC_OPTIONS && k !== "public" && k !== "server",
      ),
    );
    const hasSpecChange = command.length > 0 || Object.keys(given).length > 0;
    const health = current.healthCheck?.type
      ? `${current.healthCheck.type}${current.healthCheck.type === "http" ? `:${current.healthCheck.path}` : ""}`
      : undefined;
    const spec = hasSpecChange
      ? specFrom(
          {
            port: String(current.exec?.port ?? current.docker?.port ?? 0),
            image: current.docker?.image,
            workdir: current.exec?.workingDirectory,
            health,
            restart: Object.entries(RESTART).find(([, p]) => p === current.restartPolicy)?.[0],
            volume: current.volumes.map((v) => `${v.name}:${v.mountPath}`).join(",") || undefined,
            ...given,
          },
          command.length > 0
            ? command
            : current.exec
              ? [current.exec.command, ...current.exec.args]
              : (current.docker?.command ?? []),
        )
      : current;
    const r = await api.services.updateService({
      serviceId: service.id,
      name: stringOption(values, "name") ?? service.name,
      visibility:
        values.public === undefined
          ? service.visibility
          : values.public
            ? Visibility.PUBLIC
            : Visibility.PRIVATE,
      serverId: stringOption(values, "server") ?? service.serverId,
      spec,
    });
    if (asJson) printJson(json(ServiceSchema, r.service!));
    else process.stdout.write(`Service ${r.service?.slug} updated; deploy to apply the change.\n`);
    return 0;
  }
  if (sub === "start" || sub === "stop" || sub === "restart" || sub === "delete") {
    // The hub waits (server-side, whichever replica holds the agent): one behaviour for the CLI
    // and the API. A server-side wait may outlast the client's default deadline: none here.
    const waitSeconds = service.serverId && !values["no-wait"] ? waitOption(values) : 0;
    const options = waitSeconds ? { timeoutMs: 0 } : {};
    const purgeData = Boolean(values["purge-data"]);
    const request = { serviceId: service.id, waitSeconds };
    let dispatch: { id: string; state: string; error: string } | undefined;
    let shown: Service | undefined;
    if (sub === "delete") {
      dispatch = (await api.services.deleteService({ ...request, purgeData }, options)).dispatch;
    } else {
      const call = {
        start: api.services.startService,
        stop: api.services.stopService,
        restart: api.services.restartService,
      }[sub];
      const r = await call(request, options);
      dispatch = r.dispatch;
      shown = r.service;
    }
    if (asJson)
      printJson({
        ...(shown
          ? { service: json(ServiceSchema, shown) }
          : { deleted: service.id, purgedData: purgeData }),
        ...(dispatch ? { dispatch } : {}),
      });
    if (dispatch?.state === "failed") {
      if (!asJson)
        process.stderr.write(
          `error: the agent could not ${sub} ${service.slug}: ${dispatch.error || "no reason given"} (dispatch ${dispatch.id})\n`,
        );
      return 1;
    }
    if (!asJson) {
      const done = { start: "started", stop: "stopped", restart: "restarted", delete: "deleted" }[
        sub
      ];
      process.stdout.write(
        sub === "delete"
          ? `Service ${service.slug} deleted${dispatch ? "; its agent removed the instance" : ""}${purgeData ? ", with its data" : "; its volumes stay on its server (--purge-data removes them)"}.\n`
          : dispatch
            ? `${service.slug} ${done}.\n`
            : `Asked the agent to ${sub} ${service.slug}.\n`,
      );
    }
    return 0;
  }
  throw usage(
    `unknown services subcommand ${sub}; use list, create, get, update, start, stop, restart or delete`,
  );
}

async function configTarget(
  api: Api,
  values: Record<string, string | boolean | undefined>,
): Promise<ConfigTarget> {
  const service = stringOption(values, "service");
  const env = stringOption(values, "env");
  if (Boolean(service) === Boolean(env))
    throw usage("name exactly one of --service SERVICE or --env PROJECT/ENV");
  return service
    ? ({ scope: ConfigScope.SERVICE, id: (await resolveService(api, service)).id } as ConfigTarget)
    : ({
        scope: ConfigScope.ENVIRONMENT,
        id: (await resolveEnvironment(api, env)).id,
      } as ConfigTarget);
}

export async function configCommand(argv: string[]): Promise<number> {
  // Key rotation works on the store itself, not through the API.
  if (argv[0] === "rotate-key") return rotateKeyCommand(argv.slice(1));
  const specs: OptionSpecs = {
    ...CONNECTION,
    service: { type: "string", description: "The service whose config to use" },
    env: { type: "string", description: "The environment (PROJECT/ENV) whose config to use" },
    secret: { type: "boolean", description: "set, import: store the values as sealed secrets" },
    effective: {
      type: "boolean",
      description: "list --service: the environment's entries overlaid by the service's",
    },
  };
  const { values, positionals } = parseOptions(argv, specs);
  const [sub = "list", ...args] = positionals;
  if (values.help)
    return help(
      [
        "flotilla config list (--service S | --env P/E) [--effective]",
        "  | set KEY=VALUE [KEY=VALUE...] [--secret] (--service S | --env P/E)",
        "  | get KEY (--service S | --env P/E)      (a secret's value needs config.reveal; audited)",
        "  | unset KEY (--service S | --env P/E)",
        "  | import FILE.env [--secret] (--service S | --env P/E)",
        "  | rotate-key ...                           (re-seal every secret: flotilla config rotate-key --help)",
      ].join("\n"),
      specs,
    );
  const api = connect(values);
  const asJson = Boolean(values.json);
  if (sub === "list") {
    const r = values.effective
      ? await api.config.getEffectiveConfig({
          serviceId: (await resolveService(api, stringOption(values, "service"))).id,
        })
      : await api.config.listConfig({ target: await configTarget(api, values) });
    const rows = r.entries.map((e) => ({
      key: e.key,
      kind: e.kind === ConfigKind.SECRET ? "secret" : "variable",
      value: e.kind === ConfigKind.SECRET ? "(sealed)" : e.value,
      from: e.scope === ConfigScope.SERVICE ? "service" : "environment",
      updated: when(e.updatedAt),
    }));
    if (asJson)
      printJson({
        version: r.version,
        entries: rows.map((e) => ({ ...e, value: e.kind === "secret" ? null : e.value })),
      });
    else {
      printTable(rows, ["key", "kind", "value", "from", "updated"]);
      process.stdout.write(`version ${r.version}\n`);
    }
    return 0;
  }
  const target = await configTarget(api, values);
  if (sub === "set") {
    if (args.length === 0) throw usage("config set needs KEY=VALUE");
    let version = "";
    for (const pair of args) {
      const eq = pair.indexOf("=");
      if (eq <= 0) throw usage(`${pair}: expected KEY=VALUE`);
      const r = await api.config.setConfig({
        target,
        key: pair.slice(0, eq),
        value: pair.slice(eq + 1),
        kind: values.secret ? ConfigKind.SECRET : ConfigKind.VARIABLE,
      });
      version = r.version;
    }
    const keys = args.map((a) => a.slice(0, a.indexOf("=")));
    if (asJson) printJson({ keys, version });
    else
      process.stdout.write(
        `Set ${keys.join(", ")}${values.secret ? " (sealed)" : ""}; config version ${version}. Deploy to apply.\n`,
      );
    return 0;
  }
  const [key] = args;
  if (sub === "get") {
    if (!key) throw usage("config get needs a KEY");
    const list = await api.config.listConfig({ target });
    const entry = list.entries.find((e) => e.key === key);
    if (!entry) throw new FlotillaError("resource.not_found", `no config key ${key} here`);
    const value =
      entry.kind === ConfigKind.SECRET
        ? (await api.config.revealSecret({ target, key })).value
        : entry.value;
    if (asJson)
      printJson({ key, kind: entry.kind === ConfigKind.SECRET ? "secret" : "variable", value });
    else process.stdout.write(`${value}\n`);
    return 0;
  }
  if (sub === "unset") {
    if (!key) throw usage("config unset needs a KEY");
    const r = await api.config.unsetConfig({ target, key });
    if (asJson) printJson({ unset: key, version: r.version });
    else process.stdout.write(`Unset ${key}; config version ${r.version}. Deploy to apply.\n`);
    return 0;
  }
  if (sub === "import") {
    if (!key) throw usage("config import needs a FILE");
    const text = readOptionFile("config import", key);
    const r = await api.config.importConfig({
      target,
      dotenv: text,
      asSecrets: Boolean(values.secret),
    });
    if (asJson) printJson({ keys: r.keys, version: r.version });
    else
      process.stdout.write(
        `Imported ${r.keys.length} entries (${r.keys.join(", ")}); config version ${r.version}.\n`,
      );
    return 0;
  }
  throw usage(`unknown config subcommand ${sub}; use list, set, get, unset or import`);
}

function printDeployment(asJson: boolean, d: Deployment, service: string) {
  if (asJson) printJson(json(DeploymentSchema, d));
  else
    process.stdout.write(
      `Deployment #${d.number} of ${service} (${d.reason}) is now the desired one: ${d.id}, config ${d.configVersion}, status ${d.status}.\n`,
    );
}

/** --timeout as the hub's rolling wait: whole seconds from 1 to 3600, default 120. */
function waitOption(values: Record<string, string | boolean | undefined>): number {
  const timeoutS = values.timeout === undefined ? 120 : Number(values.timeout);
  if (!Number.isInteger(timeoutS) || timeoutS < 1 || timeoutS > 3600)
    throw usage("--timeout must be whole seconds from 1 to 3600");
  return timeoutS;
}

/** The catalogue code of an error from the hub, if it has one. */
const errorCode = (err: unknown) => ConnectError.from(err).metadata.get("flotilla-error-code");

const DEPLOY_OPTIONS: OptionSpecs = {
  ...CONNECTION,
  "no-wait": {
    type: "boolean",
    description: "Return once the deployment is recorded, without waiting for the agent",
  },
  timeout: {
    type: "string",
    description:
      "The hub gives up waiting after this many seconds without progress (default 120, at most 3600)",
  },
};

/**
 * Follows the service's status until the deployment runs or fails, printing each step; the
 * timeout is rolling (each step resets it). The deployment row is the truth: it is read again at
 * every step and at the end, so a missed event only delays the answer.
 */
async function waitForOutcome(
  api: Api,
  service: Service,
  deploymentId: string,
  afterEventId: string,
  values: Record<string, string | boolean | undefined>,
): Promise<number> {
  const asJson = Boolean(values.json);
  const timeoutS = values.timeout === undefined ? 120 : Number(values.timeout);
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) throw usage("--timeout must be seconds > 0");
  const abort = new AbortController();
  let timer = setTimeout(() => abort.abort(), timeoutS * 1000);
  const progress = () => {
    clearTimeout(timer);
    timer = setTimeout(() => abort.abort(), timeoutS * 1000);
  };
  const settled = async () => {
    const d = (await api.services.getDeployment({ deploymentId })).deployment!;
    return d.status === "running" || d.status === "failed" || d.status === "stopped" ? d : null;
  };
  let last = "";
  const show = (status: string, detail: string) => {
    if (status === last) return;
    last = status;
    progress();
    if (!asJson)
      process.stderr.write(`  ${service.slug}: ${status}${detail ? ` ${detail}` : ""}\n`);
  };
  try {
    let done = await settled();
    if (!done) {
      const stream = api.services.watchEvents(
        { serviceId: service.id, sinceId: afterEventId },
        { signal: AbortSignal.any([abort.signal, stopSignal()]), timeoutMs: 0 },
      );
      for await (const m of stream) {
        const e = m.event;
        if (e?.type !== "service.status_changed") continue;
        const payload = JSON.parse(e.payloadJson || "{}") as Record<string, string | null>;
        if (payload.deployment_id !== deploymentId) continue;
        show(String(payload.status), payload.reason ? `(${payload.reason})` : "");
        done = await settled();
        if (done) break;
      }
    }
    done ??= await settled();
    if (!done) throw new Error("stream ended");
    if (asJson) printJson(json(DeploymentSchema, done));
    else {
      process.stdout.write(
        done.status === "running"
          ? `Deployment #${done.number} of ${service.slug} is running${done.endpoint ? ` at ${done.endpoint}` : ""}.\n`
          : `Deployment #${done.number} of ${service.slug} ${done.status === "failed" ? "failed" : "is stopped"}: ${done.statusReason || "no reason given"}.\n`,
      );
      if (done.status === "failed") await printOutputTail(api, service);
    }
    return done.status === "running" ? 0 : 1;
  } catch (err) {
    const d = (await api.services.getDeployment({ deploymentId })).deployment!;
    if (!abort.signal.aborted) throw err;
    process.stderr.write(
      `error: deployment #${d.number} of ${service.slug} is still ${d.status} after ${timeoutS} s without progress; it goes on (flotilla services get ${service.id}) [deploy.timeout]\n`,
    );
    return 1;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Prints the service's status changes from the event stream while the hub waits for the
 * deployment (display only: the answer comes from the hub's wait and the deployment row).
 */
function showProgress(
  api: Api,
  service: Service,
  afterEventId: string,
  show: (status: string, detail: string) => void,
): () => void {
  const abort = new AbortController();
  void (async () => {
    try {
      const stream = api.services.watchEvents(
        { serviceId: service.id, sinceId: afterEventId },
        { signal: AbortSignal.any([abort.signal, stopSignal()]), timeoutMs: 0 },
      );
      for await (const m of stream) {
        const e = m.event;
        if (e?.type !== "service.status_changed") continue;
        const payload = JSON.parse(e.payloadJson || "{}") as Record<string, string | null>;
        show(String(payload.status), payload.reason ? `(${payload.reason})` : "");
      }
    } catch {
      // The display ends with the wait; a broken stream only loses the progress lines.
    }
  })();
  return () => abort.abort();
}

async function deployAndWait(
  argv: string[],
  usageText: string,
  call: (
    api: Api,
    service: Service,
    positionals: string[],
    waitSeconds: number,
  ) => Promise<{
    deployment?: Deployment;
    dispatch?: { id: string; state: string; error: string };
  }>,
): Promise<number> {
  const { values, positionals } = parseOptions(argv, DEPLOY_OPTIONS);
  if (values.help) return help(usageText, DEPLOY_OPTIONS);
  const api = connect(values);
  const service = await resolveService(api, positionals[0]);
  if (values["no-wait"] || !service.serverId) {
    const deployment = (await call(api, service, positionals, 0)).deployment!;
    printDeployment(Boolean(values.json), deployment, service.slug);
    if (!service.serverId && !values.json)
      process.stderr.write(
        `  ${service.slug} is not placed on a server: nothing will run it yet\n`,
      );
    return 0;
  }
  const waitSeconds = waitOption(values);
  const asJson = Boolean(values.json);
  // The newest event before the intent: status changes are shown from there on.
  const before = await api.services.listEvents({ serviceId: service.id, limit: 1 });
  const afterEventId = before.events.at(-1)?.id ?? "00000000-0000-0000-0000-000000000000";
  if (!asJson) process.stderr.write(`Deploying ${service.slug}: waiting for the agent\n`);
  let last = "";
  const show = (status: string, detail: string) => {
    if (status === last || asJson) return;
    last = status;
    process.stderr.write(`  ${service.slug}: ${status}${detail ? ` ${detail}` : ""}\n`);
  };
  const stopShowing = showProgress(api, service, afterEventId, show);
  let deployment: Deployment;
  let dispatch: { id: string; state: string; error: string } | undefined;
  try {
    // The hub waits (whichever replica holds the agent), with a rolling timeout.
    const r = await call(api, service, positionals, waitSeconds);
    deployment = r.deployment!;
    dispatch = r.dispatch;
  } catch (err) {
    if (errorCode(err) !== "dispatch.timeout") throw err;
    process.stderr.write(
      `error: ${service.slug} saw no progress for ${waitSeconds} s; it goes on (flotilla services get ${service.id}): ${ConnectError.from(err).rawMessage} [deploy.timeout]\n`,
    );
    return 1;
  } finally {
    stopShowing();
  }
  const settled = ["running", "failed", "stopped"].includes(deployment.status);
  if (!settled && dispatch?.state === "failed") {
    // The agent refused it before reporting any status (a spec it cannot run).
    if (asJson) printJson({ deployment: json(DeploymentSchema, deployment), dispatch });
    else
      process.stdout.write(
        `Deployment #${deployment.number} of ${service.slug} failed: ${dispatch.error || "no reason given"}.\n`,
      );
    return 1;
  }
  // The agent finished its part; a status it reports later (a slow first health check) is
  // still followed from the events, as before.
  if (!settled) return waitForOutcome(api, service, deployment.id, afterEventId, values);
  show(deployment.status, deployment.statusReason ? `(${deployment.statusReason})` : "");
  if (asJson) printJson(json(DeploymentSchema, deployment));
  else {
    process.stdout.write(
      deployment.status === "running"
        ? `Deployment #${deployment.number} of ${service.slug} is running${deployment.endpoint ? ` at ${deployment.endpoint}` : ""}.\n`
        : `Deployment #${deployment.number} of ${service.slug} ${deployment.status === "failed" ? "failed" : "is stopped"}: ${deployment.statusReason || "no reason given"}.\n`,
    );
    if (deployment.status === "failed") await printOutputTail(api, service);
  }
  return deployment.status === "running" ? 0 : 1;
}

/**
 * After a failed deployment: the last lines the service printed, for a caller who may read logs.
 * The agent keeps output out of the failure's reason, which every member of the organization
 * sees (viewers included); the output itself needs logs.read.
 */
async function printOutputTail(api: Api, service: { id: string; slug: string }): Promise<void> {
  const lines: string[] = [];
  try {
    for await (const batch of api.services.streamLogs(
      { serviceId: service.id, lines: 10, follow: false },
      { timeoutMs: 10_000 },
    ))
      lines.push(...batch.lines);
  } catch (err) {
    process.stderr.write(
      errorCode(err) === "auth.permission_denied"
        ? `  its output: flotilla logs ${service.id} (needs logs.read)\n`
        : `  its output could not be read now (${ConnectError.from(err).rawMessage}): flotilla logs ${service.id}\n`,
    );
    return;
  }
  if (lines.length === 0) return;
  process.stderr.write(`  the last lines it printed (flotilla logs ${service.id}):\n`);
  for (const line of lines) process.stderr.write(`    ${line}\n`);
}

export function deployCommand(argv: string[]): Promise<number> {
  return deployAndWait(
    argv,
    "flotilla deploy SERVICE [--no-wait] [--timeout S]\n\nA new deployment from the service's spec and current config; waits until it runs (exit 0) or fails (exit 1).",
    async (api, service, _positionals, waitSeconds) =>
      api.services.deploy(
        { serviceId: service.id, waitSeconds },
        waitSeconds ? { timeoutMs: 0 } : {},
      ),
  );
}

export function rollbackCommand(argv: string[]): Promise<number> {
  return deployAndWait(
    argv,
    "flotilla rollback SERVICE [DEPLOYMENT_ID] [--no-wait] [--timeout S]\n\nA new deployment from an earlier one's spec (default: the one before the desired one), with the current config.",
    async (api, service, positionals, waitSeconds) =>
      api.services.rollback(
        { serviceId: service.id, deploymentId: positionals[1] ?? "", waitSeconds },
        waitSeconds ? { timeoutMs: 0 } : {},
      ),
  );
}

export async function deploymentsCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    limit: {
      type: "string",
      description: "list: how many, newest first (default 20, at most 200)",
    },
  };
  const { values, positionals } = parseOptions(argv, specs);
  const [sub = "list", arg] = positionals;
  if (values.help)
    return help("flotilla deployments list SERVICE [--limit N] | get DEPLOYMENT_ID", specs);
  const api = connect(values);
  const asJson = Boolean(values.json);
  if (sub === "list") {
    const service = await resolveService(api, arg);
    const r = await api.services.listDeployments({
      serviceId: service.id,
      limit: intOption(values, "limit", { min: 1, max: 200 }) ?? 0,
    });
    printList(asJson, r.deployments, (d) => json(DeploymentSchema, d), deploymentRow, [
      "#",
      "reason",
      "status",
      "desired",
      "config",
      "by",
      "created",
      "id",
    ]);
    return 0;
  }
  if (sub === "get") {
    if (!arg) throw usage("deployments get needs a DEPLOYMENT_ID");
    const r = await api.services.getDeployment({ deploymentId: arg });
    if (asJson) printJson(json(DeploymentSchema, r.deployment!));
    else printTable([deploymentRow(r.deployment!)], Object.keys(deploymentRow(r.deployment!)));
    return 0;
  }
  throw usage(`unknown deployments subcommand ${sub}; use list or get`);
}

function printEvent(asJson: boolean, e: Event) {
  if (asJson)
    process.stdout.write(
      `${JSON.stringify({ ...(json(EventSchema, e) as object), payload: JSON.parse(e.payloadJson || "{}") })}\n`,
    );
  else
    process.stdout.write(
      `${when(e.occurredAt)}  ${e.type.padEnd(24)} ${e.subjectId}  ${e.payloadJson}\n`,
    );
}

export async function eventsCommand(argv: string[]): Promise<number> {
  if (argv[0] === "quarantine")
    return (await import("./events-commands.js")).quarantineCommand(argv.slice(1));
  const specs: OptionSpecs = {
    ...CONNECTION,
    service: { type: "string", description: "Only events about this service and its deployments" },
    follow: {
      type: "boolean",
      short: "f",
      description: "Keep streaming new events until interrupted",
    },
    limit: {
      type: "string",
      description: "How many recent events first (default 20, at most 500)",
    },
  };
  const { values } = parseOptions(argv, specs);
  if (values.help)
    return help(
      "flotilla events [--service SERVICE] [--follow] [--limit N]\n  | events quarantine [list|replay ID] (see flotilla events quarantine --help)\n\nWith --json, one JSON object per line.",
      specs,
    );
  const api = connect(values);
  const asJson = Boolean(values.json);
  const serviceId = values.service
    ? (await resolveService(api, stringOption(values, "service"))).id
    : "";
  const recent = await api.services.listEvents({
    serviceId,
    limit: intOption(values, "limit", { min: 1, max: 500 }) ?? 20,
  });
  for (const e of recent.events) printEvent(asJson, e);
  if (!values.follow) return 0;
  const stopped = stopSignal();
  // Resume after the last event printed (the nil id: from the start), so an event committed
  // between the listing and the stream, or during a reconnect, is neither lost nor shown twice.
  let cursor = recent.events.at(-1)?.id ?? "00000000-0000-0000-0000-000000000000";
  let backoffMs = 250;
  while (!stopped.aborted) {
    try {
      for await (const m of api.services.watchEvents(
        { serviceId, sinceId: cursor },
        { signal: stopped, timeoutMs: 0 },
      )) {
        backoffMs = 250;
        if (!m.event) continue;
        cursor = m.event.id;
        printEvent(asJson, m.event);
      }
    } catch (err) {
      if (stopped.aborted) break;
      process.stderr.write(`event stream interrupted (${(err as Error).message}); reconnecting\n`);
    }
    if (stopped.aborted) break;
    await new Promise((r) => setTimeout(r, backoffMs));
    backoffMs = Math.min(backoffMs * 2, 10_000);
  }
  return 0;
}

export async function serversCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    ttl: { type: "string", description: "add: join token lifetime in minutes (default 60)" },
    limit: { type: "string", description: "dispatches: how many, newest first (default 50)" },
  };
  const { values, positionals } = parseOptions(argv, specs);
  const [sub = "list", arg] = positionals;
  if (values.help)
    return help(
      "flotilla servers [list] | add NAME [--ttl MINUTES] | get SERVER | remove SERVER | dispatches SERVER [--limit N]\n  | status SERVER | drain SERVER | resume SERVER | reload SERVER",
      specs,
    );
  const api = connect(values);
  const asJson = Boolean(values.json);
  if (sub === "list") {
    const r = await api.servers.listServers({});
    printList(
      asJson,
      r.servers,
      (s) => json(ServerSchema, s),
      (s) => ({
        name: s.name,
        status: s.status,
        heartbeat: when(s.lastHeartbeat),
        agent: s.agentVersion,
        cores: s.cores ? String(s.cores) : "",
        id: s.id,
      }),
      ["name", "status", "heartbeat", "agent", "cores", "id"],
    );
    return 0;
  }
  if (!arg) throw usage(`servers ${sub} needs ${sub === "add" ? "a NAME" : "a SERVER"}`);
  if (sub === "add") {
    const minutes = values.ttl === undefined ? 0 : Number(values.ttl);
    if (!Number.isInteger(minutes) || minutes < 0) throw usage("--ttl must be whole minutes");
    const r = await api.servers.createJoinToken({ name: arg, ttlSeconds: BigInt(minutes * 60) });
    if (asJson) printJson({ token: r.token, expiresAt: when(r.expiresAt), command: r.command });
    else
      process.stdout.write(
        `Run this on the new server before ${when(r.expiresAt)} (the token works once):\n\n  ${r.command}\n`,
      );
    return 0;
  }
  if (sub === "get") {
    const r = await api.servers.getServer({ server: arg });
    printJson(json(ServerSchema, r.server!));
    return 0;
  }
  if (sub === "remove") {
    await api.servers.deleteServer({ server: arg });
    if (asJson) printJson({ removed: arg });
    else process.stdout.write(`Server ${arg} removed; its agent can no longer connect.\n`);
    return 0;
  }
  if (sub === "status") {
    const r = await api.servers.getAgentStatus({ server: arg });
    printJson(JSON.parse(r.statusJson));
    return 0;
  }
  if (sub === "drain" || sub === "resume" || sub === "reload") {
    if (!asJson && sub === "drain")
      process.stderr.write("draining: waiting for the dispatches in flight to finish\n");
    const action = {
      drain: AgentAction.DRAIN,
      resume: AgentAction.RESUME,
      reload: AgentAction.RELOAD,
    }[sub];
    const r = await api.servers.controlAgent({ server: arg, action });
    printJson(JSON.parse(r.resultJson));
    return 0;
  }
  if (sub === "dispatches") {
    const r = await api.servers.listDispatches({
      server: arg,
      limit: intOption(values, "limit", { min: 1, max: 500 }) ?? 0,
    });
    printList(
      asJson,
      r.dispatches,
      (d) => json(DispatchSchema, d),
      (d) => ({
        op: d.op,
        state: d.state,
        attempts: String(d.attempts),
        error: d.error,
        created: when(d.createdAt),
        id: d.id,
      }),
      ["op", "state", "attempts", "error", "created", "id"],
    );
    return 0;
  }
  throw usage(
    `unknown servers subcommand ${sub}; use list, add, get, remove, dispatches, status, drain, resume or reload`,
  );
}

export async function logsCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    follow: {
      type: "boolean",
      short: "f",
      description: "Keep printing new lines until interrupted",
    },
    lines: {
      type: "string",
      short: "n",
      description: "How many of the last lines first (default 100)",
    },
  };
  const { values, positionals } = parseOptions(argv, specs);
  if (values.help)
    return help(
      "flotilla logs SERVICE [--follow] [--lines N]\n\nThe service's output, from the agent that runs it.",
      specs,
    );
  const api = connect(values);
  const service = await resolveService(api, positionals[0]);
  const stopped = stopSignal();
  try {
    for await (const batch of api.services.streamLogs(
      {
        serviceId: service.id,
        lines: intOption(values, "lines", { min: 1, max: 10_000 }) ?? 100,
        follow: Boolean(values.follow),
      },
      { signal: stopped, timeoutMs: values.follow ? 0 : 30_000 },
    )) {
      for (const line of batch.lines)
        process.stdout.write(values.json ? `${JSON.stringify({ line })}\n` : `${line}\n`);
    }
  } catch (err) {
    if (!stopped.aborted) throw err;
  }
  return 0;
}

export async function runCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    timeout: { type: "string", description: "Kill the job after this many seconds (default 600)" },
  };
  const [own, command] = splitCommand(argv);
  const { values, positionals } = parseOptions(own, specs);
  if (values.help)
    return help(
      "flotilla run SERVICE [--timeout S] -- COMMAND [ARGS...]\n\nRuns a one-off command in the service's context (its config, on its server) and prints its output; exits with its exit code.",
      specs,
    );
  if (command.length === 0)
    throw usage("give the command after --, e.g. -- sh -c 'echo $GREETING'");
  const api = connect(values);
  const service = await resolveService(api, positionals[0]);
  const stopped = stopSignal();
  // The hub waits for the outcome (whichever replica holds the agent): the job's own timeout
  // plus two minutes for an agent that is away or busy (a job reports no progress on the way).
  const timeoutS = intOption(values, "timeout", { min: 1, max: 3600 });
  const jobTimeoutS = timeoutS ?? 600;
  let started: Awaited<ReturnType<typeof api.services.runJob>>;
  try {
    started = await api.services.runJob(
      {
        serviceId: service.id,
        command: command[0]!,
        args: command.slice(1),
        timeoutSeconds: timeoutS ?? 0,
        waitSeconds: Math.min(3600, jobTimeoutS + 120),
      },
      { timeoutMs: 0, signal: stopped },
    );
  } catch (err) {
    if (stopped.aborted) return EXIT_INTERRUPTED;
    if (errorCode(err) !== "dispatch.timeout") throw err;
    process.stderr.write(
      `error: ${ConnectError.from(err).rawMessage} (flotilla servers dispatches) [job.timeout]\n`,
    );
    return 1;
  }
  let job = started.job!;
  const waitUntil = Date.now() + (jobTimeoutS + 120) * 1000;
  // The job's row is the truth; a short poll is enough for a one-off command.
  while ((job.state === "pending" || job.state === "in_progress") && !stopped.aborted) {
    if (Date.now() > waitUntil) {
      process.stderr.write(
        `error: job ${job.id} is still ${job.state}; it goes on (flotilla servers dispatches) [job.timeout]\n`,
      );
      return 1;
    }
    await new Promise((r) => setTimeout(r, 200));
    job = (await api.services.getJob({ jobId: job.id })).job!;
  }
  if (values.json) {
    printJson({
      id: job.id,
      state: job.state,
      exitCode: job.exitCode,
      stdout: job.stdout,
      stderr: job.stderr,
      error: job.error,
    });
  } else {
    process.stdout.write(job.stdout);
    process.stderr.write(job.stderr);
    if (job.state === "failed" && job.error)
      process.stderr.write(`error: ${job.error} [job.failed]\n`);
  }
  if (stopped.aborted) return EXIT_INTERRUPTED;
  return job.state === "done" ? 0 : job.exitCode > 0 ? job.exitCode : 1;
}

/** A job left running when the user pressed Ctrl-C: it goes on, on the server. */
const EXIT_INTERRUPTED = 130;
