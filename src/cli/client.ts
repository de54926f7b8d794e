// The CLI's connection to a hub: shared options, Connect clients with the stored token, helpers.
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ConfigService } from "../gen/flotilla/v1/config_pb.js";
import { DatabasesService } from "../gen/flotilla/v1/databases_pb.js";
import { DataPlaneService } from "../gen/flotilla/v1/dataplanes_pb.js";
import { EventsService, WebhooksService } from "../gen/flotilla/v1/events_pb.js";
import { FleetService } from "../gen/flotilla/v1/fleet_pb.js";
import { IdentityService, OrganizationService } from "../gen/flotilla/v1/identity_pb.js";
import { ProjectService } from "../gen/flotilla/v1/projects_pb.js";
import { ServerService } from "../gen/flotilla/v1/servers_pb.js";
import { ServicesService } from "../gen/flotilla/v1/services_pb.js";
import { FlotillaError } from "../shared/index.js";
import { loadCredentials } from "./credentials.js";
import { type OptionSpecs, type Parsed, stringOption } from "./options.js";

export const CONNECTION: OptionSpecs = {
  hub: {
    type: "string",
    env: "FLOTILLA_HUB",
    description: "Hub URL (default: the one you logged in to, else http://127.0.0.1:8080)",
  },
  token: {
    type: "string",
    env: "FLOTILLA_TOKEN",
    description: "API or session token (default: the stored one)",
  },
  json: { type: "boolean", description: "Print JSON" },
  help: { type: "boolean", short: "h", description: "Show this help" },
};

export interface Api {
  identity: Client<typeof IdentityService>;
  orgs: Client<typeof OrganizationService>;
  projects: Client<typeof ProjectService>;
  services: Client<typeof ServicesService>;
  config: Client<typeof ConfigService>;
  servers: Client<typeof ServerService>;
  fleet: Client<typeof FleetService>;
  events: Client<typeof EventsService>;
  webhooks: Client<typeof WebhooksService>;
  dataPlanes: Client<typeof DataPlaneService>;
  databases: Client<typeof DatabasesService>;
  hub: string;
}

export function connect(values: Parsed["values"], token?: string): Api {
  const stored = loadCredentials();
  const hub = (stringOption(values, "hub") ?? stored?.hub ?? "http://127.0.0.1:8080").replace(
    /\/+$/,
    "",
  );
  if (!URL.canParse(hub) || !/^https?:$/.test(new URL(hub).protocol))
    throw new FlotillaError(
      "config.invalid",
      `--hub must be an http:// or https:// URL, got ${JSON.stringify(hub)}`,
    );
  const bearer =
    token ??
    stringOption(values, "token") ??
    (stored && stored.hub === hub ? stored.token : undefined);
  const auth: Interceptor = (next) => async (req) => {
    if (bearer) req.header.set("authorization", `Bearer ${bearer}`);
    return next(req);
  };
  // Every unary call has a deadline: a hung hub fails the command instead of hanging it.
  // Streams (events --follow) pass their own, unbounded, signal.
  const transport = createConnectTransport({
    baseUrl: hub,
    httpVersion: "1.1",
    interceptors: [auth],
    defaultTimeoutMs: 30_000,
  });
  return {
    identity: createClient(IdentityService, transport),
    orgs: createClient(OrganizationService, transport),
    projects: createClient(ProjectService, transport),
    services: createClient(ServicesService, transport),
    config: createClient(ConfigService, transport),
    servers: createClient(ServerService, transport),
    fleet: createClient(FleetService, transport),
    events: createClient(EventsService, transport),
    webhooks: createClient(WebhooksService, transport),
    dataPlanes: createClient(DataPlaneService, transport),
    databases: createClient(DatabasesService, transport),
    hub,
  };
}

export const when = (t: Timestamp | undefined) => (t ? timestampDate(t).toISOString() : "");
