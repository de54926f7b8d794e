// CLI commands over APIs and gateways: `flotilla apis ...` and `flotilla gateways ...`.
import { type DescMessage, type MessageShape, toJson } from "@bufbuild/protobuf";
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import {
  ApiDeploymentSchema,
  ApiKind,
  ApiSchema,
  ApiService,
  GatewaySchema,
  GatewayService,
  ServiceDomainSchema,
} from "../gen/flotilla/v1/apis_pb.js";
import { FlotillaError } from "../shared/index.js";
import { CONNECTION, when } from "./client.js";
import { loadCredentials } from "./credentials.js";
import {
  help,
  type OptionSpecs,
  type Parsed,
  parseOptions,
  readOptionFile,
  stringOption,
} from "./options.js";
import { printJson, printTable } from "./output.js";

const usage = (message: string) => new FlotillaError("config.invalid", message);
const json = <D extends DescMessage>(schema: D, message: MessageShape<D>) =>
  toJson(schema, message);

function clients(values: Parsed["values"]): {
  apis: Client<typeof ApiService>;
  gateways: Client<typeof GatewayService>;
} {
  const stored = loadCredentials();
  const hub = (stringOption(values, "hub") ?? stored?.hub ?? "http://127.0.0.1:8080").replace(
    /\/+$/,
    "",
  );
  const bearer =
    stringOption(values, "token") ?? (stored && stored.hub === hub ? stored.token : undefined);
  const auth: Interceptor = (next) => async (req) => {
    if (bearer) req.header.set("authorization", `Bearer ${bearer}`);
    return next(req);
  };
  const transport = createConnectTransport({
    baseUrl: hub,
    httpVersion: "1.1",
    interceptors: [auth],
    defaultTimeoutMs: 30_000,
  });
  return {
    apis: createClient(ApiService, transport),
    gateways: createClient(GatewayService, transport),
  };
}

const KINDS: Record<string, ApiKind> = {
  rest: ApiKind.REST_API,
  "llm-provider": ApiKind.LLM_PROVIDER,
  "llm-proxy": ApiKind.LLM_PROXY,
};
const KIND_NAMES: Record<number, string> = {
  [ApiKind.REST_API]: "RestApi",
  [ApiKind.LLM_PROVIDER]: "LlmProvider",
  [ApiKind.LLM_PROXY]: "LlmProxy",
};

export async function apisCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    kind: { type: "string", description: "create: rest, llm-provider or llm-proxy" },
    definition: {
      type: "string",
      description: "create: the definition as JSON, or @FILE to read it from a file",
    },
    "credential-file": {
      type: "string",
      description:
        "create (llm-provider): a file holding the upstream API key (never a flag value)",
    },
    provider: { type: "string", description: "create (llm-proxy): the LlmProvider's name or id" },
    gateway: { type: "string", description: "deploy, undeploy, deployments: a gateway name or id" },
  };
  const { values, positionals } = parseOptions(argv, specs);
  const [sub = "list", arg, extra] = positionals;
  if (values.help)
    return help(
      "flotilla apis [list] | create NAME --kind rest|llm-provider|llm-proxy --definition JSON|@FILE [--credential-file F] [--provider P]\n  | get API | delete API | deploy API --gateway G | undeploy API --gateway G | deployments [API] [--gateway G]\n  | add-key API KEYNAME | remove-key API KEY_ID",
      specs,
    );
  const api = clients(values);
  const asJson = Boolean(values.json);
  if (sub === "list") {
    const r = await api.apis.listApis({});
    if (asJson) printJson(r.apis.map((a) => json(ApiSchema, a)));
    else
      printTable(
        r.apis.map((a) => ({
          name: a.name,
          kind: KIND_NAMES[a.kind] ?? "",
          keys: a.consumerKeys.length ? String(a.consumerKeys.length) : "",
          id: a.id,
        })),
        ["name", "kind", "keys", "id"],
      );
    return 0;
  }
  if (sub === "deployments") {
    const gateway = stringOption(values, "gateway");
    const r = await api.apis.listApiDeployments({
      ...(arg ? { api: arg } : {}),
      ...(gateway ? { gateway } : {}),
    });
    if (asJson) printJson(r.deployments.map((d) => json(ApiDeploymentSchema, d)));
    else
      printTable(
        r.deployments.map((d) => ({
          api: d.apiName,
          gateway: d.gatewayId,
          state: d.state,
          deployedAt: when(d.deployedAt),
          observed: d.observedStatus,
          reason: d.observedReason,
          deployment: d.deploymentId,
        })),
        ["api", "gateway", "state", "deployedAt", "observed", "reason", "deployment"],
      );
    return 0;
  }
  if (!arg) throw usage(`apis ${sub} needs ${sub === "create" ? "a NAME" : "an API name or id"}`);
  if (sub === "create") {
    const kind = KINDS[stringOption(values, "kind") ?? ""];
    if (!kind) throw usage("--kind must be rest, llm-provider or llm-proxy");
    let definition = stringOption(values, "definition");
    if (!definition) throw usage("--definition is required (JSON, or @FILE)");
    if (definition.startsWith("@"))
      definition = readOptionFile("--definition", definition.slice(1));
    const credentialFile = stringOption(values, "credential-file");
    const credential = credentialFile
      ? readOptionFile("--credential-file", credentialFile).trim()
      : "";
    const provider = stringOption(values, "provider") ?? "";
    const r = await api.apis.createApi({
      name: arg,
      kind,
      definitionJson: definition,
      credential,
      provider,
    });
    if (asJson) printJson(json(ApiSchema, r.api!));
    else process.stdout.write(`API ${r.api!.name} (${KIND_NAMES[kind]}) created: ${r.api!.id}\n`);
    return 0;
  }
  if (sub === "get") {
    printJson(json(ApiSchema, (await api.apis.getApi({ api: arg })).api!));
    return 0;
  }
  if (sub === "delete") {
    await api.apis.deleteApi({ api: arg });
    if (asJson) printJson({ deleted: arg });
    else process.stdout.write(`API ${arg} deleted.\n`);
    return 0;
  }
  if (sub === "deploy" || sub === "undeploy") {
    const gateway = stringOption(values, "gateway");
    if (!gateway) throw usage(`apis ${sub} needs --gateway`);
    const r =
      sub === "deploy"
        ? await api.apis.deployApi({ api: arg, gateway })
        : await api.apis.undeployApi({ api: arg, gateway });
    if (asJson) printJson(json(ApiDeploymentSchema, r.deployment!));
    else
      process.stdout.write(
        `${arg} ${r.deployment!.state} on ${gateway} at ${when(r.deployment!.deployedAt)} (deployment ${r.deployment!.deploymentId})\n`,
      );
    return 0;
  }
  if (sub === "add-key") {
    if (!extra) throw usage("apis add-key needs API and a KEYNAME");
    const r = await api.apis.createConsumerKey({ api: arg, name: extra });
    if (asJson) printJson({ id: r.consumerKey!.id, name: r.consumerKey!.name, key: r.key });
    else
      process.stdout.write(
        `Consumer key ${r.consumerKey!.name} (${r.consumerKey!.id}); shown once, keep it now:\n\n  ${r.key}\n`,
      );
    return 0;
  }
  if (sub === "remove-key") {
    if (!extra) throw usage("apis remove-key needs API and a KEY_ID");
    await api.apis.deleteConsumerKey({ api: arg, consumerKeyId: extra });
    if (asJson) printJson({ removed: extra });
    else process.stdout.write(`Consumer key ${extra} removed.\n`);
    return 0;
  }
  throw usage(`unknown apis command ${sub}; see flotilla apis --help`);
}

