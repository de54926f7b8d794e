// Deny-by-default authorization: every RPC declares a rule; the interceptor authenticates and enforces it.
import type { DescService } from "@bufbuild/protobuf";
import { createContextKey, type Interceptor } from "@connectrpc/connect";
import {
  ApiService as ApiRpc,
  GatewayService as GatewayRpc,
} from "../../gen/flotilla/v1/apis_pb.js";
import { ConfigService as ConfigRpc } from "../../gen/flotilla/v1/config_pb.js";
import { DatabasesService as DatabasesRpc } from "../../gen/flotilla/v1/databases_pb.js";
import { DataPlaneService as DataPlaneRpc } from "../../gen/flotilla/v1/dataplanes_pb.js";
import {
  EventsService as EventsRpc,
  WebhooksService as WebhooksRpc,
} from "../../gen/flotilla/v1/events_pb.js";
import { FleetService as FleetRpc } from "../../gen/flotilla/v1/fleet_pb.js";
import {
  IdentityService as IdentityRpc,
  OrganizationService as OrganizationRpc,
} from "../../gen/flotilla/v1/identity_pb.js";
import { ProjectService as ProjectRpc } from "../../gen/flotilla/v1/projects_pb.js";
import { ServerService as ServerRpc } from "../../gen/flotilla/v1/servers_pb.js";
import { ServicesService as ServicesRpc } from "../../gen/flotilla/v1/services_pb.js";
import {
  CARRIAGE,
  contextFromHttpHeaders,
  ERROR_CODE_HEADER,
  FlotillaError,
  type IncomingContext,
  infoLineWriter,
  jsonString,
  type Logger,
  type Metrics,
  type RequestContext,
  runWithContext,
} from "../../shared/index.js";
import {
  type Capability,
  type IdentityService,
  type Principal,
  readCookie,
  requireCapability,
  SESSION_COOKIE,
} from "../identity/index.js";
import { toConnectError } from "./connect-errors.js";

export type Rule =
  | { access: "public" }
  | { access: "authenticated" }
  | { access: "capability"; capability: Capability };

const PUBLIC: Rule = { access: "public" };
const AUTHENTICATED: Rule = { access: "authenticated" };
const can = (capability: Capability): Rule => ({ access: "capability", capability });

/** Every service the hub serves. A service listed here without a rule for each method fails a test. */
export const SERVICES: DescService[] = [
  IdentityRpc,
  OrganizationRpc,
  ProjectRpc,
  ServicesRpc,
  ConfigRpc,
  ServerRpc,
  ApiRpc,
  GatewayRpc,
  FleetRpc,
  EventsRpc,
  WebhooksRpc,
  DataPlaneRpc,
  DatabasesRpc,
];

