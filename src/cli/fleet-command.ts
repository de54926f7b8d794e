// `flotilla fleet status`: every agent's and gateway's health as the hub probes it.
import { toJson } from "@bufbuild/protobuf";
import { GetFleetStatusResponseSchema } from "../gen/flotilla/v1/fleet_pb.js";
import { FlotillaError } from "../shared/index.js";
import { CONNECTION, connect, when } from "./client.js";
import { help, type OptionSpecs, parseOptions, stringOption } from "./options.js";
import { printJson, printTable } from "./output.js";

const SPECS: OptionSpecs = {
  ...CONNECTION,
  kind: { type: "string", description: "Only members of this kind (agent or gateway)" },
  refresh: {
    type: "boolean",
    description: "Probe again instead of using answers under 5 s old (at most once a second)",
  },
};

export async function fleetCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseOptions(argv, SPECS);
  const [sub = "status"] = positionals;
  if (values.help)
    return help(
      "flotilla fleet [status] [--kind agent|gateway] [--refresh]\n\nEvery agent and gateway of your organization, probed by the hub: an agent over its control channel, at its advertised admin endpoint, or from its heartbeat; a gateway by a ping over its event stream, or from its last request. Exits 1 when any member is unreachable.",
      SPECS,
    );
  if (sub !== "status")
    throw new FlotillaError("config.invalid", `unknown fleet subcommand ${sub}; use status`);
  const api = connect(values);
  const kind = stringOption(values, "kind");
  const r = await api.fleet.getFleetStatus({
    kinds: kind ? [kind] : [],
    refresh: Boolean(values.refresh),
  });
  if (values.json) printJson(toJson(GetFleetStatusResponseSchema, r));
  else {
    printTable(
      r.members.map((m) => ({
        kind: m.kind,
        name: m.name,
        health: m.health,
        probe: m.probe,
        ms: m.latencyMs ? m.latencyMs.toFixed(1) : "",
        version: m.version,
        instances: String(m.instances),
        heartbeat: when(m.lastHeartbeat),
        detail: m.detail,
      })),
      ["kind", "name", "health", "probe", "ms", "version", "instances", "heartbeat", "detail"],
    );
    process.stderr.write(
      `${r.members.length} member(s), probed ${when(r.probedAt)}${r.cached ? " (cached)" : ""}\n`,
    );
  }
  // A script's health check: a member that does not answer (unreachable) and one that is not
  // connected at all (offline, a gateway that never connected included) both fail it.
  return r.members.some((m) => m.health === "unreachable" || m.health === "offline") ? 1 : 0;
}
