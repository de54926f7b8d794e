// CLI commands over data planes and their private links: `flotilla dataplanes ...`, `flotilla links ...`.
import type { JsonObject } from "@bufbuild/protobuf";
import { toJson } from "@bufbuild/protobuf";
import {
  type DataPlane,
  DataPlaneSchema,
  type PrivateLink,
  PrivateLinkSchema,
} from "../gen/flotilla/v1/dataplanes_pb.js";
import { FlotillaError } from "../shared/index.js";
import { CONNECTION, connect, when } from "./client.js";
import { help, type OptionSpecs, parseOptions, readOptionFile, stringOption } from "./options.js";
import { printJson, printTable } from "./output.js";

const usage = (message: string) => new FlotillaError("config.invalid", message);

const planeRow = (p: DataPlane) => ({
  name: p.name,
  region: p.region,
  provisioner: p.provisioner,
  servers: p.servers.map((srv) => srv.name).join(","),
  converged:
    p.convergence && p.convergence.requested > 0n
      ? `${p.convergence.converged}/${p.convergence.requested}`
      : "",
  error: p.convergence?.lastError ?? "",
  id: p.id,
});

const linkRow = (l: PrivateLink) => ({
  provider: l.provider,
  identity: l.serviceIdentity,
  generation: String(l.generation),
  status: l.status,
  detail: l.error || (l.details ? JSON.stringify(l.details) : ""),
  observed: when(l.observedAt),
  id: l.id,
});

export async function dataplanesCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    region: { type: "string", description: "create: where it is (free text, e.g. us-east-1)" },
    provisioner: {
      type: "string",
      description:
        'create: which configured provisioner converges its private links (default "local")',
    },
  };
  const { values, positionals } = parseOptions(argv, specs);
  const [sub = "list", arg] = positionals;
  if (values.help)
    return help(
      "flotilla dataplanes [list] | get PLANE | create NAME [--region R] [--provisioner P]",
      specs,
    );
  const api = connect(values);
  const asJson = Boolean(values.json);
  if (sub === "list") {
    const r = await api.dataPlanes.listDataPlanes({});
    if (asJson) printJson(r.dataPlanes.map((p) => toJson(DataPlaneSchema, p)));
    else
      printTable(r.dataPlanes.map(planeRow), [
        "name",
        "region",
        "provisioner",
        "servers",
        "converged",
        "error",
        "id",
      ]);
    return 0;
  }
  if (!arg) throw usage(`dataplanes ${sub} needs ${sub === "create" ? "a NAME" : "a PLANE"}`);
  if (sub === "get") {
    const r = await api.dataPlanes.getDataPlane({ dataPlane: arg });
    printJson(toJson(DataPlaneSchema, r.dataPlane!));
    return 0;
  }
  if (sub === "create") {
    const r = await api.dataPlanes.createDataPlane({
      name: arg,
      region: stringOption(values, "region") ?? "",
      provisioner: stringOption(values, "provisioner") ?? "",
    });
    if (asJson) printJson(toJson(DataPlaneSchema, r.dataPlane!));
    else
      process.stdout.write(
        `Data plane ${r.dataPlane!.name} created (provisioner ${r.dataPlane!.provisioner}).\n`,
      );
    return 0;
  }
  throw usage(`unknown subcommand dataplanes ${sub}; see flotilla dataplanes --help`);
}

/** The link config from --config JSON or --config-file FILE ("-" reads stdin). */
function configOption(values: Record<string, string | boolean | undefined>): JsonObject {
  const inline = stringOption(values, "config");
  const file = stringOption(values, "config-file");
  if (inline && file) throw usage("give --config or --config-file, not both");
  if (!inline && !file)
    throw usage(
      'a link needs its config: --config \'{"region": "us-east-1", ...}\' or --config-file FILE',
    );
  const text = inline ?? readOptionFile("--config-file", file!);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw usage(`the config is not JSON: ${(err as Error).message}`);
  }
  if (!parsed || typeof parsed !== "object" || Array.isArray(parsed))
    throw usage("the config must be a JSON object");
  return parsed as JsonObject;
}

export async function linksCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    "data-plane": {
      type: "string",
      description: 'The data plane (name or id; default "default")',
    },
    provider: { type: "string", description: "add, update: aws, azure or gcp" },
    config: { type: "string", description: "add, update: the link's config as a JSON object" },
    "config-file": {
      type: "string",
      description: "add, update: read the config from a file (- for stdin)",
    },
    generation: {
      type: "string",
      description: "update: apply only if the link is still at this generation",
    },
  };
  const { values, positionals } = parseOptions(argv, specs);
  const [sub = "list", arg] = positionals;
  if (values.help)
    return help(
      "flotilla links [list] [--data-plane PLANE] | add --provider aws|azure|gcp --config JSON | update ID --config JSON [--provider P] [--generation N] | remove ID\n" +
        'Config shapes: aws {"region", "az_ids": [...], "service_name", "service_region"?}; azure {"service_name", "location", "dns_name"?, "resource_type"?};\n' +
        '  gcp {"service_attachment", "region", "dns_zone_name", "dns_record_names": [...], "all_ports"?}',
      specs,
    );
  const api = connect(values);
  const asJson = Boolean(values.json);
  const dataPlane = stringOption(values, "data-plane") ?? "default";
  const printLink = (l: PrivateLink, verb: string) => {
    if (asJson) printJson(toJson(PrivateLinkSchema, l));
    else
      process.stdout.write(
        `Link ${l.id} ${verb} (${l.provider} ${l.serviceIdentity}, generation ${l.generation}, ${l.status}).\n`,
      );
  };
  if (sub === "list") {
    const r = await api.dataPlanes.listPrivateLinks({ dataPlane });
    if (asJson) printJson(r.privateLinks.map((l) => toJson(PrivateLinkSchema, l)));
    else
      printTable(r.privateLinks.map(linkRow), [
        "provider",
        "identity",
        "generation",
        "status",
        "detail",
        "observed",
        "id",
      ]);
    return 0;
  }
  if (sub === "add") {
    const provider = stringOption(values, "provider");
    if (!provider) throw usage("links add needs --provider aws, azure or gcp");
    const r = await api.dataPlanes.addPrivateLink({
      dataPlane,
      provider,
      config: configOption(values),
    });
    printLink(r.privateLink!, "added");
    return 0;
  }
  if (!arg) throw usage(`links ${sub} needs the link's ID (see flotilla links list)`);
  if (sub === "update") {
    const raw = stringOption(values, "generation");
    const generation = raw === undefined ? 0 : Number(raw);
    if (!Number.isInteger(generation) || generation < 0)
      throw usage("--generation must be a whole number");
    const r = await api.dataPlanes.updatePrivateLink({
      dataPlane,
      id: arg,
      config: configOption(values),
      provider: stringOption(values, "provider") ?? "",
      expectedGeneration: BigInt(generation),
    });
    printLink(r.privateLink!, "updated");
    return 0;
  }
  if (sub === "remove") {
    await api.dataPlanes.removePrivateLink({ dataPlane, id: arg });
    if (asJson) printJson({ removed: arg });
    else process.stdout.write(`Link ${arg} removed; the next converge tears its endpoint down.\n`);
    return 0;
  }
  throw usage(`unknown subcommand links ${sub}; see flotilla links --help`);
}