/** Keyed by "package.Service/Method". A method missing here is refused (and fails a test). */
export const RPC_RULES: Record<string, Rule> = {
  "flotilla.v1.IdentityService/GetSetupStatus": PUBLIC,
  "flotilla.v1.IdentityService/Bootstrap": PUBLIC,
  "flotilla.v1.IdentityService/Login": PUBLIC,
  "flotilla.v1.IdentityService/Logout": AUTHENTICATED,
  "flotilla.v1.IdentityService/WhoAmI": AUTHENTICATED,
  "flotilla.v1.IdentityService/ListMyOrganizations": AUTHENTICATED,
  "flotilla.v1.IdentityService/CreateApiToken": can("tokens.self"),
  "flotilla.v1.IdentityService/ListApiTokens": can("tokens.self"),
  "flotilla.v1.IdentityService/RevokeApiToken": can("tokens.self"),
  "flotilla.v1.OrganizationService/CreateOrganization": AUTHENTICATED,
  "flotilla.v1.OrganizationService/GetOrganization": can("org.read"),
  "flotilla.v1.OrganizationService/UpdateOrganization": can("org.update"),
  "flotilla.v1.OrganizationService/ListMembers": can("members.read"),
  "flotilla.v1.OrganizationService/AddMember": can("members.manage"),
  "flotilla.v1.OrganizationService/UpdateMemberRole": can("members.manage"),
  "flotilla.v1.OrganizationService/RemoveMember": can("members.manage"),
  "flotilla.v1.OrganizationService/ListAuditEvents": can("audit.read"),
  "flotilla.v1.ProjectService/CreateProject": can("projects.write"),
  "flotilla.v1.ProjectService/ListProjects": can("projects.read"),
  "flotilla.v1.ProjectService/GetProject": can("projects.read"),
  "flotilla.v1.ProjectService/RenameProject": can("projects.write"),
  "flotilla.v1.ProjectService/DeleteProject": can("projects.write"),
  "flotilla.v1.ProjectService/CreateEnvironment": can("projects.write"),
  "flotilla.v1.ProjectService/ListEnvironments": can("projects.read"),
  "flotilla.v1.ProjectService/RenameEnvironment": can("projects.write"),
  "flotilla.v1.ProjectService/DeleteEnvironment": can("projects.write"),
  "flotilla.v1.ServicesService/CreateService": can("services.write"),
  "flotilla.v1.ServicesService/ListServices": can("projects.read"),
  "flotilla.v1.ServicesService/GetService": can("projects.read"),
  "flotilla.v1.ServicesService/UpdateService": can("services.write"),
  "flotilla.v1.ServicesService/DeleteService": can("services.write"),
  "flotilla.v1.ServicesService/Deploy": can("deployments.create"),
  "flotilla.v1.ServicesService/StartService": can("deployments.create"),
  "flotilla.v1.ServicesService/StopService": can("deployments.create"),
  "flotilla.v1.ServicesService/RestartService": can("deployments.create"),
  "flotilla.v1.ServicesService/ListDeployments": can("projects.read"),
  "flotilla.v1.ServicesService/StreamLogs": can("logs.read"),
  "flotilla.v1.ServicesService/RunJob": can("jobs.run"),
  // A job's output may hold what a logs reader sees, and more (a dump).
  "flotilla.v1.ServicesService/GetJob": can("logs.read"),
  "flotilla.v1.ServicesService/GetDeployment": can("projects.read"),
  "flotilla.v1.ServicesService/Rollback": can("deployments.create"),
  "flotilla.v1.ServicesService/ListEvents": can("projects.read"),
  "flotilla.v1.ServicesService/WatchEvents": can("projects.read"),
  "flotilla.v1.ConfigService/SetConfig": can("config.write"),
  "flotilla.v1.ConfigService/ImportConfig": can("config.write"),
  "flotilla.v1.ConfigService/ListConfig": can("config.read"),
  "flotilla.v1.ConfigService/UnsetConfig": can("config.write"),
  "flotilla.v1.ConfigService/RevealSecret": can("config.reveal"),
  "flotilla.v1.ConfigService/GetEffectiveConfig": can("config.read"),
  "flotilla.v1.ServerService/CreateJoinToken": can("servers.manage"),
  "flotilla.v1.ServerService/ListServers": can("servers.read"),
  "flotilla.v1.ServerService/GetServer": can("servers.read"),
  "flotilla.v1.ServerService/DeleteServer": can("servers.manage"),
  "flotilla.v1.ServerService/ListDispatches": can("servers.read"),
  "flotilla.v1.ServerService/GetAgentStatus": can("servers.read"),
  "flotilla.v1.ServerService/ControlAgent": can("servers.manage"),
  "flotilla.v1.ApiService/CreateApi": can("services.write"),
  "flotilla.v1.ApiService/ListApis": can("projects.read"),
  "flotilla.v1.ApiService/GetApi": can("projects.read"),
  "flotilla.v1.ApiService/DeleteApi": can("services.write"),
  // A consumer key grants use of the LLM credential behind the proxy: as strong as config writes.
  "flotilla.v1.ApiService/CreateConsumerKey": can("config.write"),
  "flotilla.v1.ApiService/DeleteConsumerKey": can("config.write"),
  "flotilla.v1.ApiService/DeployApi": can("deployments.create"),
  "flotilla.v1.ApiService/UndeployApi": can("deployments.create"),
  "flotilla.v1.ApiService/ListApiDeployments": can("projects.read"),
  "flotilla.v1.GatewayService/CreateGateway": can("servers.manage"),
  "flotilla.v1.GatewayService/ListGateways": can("servers.read"),
  "flotilla.v1.GatewayService/GetGateway": can("servers.read"),
  "flotilla.v1.GatewayService/DeleteGateway": can("servers.manage"),
  // A custom domain changes where a service answers publicly: like changing the service.
  "flotilla.v1.GatewayService/AddServiceDomain": can("services.write"),
  "flotilla.v1.GatewayService/ListServiceDomains": can("projects.read"),
  "flotilla.v1.GatewayService/RemoveServiceDomain": can("services.write"),
  "flotilla.v1.FleetService/GetFleetStatus": can("servers.read"),
  "flotilla.v1.EventsService/ListQuarantinedEvents": can("events.read"),
  "flotilla.v1.EventsService/ReplayQuarantinedEvent": can("events.replay"),
  "flotilla.v1.WebhooksService/CreateWebhookEndpoint": can("webhooks.manage"),
  "flotilla.v1.WebhooksService/ListWebhookEndpoints": can("webhooks.read"),
  "flotilla.v1.WebhooksService/DeleteWebhookEndpoint": can("webhooks.manage"),
  "flotilla.v1.WebhooksService/ListWebhookDeliveries": can("webhooks.read"),
  "flotilla.v1.DataPlaneService/ListDataPlanes": can("dataplanes.read"),
  "flotilla.v1.DataPlaneService/GetDataPlane": can("dataplanes.read"),
  "flotilla.v1.DataPlaneService/CreateDataPlane": can("dataplanes.manage"),
  "flotilla.v1.DataPlaneService/ListPrivateLinks": can("dataplanes.read"),
  "flotilla.v1.DataPlaneService/AddPrivateLink": can("ModifyDataPlanePrivateNetworking"),
  "flotilla.v1.DataPlaneService/UpdatePrivateLink": can("ModifyDataPlanePrivateNetworking"),
  "flotilla.v1.DataPlaneService/RemovePrivateLink": can("ModifyDataPlanePrivateNetworking"),
  "flotilla.v1.DatabasesService/CreateDatabaseService": can("databases.manage"),
  // Everyone who sees the service sees where it is; the password only with config.reveal.
  "flotilla.v1.DatabasesService/GetConnectionInfo": can("projects.read"),
  // A backup is a job on the database's server; nobody reads its file through the API.
  "flotilla.v1.DatabasesService/CreateBackup": can("jobs.run"),
  "flotilla.v1.DatabasesService/ListBackups": can("projects.read"),
  "flotilla.v1.DatabasesService/GetBackup": can("projects.read"),
  "flotilla.v1.DatabasesService/RestoreBackup": can("databases.manage"),
  "flotilla.v1.DatabasesService/SetBackupSchedule": can("databases.manage"),
  "flotilla.v1.DatabasesService/GetBackupSchedule": can("projects.read"),
};