export async function gatewaysCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    "data-plane": {
      type: "string",
      description: "create: a data plane name or id (default: default)",
    },
  };
  const { values, positionals } = parseOptions(argv, specs);
  const [sub = "list", arg, hostname] = positionals;
  if (values.help)
    return help(
      "flotilla gateways [list] | create NAME [--data-plane P] | get GATEWAY | remove GATEWAY",
      specs,
    );
  const api = clients(values);
  const asJson = Boolean(values.json);
  if (sub === "list") {
    const r = await api.gateways.listGateways({});
    if (asJson) printJson(r.gateways.map((g) => json(GatewaySchema, g)));
    else
      printTable(
        r.gateways.map((g) => ({
          name: g.name,
          lastSeen: when(g.lastSeenAt),
          dataPlane: g.dataPlaneId,
          id: g.id,
        })),
        ["name", "lastSeen", "dataPlane", "id"],
      );
    return 0;
  }
  if (!arg) throw usage(`gateways ${sub} needs ${sub === "create" ? "a NAME" : "a GATEWAY"}`);
  if (sub === "create") {
    const r = await api.gateways.createGateway({
      name: arg,
      dataPlane: stringOption(values, "data-plane") ?? "",
    });
    if (asJson)
      printJson({
        ...(json(GatewaySchema, r.gateway!) as object),
        token: r.token,
        command: r.command,
      });
    else
      process.stdout.write(
        `Gateway ${r.gateway!.name} registered. Its token is shown once; run this where it should serve:\n\n  ${r.command}\n`,
      );
    return 0;
  }
  if (sub === "get") {
    printJson(json(GatewaySchema, (await api.gateways.getGateway({ gateway: arg })).gateway!));
    return 0;
  }
  if (sub === "remove") {
    await api.gateways.deleteGateway({ gateway: arg });
    if (asJson) printJson({ removed: arg });
    else process.stdout.write(`Gateway ${arg} removed; its token no longer works.\n`);
    return 0;
  }
  if (sub === "domains") {
    const r = await api.gateways.listServiceDomains({ serviceId: arg });
    if (asJson) printJson(r.domains.map((d) => json(ServiceDomainSchema, d)));
    else
      printTable(
        r.domains.map((d) => ({ hostname: d.hostname, added: when(d.createdAt) })),
        ["hostname", "added"],
      );
    return 0;
  }
  if (sub === "add-domain" || sub === "remove-domain") {
    if (!hostname) throw usage(`gateways ${sub} needs SERVICE_ID and HOSTNAME`);
    if (sub === "add-domain") {
      const r = await api.gateways.addServiceDomain({ serviceId: arg, hostname });
      if (asJson) printJson(json(ServiceDomainSchema, r.domain!));
      else
        process.stdout.write(
          `${r.domain!.hostname} now routes to the service on its data plane's gateways (while it is PUBLIC).\n`,
        );
    } else {
      await api.gateways.removeServiceDomain({ serviceId: arg, hostname });
      if (asJson) printJson({ removed: hostname });
      else process.stdout.write(`${hostname} removed.\n`);
    }
    return 0;
  }
  throw usage(`unknown gateways command ${sub}; see flotilla gateways --help`);
}