/** Set by the HTTP layer: the context read from the request headers, and the peer address. */
export const kIncoming = createContextKey<IncomingContext | undefined>(undefined, {
  description: "incoming context",
});
export const kRemoteAddr = createContextKey<string>("unknown", { description: "remote address" });
/** Set by the interceptor for every non-public RPC. */
export const kPrincipal = createContextKey<Principal | undefined>(undefined, {
  description: "principal",
});

function bearer(headers: Headers): string | undefined {
  const value = headers.get("authorization");
  if (!value) return undefined;
  const match = /^Bearer\s+(\S+)$/i.exec(value);
  return match?.[1];
}

export function contextResponseHeaders(ctx: RequestContext): Record<string, string> {
  const headers: Record<string, string> = {
    [CARRIAGE.correlation.http]: ctx.correlationId,
    [CARRIAGE.trace.http]: ctx.traceparent,
  };
  if (ctx.requestId) headers[CARRIAGE.request.http] = ctx.requestId;
  return headers;
}

export function createAuthInterceptor(deps: {
  identity: IdentityService;
  logger: Logger;
  metrics: Metrics;
}): Interceptor {
  // The per-call line holds the RPC's name, a code and a duration, plus the request's context
  // (tenant, ids): nothing a secret can be in, so it skips redaction (which ran every wildcard
  // path over every field of every line) and is written without pino's per-line object walk.
  const rpcLine = infoLineWriter(deps.logger, "rpc");
  return (next) => async (req) => {
    const incoming = req.contextValues.get(kIncoming) ?? contextFromHttpHeaders(req.header);
    const { claimedTenant, ...rest } = incoming;
    const ctx: RequestContext = { ...rest };
    const rpc = `${req.service.typeName}/${req.method.name}`;
    const started = performance.now();
    return runWithContext(ctx, async () => {
      let code = "ok";
      try {
        const rule = RPC_RULES[rpc];
        if (!rule)
          throw new FlotillaError(
            "auth.permission_denied",
            `${rpc} has no authorization rule and is refused`,
          );
        if (rule.access !== "public") {
          const credential =
            bearer(req.header) ?? readCookie(req.header.get("cookie"), SESSION_COOKIE);
          const principal = credential ? await deps.identity.authenticate(credential) : null;
          if (!principal) {
            throw new FlotillaError(
              "auth.unauthenticated",
              credential
                ? "the session or token is invalid, expired or revoked; sign in again"
                : "sign in first: send a session cookie or an Authorization: Bearer token",
            );
          }
          if (claimedTenant && claimedTenant !== principal.organization.id) {
            throw new FlotillaError(
              "auth.tenant_mismatch",
              `x-tenant-id names ${claimedTenant}, but you are signed in to organization ${principal.organization.id}`,
            );
          }
          ctx.tenant = principal.organization.id;
          req.contextValues.set(kPrincipal, principal);
          if (rule.access === "capability") requireCapability(principal, rule.capability);
        }
        const res = await next(req);
        for (const [k, v] of Object.entries(contextResponseHeaders(ctx))) res.header.set(k, v);
        return res;
      } catch (err) {
        const connectErr = toConnectError(err);
        code = connectErr.metadata.get(ERROR_CODE_HEADER) ?? String(connectErr.code);
        // The caller went away (Ctrl-C on `flotilla logs --follow`): what broke is most likely
        // the answer it no longer reads, so no stack trace at error level.
        if (req.signal.aborted && code === "internal") {
          code = "canceled";
          deps.logger.debug(
            { err: connectErr.rawMessage, rpc },
            "rpc ended after its caller went away",
          );
        }
        if (code === "internal")
          deps.logger.error({ err, rpc }, "rpc failed with an internal error");
        for (const [k, v] of Object.entries(contextResponseHeaders(ctx)))
          connectErr.metadata.set(k, v);
        throw connectErr;
      } finally {
        const seconds = (performance.now() - started) / 1000;
        const labels = { service: req.service.typeName, method: req.method.name };
        deps.metrics.rpcRequests.inc({ ...labels, code });
        deps.metrics.rpcDuration.observe(labels, seconds);
        rpcLine(
          `"rpc":${jsonString(rpc)},"code":${jsonString(code)},"ms":${Math.round(seconds * 1e4) / 10}`,
        );
      }
    });
  };
}
