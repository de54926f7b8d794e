// Test support: one request builder per RPC the hub serves, for the authorization suite
// (test/integration/authz.test.ts), plus a way to call any RPC by its key.
//
// HOW TO ADD AN RPC (authz.test.ts fails while an RPC in SERVICES has no entry here, or an
// entry names an RPC that SERVICES does not serve):
//   1. If the RPC names a kind of object TenantIds lacks (a project, an environment, a service,
//      a config entry...), add its id to TenantIds, create one such object in seedTenant(), and
//      give it a random id in absentIds().
//   2. Add one entry to RPC_CASES, keyed "package.Service/Method":
//        "flotilla.v1.ProjectService/GetProject": rpc(ProjectService.method.getProject, {
//          objectScoped: true,
//          request: (ids) => ({ id: ids.projectId }),
//        }),
//      - `request` builds a request that would SUCCEED for an owner of the tenant whose ids it
//        is given (checked for every object-scoped RPC against a freshly seeded tenant, so a
//        request may delete what it names). The suite also sends it with another tenant's ids
//        (expecting not-found), without credentials, with a foreign x-tenant-id, and as every
//        role. Unary and server-streaming RPCs are supported (see callRpc).
//      - `objectScoped: true` when the request names an object that belongs to one
//        organization (by id, slug or name); a caller from another organization must get
//        NotFound. `false` when the RPC acts on the caller itself or the caller's own
//        organization as a whole (list, create, who-am-I).
//      - A request must leave the caller signed in and able to continue: no "log out
//        everywhere", no removing or demoting the caller, no deleting the tenant's seeded objects
//        except by their id (and then mark it objectScoped).
import { randomBytes, randomUUID } from "node:crypto";
import {
  type DescMessage,
  type DescMethod,
  type DescMethodServerStreaming,
  type DescMethodUnary,
  type MessageInitShape,
  type MessageShape,
  toJsonString,
} from "@bufbuild/protobuf";
import { type CallOptions, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ApiKind, ApiService, GatewayService } from "../../src/gen/flotilla/v1/apis_pb.js";
import { ConfigKind, ConfigScope, ConfigService } from "../../src/gen/flotilla/v1/config_pb.js";
import { DatabasesService } from "../../src/gen/flotilla/v1/databases_pb.js";
import { DataPlaneService } from "../../src/gen/flotilla/v1/dataplanes_pb.js";
import { EventsService, WebhooksService } from "../../src/gen/flotilla/v1/events_pb.js";
import { FleetService } from "../../src/gen/flotilla/v1/fleet_pb.js";
import {
  IdentityService,
  OrganizationService,
  Role,
} from "../../src/gen/flotilla/v1/identity_pb.js";
import { ProjectService } from "../../src/gen/flotilla/v1/projects_pb.js";
import { AgentAction, ServerService } from "../../src/gen/flotilla/v1/servers_pb.js";
import { Driver, ServicesService, Visibility } from "../../src/gen/flotilla/v1/services_pb.js";
import { SERVICES } from "../../src/hub/index.js";
import { PASSWORD, randomEmail } from "./hub.js";

/** Ids of one organization's objects: the victim of a cross-tenant call, or the caller's own. */
export interface TenantIds {
  organizationId: string;
  organizationSlug: string;
  /** The owner who created the organization. */
  ownerUserId: string;
  /** A member who is not an owner (a developer). */
  memberUserId: string;
  /** An API token of the owner. */
  apiTokenId: string;
  /** An event of the organization's audit log. */
  auditEventId: string;
  projectId: string;
  /** The project's production environment, which holds the service. */
  environmentId: string;
  serviceId: string;
  /** The service's first deployment (a second one is desired, so a rollback to this works). */
  deploymentId: string;
  /** A variable of the service and a secret of the environment. */
  variableKey: string;
  secretKey: string;
  /** An enrolled server (joined through the agent endpoint, never connected). */
  serverId: string;
  /** A job of the service (pending: the server has no agent). */
  jobId: string;
  /** A gateway in the default data plane. */
  gatewayId: string;
  /** A RestApi deployed on the gateway. */
  restApiId: string;
  /** An LlmProxy (on an LlmProvider) with one consumer key, deployed nowhere. */
  proxyApiId: string;
  consumerKeyId: string;
  /** A custom domain of the service. */
  domainHostname: string;
  /** A webhook endpoint of the organization. */
  webhookEndpointId: string;
  /** A data plane (not the default one) and one private link on it. */
  dataPlaneId: string;
  privateLinkId: string;
  /** A managed database on the server, and a backup of it (pending: the server has no agent). */
  databaseId: string;
  backupId: string;
}

export interface RpcCase {
  method: DescMethod;
  /** True when the request names an object of one organization: other tenants get NotFound. */
  objectScoped: boolean;
  /**
   * An error code that still means "authorized, and every object found" for the owner's own
   * request, where the seeded tenant cannot make the call succeed (its server has no agent).
   */
  acceptedError?: string;
  request(ids: TenantIds): MessageInitShape<DescMessage>;
}

type AnyMethod<I extends DescMessage, O extends DescMessage> =
  | DescMethodUnary<I, O>
  | DescMethodServerStreaming<I, O>;

/** Declares one case; the method descriptor types the request. */
function rpc<I extends DescMessage, O extends DescMessage>(
  method: AnyMethod<I, O>,
  c: {
    objectScoped: boolean;
    acceptedError?: string;
    request(ids: TenantIds): MessageInitShape<I>;
  },
): RpcCase {
  return {
    method,
    objectScoped: c.objectScoped,
    ...(c.acceptedError ? { acceptedError: c.acceptedError } : {}),
    request: c.request as (ids: TenantIds) => MessageInitShape<DescMessage>,
  };
}

const unique = () => randomBytes(4).toString("hex");
const I = IdentityService.method;
const O = OrganizationService.method;
const P = ProjectService.method;
const S = ServicesService.method;
const C = ConfigService.method;
const V = ServerService.method;
const A = ApiService.method;
const G = GatewayService.method;
const REST_DEFINITION = JSON.stringify({
  contextPath: "/orders",
  upstream: { url: "http://127.0.0.1:9" },
});
const D = DataPlaneService.method;
/** An Azure link whose identity is new on every call (so an add never collides with the seeded one). */
const azureLink = () => ({
  service_name: `svc-${unique()}.azure.privatelinkservice`,
  location: "eastus",
});
const DB = DatabasesService.method;
const SPEC = {
  driver: Driver.EXEC,
  exec: { command: "node", args: ["server.js"], workingDirectory: "", port: 3000 },
};
const serviceTarget = (ids: TenantIds) => ({ scope: ConfigScope.SERVICE, id: ids.serviceId });
const environmentTarget = (ids: TenantIds) => ({
  scope: ConfigScope.ENVIRONMENT,
  id: ids.environmentId,
});

export const RPC_CASES: Record<string, RpcCase> = {
  "flotilla.v1.IdentityService/GetSetupStatus": rpc(I.getSetupStatus, {
    objectScoped: false,
    request: () => ({}),
  }),
  "flotilla.v1.IdentityService/Bootstrap": rpc(I.bootstrap, {
    objectScoped: false,
    request: () => ({
      setupToken: `fst_${unique()}`,
      email: randomEmail("bootstrap"),
      password: PASSWORD,
      organizationName: `Org ${unique()}`,
    }),
  }),
  // An unknown email: each call is a failed login from 127.0.0.1, so a suite calling it often
  // raises the hub's loginLimits.perAddress.
  "flotilla.v1.IdentityService/Login": rpc(I.login, {
    objectScoped: false,
    request: () => ({ email: randomEmail("nobody"), password: "not-the-password" }),
  }),
  "flotilla.v1.IdentityService/Logout": rpc(I.logout, {
    objectScoped: false,
    request: () => ({ everywhere: false }),
  }),
  "flotilla.v1.IdentityService/WhoAmI": rpc(I.whoAmI, { objectScoped: false, request: () => ({}) }),
  "flotilla.v1.IdentityService/ListMyOrganizations": rpc(I.listMyOrganizations, {
    objectScoped: false,
    request: () => ({}),
  }),
  "flotilla.v1.IdentityService/CreateApiToken": rpc(I.createApiToken, {
    objectScoped: false,
    request: () => ({ name: `token ${unique()}`, ttlSeconds: 3600n }),
  }),
  "flotilla.v1.IdentityService/ListApiTokens": rpc(I.listApiTokens, {
    objectScoped: false,
    request: () => ({}),
  }),
  "flotilla.v1.IdentityService/RevokeApiToken": rpc(I.revokeApiToken, {
    objectScoped: true,
    request: (ids) => ({ id: ids.apiTokenId }),
  }),
  "flotilla.v1.OrganizationService/CreateOrganization": rpc(O.createOrganization, {
    objectScoped: false,
    request: () => ({ name: `Org ${unique()}` }),
  }),
  "flotilla.v1.OrganizationService/GetOrganization": rpc(O.getOrganization, {
    objectScoped: false,
    request: () => ({}),
  }),
  "flotilla.v1.OrganizationService/UpdateOrganization": rpc(O.updateOrganization, {
    objectScoped: false,
    request: () => ({ name: `Renamed ${unique()}` }),
  }),
  "flotilla.v1.OrganizationService/ListMembers": rpc(O.listMembers, {
    objectScoped: false,
    request: () => ({}),
  }),
  "flotilla.v1.OrganizationService/AddMember": rpc(O.addMember, {
    objectScoped: false,
    request: () => ({
      email: randomEmail("added"),
      role: Role.VIEWER,
      initialPassword: PASSWORD,
    }),
  }),
  "flotilla.v1.OrganizationService/UpdateMemberRole": rpc(O.updateMemberRole, {
    objectScoped: true,
    request: (ids) => ({ userId: ids.memberUserId, role: Role.VIEWER }),
  }),
  "flotilla.v1.OrganizationService/RemoveMember": rpc(O.removeMember, {
    objectScoped: true,
    request: (ids) => ({ userId: ids.memberUserId }),
  }),
  "flotilla.v1.OrganizationService/ListAuditEvents": rpc(O.listAuditEvents, {
    objectScoped: false,
    request: (ids) => ({ limit: 10, beforeId: ids.auditEventId }),
  }),
  "flotilla.v1.ProjectService/CreateProject": rpc(P.createProject, {
    objectScoped: false,
    request: () => ({ name: `Project ${unique()}` }),
  }),
  "flotilla.v1.ProjectService/ListProjects": rpc(P.listProjects, {
    objectScoped: false,
    request: () => ({}),
  }),
  "flotilla.v1.ProjectService/GetProject": rpc(P.getProject, {
    objectScoped: true,
    request: (ids) => ({ project: ids.projectId }),
  }),
  "flotilla.v1.ProjectService/RenameProject": rpc(P.renameProject, {
    objectScoped: true,
    request: (ids) => ({ project: ids.projectId, name: `Renamed ${unique()}` }),
  }),
  "flotilla.v1.ProjectService/DeleteProject": rpc(P.deleteProject, {
    objectScoped: true,
    request: (ids) => ({ project: ids.projectId, force: true }),
  }),
  "flotilla.v1.ProjectService/CreateEnvironment": rpc(P.createEnvironment, {
    objectScoped: true,
    request: (ids) => ({ project: ids.projectId, name: `Env ${unique()}` }),
  }),
  "flotilla.v1.ProjectService/ListEnvironments": rpc(P.listEnvironments, {
    objectScoped: true,
    request: (ids) => ({ project: ids.projectId }),
  }),
  "flotilla.v1.ProjectService/RenameEnvironment": rpc(P.renameEnvironment, {
    objectScoped: true,
    request: (ids) => ({ environmentId: ids.environmentId, name: `Renamed ${unique()}` }),
  }),
  "flotilla.v1.ProjectService/DeleteEnvironment": rpc(P.deleteEnvironment, {
    objectScoped: true,
    request: (ids) => ({ environmentId: ids.environmentId, force: true }),
  }),
  "flotilla.v1.ServicesService/CreateService": rpc(S.createService, {
    objectScoped: true,
    request: (ids) => ({
      environmentId: ids.environmentId,
      name: `svc-${unique()}`,
      visibility: Visibility.PRIVATE,
      spec: SPEC,
    }),
  }),
  "flotilla.v1.ServicesService/ListServices": rpc(S.listServices, {
    objectScoped: true,
    request: (ids) => ({ project: ids.projectId }),
  }),
  "flotilla.v1.ServicesService/GetService": rpc(S.getService, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.serviceId }),
  }),
  "flotilla.v1.ServicesService/UpdateService": rpc(S.updateService, {
    objectScoped: true,
    request: (ids) => ({
      serviceId: ids.serviceId,
      name: `renamed ${unique()}`,
      visibility: Visibility.PRIVATE,
      spec: SPEC,
    }),
  }),
  "flotilla.v1.ServicesService/DeleteService": rpc(S.deleteService, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.serviceId }),
  }),
  "flotilla.v1.ServicesService/Deploy": rpc(S.deploy, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.serviceId }),
  }),
  "flotilla.v1.ServicesService/StartService": rpc(S.startService, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.serviceId }),
  }),
  "flotilla.v1.ServicesService/StopService": rpc(S.stopService, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.serviceId }),
  }),
  "flotilla.v1.ServicesService/RestartService": rpc(S.restartService, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.serviceId }),
  }),
  "flotilla.v1.ServicesService/RunJob": rpc(S.runJob, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.serviceId, command: "true" }),
  }),
  "flotilla.v1.ServicesService/GetJob": rpc(S.getJob, {
    objectScoped: true,
    request: (ids) => ({ jobId: ids.jobId }),
  }),
  "flotilla.v1.ServicesService/StreamLogs": rpc(S.streamLogs, {
    objectScoped: true,
    // The seeded server never connects an agent, and logs live on the agent.
    acceptedError: "agent.unavailable",
    request: (ids) => ({ serviceId: ids.serviceId, lines: 10 }),
  }),
  "flotilla.v1.ServicesService/ListDeployments": rpc(S.listDeployments, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.serviceId }),
  }),
  "flotilla.v1.ServicesService/GetDeployment": rpc(S.getDeployment, {
    objectScoped: true,
    request: (ids) => ({ deploymentId: ids.deploymentId }),
  }),
  "flotilla.v1.ServicesService/Rollback": rpc(S.rollback, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.serviceId, deploymentId: ids.deploymentId }),
  }),
  "flotilla.v1.ServicesService/ListEvents": rpc(S.listEvents, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.serviceId }),
  }),
  "flotilla.v1.ServicesService/WatchEvents": rpc(S.watchEvents, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.serviceId }),
  }),
  "flotilla.v1.ConfigService/SetConfig": rpc(C.setConfig, {
    objectScoped: true,
    request: (ids) => ({
      target: serviceTarget(ids),
      key: `KEY_${unique()}`,
      value: "v",
      kind: ConfigKind.VARIABLE,
    }),
  }),
  "flotilla.v1.ConfigService/ImportConfig": rpc(C.importConfig, {
    objectScoped: true,
    request: (ids) => ({ target: environmentTarget(ids), dotenv: `IMPORTED_${unique()}=1\n` }),
  }),
  "flotilla.v1.ConfigService/ListConfig": rpc(C.listConfig, {
    objectScoped: true,
    request: (ids) => ({ target: serviceTarget(ids) }),
  }),
  "flotilla.v1.ConfigService/UnsetConfig": rpc(C.unsetConfig, {
    objectScoped: true,
    request: (ids) => ({ target: serviceTarget(ids), key: ids.variableKey }),
  }),
  "flotilla.v1.ConfigService/RevealSecret": rpc(C.revealSecret, {
    objectScoped: true,
    request: (ids) => ({ target: environmentTarget(ids), key: ids.secretKey }),
  }),
  "flotilla.v1.ConfigService/GetEffectiveConfig": rpc(C.getEffectiveConfig, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.serviceId }),
  }),
  "flotilla.v1.ServerService/CreateJoinToken": rpc(V.createJoinToken, {
    objectScoped: false,
    request: () => ({ name: `srv-${unique()}` }),
  }),
  "flotilla.v1.ServerService/ListServers": rpc(V.listServers, {
    objectScoped: false,
    request: () => ({}),
  }),
  "flotilla.v1.ServerService/GetServer": rpc(V.getServer, {
    objectScoped: true,
    request: (ids) => ({ server: ids.serverId }),
  }),
  "flotilla.v1.ServerService/DeleteServer": rpc(V.deleteServer, {
    objectScoped: true,
    request: (ids) => ({ server: ids.serverId }),
  }),
  "flotilla.v1.ServerService/GetAgentStatus": rpc(V.getAgentStatus, {
    objectScoped: true,
    // The seeded server never connects an agent.
    acceptedError: "agent.unavailable",
    request: (ids) => ({ server: ids.serverId }),
  }),
  "flotilla.v1.ServerService/ControlAgent": rpc(V.controlAgent, {
    objectScoped: true,
    acceptedError: "agent.unavailable",
    request: (ids) => ({ server: ids.serverId, action: AgentAction.RESUME }),
  }),
  "flotilla.v1.ServerService/ListDispatches": rpc(V.listDispatches, {
    objectScoped: true,
    request: (ids) => ({ server: ids.serverId }),
  }),
  "flotilla.v1.ApiService/CreateApi": rpc(A.createApi, {
    objectScoped: false,
    request: () => ({
      name: `api-${unique()}`,
      kind: ApiKind.REST_API,
      definitionJson: REST_DEFINITION,
    }),
  }),
  "flotilla.v1.ApiService/ListApis": rpc(A.listApis, { objectScoped: false, request: () => ({}) }),
  "flotilla.v1.ApiService/GetApi": rpc(A.getApi, {
    objectScoped: true,
    request: (ids) => ({ api: ids.restApiId }),
  }),
  // The proxy: deployed nowhere and nobody's provider, so it may be deleted.
  "flotilla.v1.ApiService/DeleteApi": rpc(A.deleteApi, {
    objectScoped: true,
    request: (ids) => ({ api: ids.proxyApiId }),
  }),
  "flotilla.v1.ApiService/CreateConsumerKey": rpc(A.createConsumerKey, {
    objectScoped: true,
    request: (ids) => ({ api: ids.proxyApiId, name: `key-${unique()}` }),
  }),
  "flotilla.v1.ApiService/DeleteConsumerKey": rpc(A.deleteConsumerKey, {
    objectScoped: true,
    request: (ids) => ({ api: ids.proxyApiId, consumerKeyId: ids.consumerKeyId }),
  }),
  "flotilla.v1.ApiService/DeployApi": rpc(A.deployApi, {
    objectScoped: true,
    request: (ids) => ({ api: ids.restApiId, gateway: ids.gatewayId }),
  }),
  "flotilla.v1.ApiService/UndeployApi": rpc(A.undeployApi, {
    objectScoped: true,
    request: (ids) => ({ api: ids.restApiId, gateway: ids.gatewayId }),
  }),
  "flotilla.v1.ApiService/ListApiDeployments": rpc(A.listApiDeployments, {
    objectScoped: true,
    request: (ids) => ({ api: ids.restApiId, gateway: ids.gatewayId }),
  }),
  "flotilla.v1.GatewayService/CreateGateway": rpc(G.createGateway, {
    objectScoped: false,
    request: () => ({ name: `gw-${unique()}` }),
  }),
  "flotilla.v1.GatewayService/ListGateways": rpc(G.listGateways, {
    objectScoped: false,
    request: () => ({}),
  }),
  "flotilla.v1.GatewayService/GetGateway": rpc(G.getGateway, {
    objectScoped: true,
    request: (ids) => ({ gateway: ids.gatewayId }),
  }),
  "flotilla.v1.GatewayService/DeleteGateway": rpc(G.deleteGateway, {
    objectScoped: true,
    request: (ids) => ({ gateway: ids.gatewayId }),
  }),
  "flotilla.v1.GatewayService/AddServiceDomain": rpc(G.addServiceDomain, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.serviceId, hostname: `shop-${unique()}.example.com` }),
  }),
  "flotilla.v1.GatewayService/ListServiceDomains": rpc(G.listServiceDomains, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.serviceId }),
  }),
  "flotilla.v1.GatewayService/RemoveServiceDomain": rpc(G.removeServiceDomain, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.serviceId, hostname: ids.domainHostname }),
  }),
  "flotilla.v1.FleetService/GetFleetStatus": rpc(FleetService.method.getFleetStatus, {
    objectScoped: false,
    request: () => ({ kinds: ["agent"] }),
  }),
  "flotilla.v1.EventsService/ListQuarantinedEvents": rpc(
    EventsService.method.listQuarantinedEvents,
    {
      objectScoped: false,
      request: () => ({}),
    },
  ),
  "flotilla.v1.EventsService/ReplayQuarantinedEvent": rpc(
    EventsService.method.replayQuarantinedEvent,
    {
      objectScoped: true,
      // No API call quarantines an event (only a failing NATS consumer does), so the seeded tenant
      // has none: the owner gets not-found too. test/integration/events-nats.test.ts replays a
      // real one and checks another tenant's replay is not-found.
      acceptedError: "resource.not_found",
      request: () => ({ id: randomUUID() }),
    },
  ),
  "flotilla.v1.WebhooksService/CreateWebhookEndpoint": rpc(
    WebhooksService.method.createWebhookEndpoint,
    {
      objectScoped: false,
      request: () => ({ url: `https://hooks.example.com/${unique()}` }),
    },
  ),
  "flotilla.v1.WebhooksService/ListWebhookEndpoints": rpc(
    WebhooksService.method.listWebhookEndpoints,
    {
      objectScoped: false,
      request: () => ({}),
    },
  ),
  "flotilla.v1.WebhooksService/DeleteWebhookEndpoint": rpc(
    WebhooksService.method.deleteWebhookEndpoint,
    {
      objectScoped: true,
      request: (ids) => ({ id: ids.webhookEndpointId }),
    },
  ),
  "flotilla.v1.WebhooksService/ListWebhookDeliveries": rpc(
    WebhooksService.method.listWebhookDeliveries,
    {
      objectScoped: true,
      request: (ids) => ({ endpointId: ids.webhookEndpointId }),
    },
  ),
  "flotilla.v1.DataPlaneService/ListDataPlanes": rpc(D.listDataPlanes, {
    objectScoped: false,
    request: () => ({}),
  }),
  "flotilla.v1.DataPlaneService/GetDataPlane": rpc(D.getDataPlane, {
    objectScoped: true,
    request: (ids) => ({ dataPlane: ids.dataPlaneId }),
  }),
  "flotilla.v1.DataPlaneService/CreateDataPlane": rpc(D.createDataPlane, {
    objectScoped: false,
    request: () => ({ name: `plane-${unique()}` }),
  }),
  "flotilla.v1.DataPlaneService/ListPrivateLinks": rpc(D.listPrivateLinks, {
    objectScoped: true,
    request: (ids) => ({ dataPlane: ids.dataPlaneId }),
  }),
  "flotilla.v1.DataPlaneService/AddPrivateLink": rpc(D.addPrivateLink, {
    objectScoped: true,
    request: (ids) => ({ dataPlane: ids.dataPlaneId, provider: "azure", config: azureLink() }),
  }),
  "flotilla.v1.DataPlaneService/UpdatePrivateLink": rpc(D.updatePrivateLink, {
    objectScoped: true,
    request: (ids) => ({ dataPlane: ids.dataPlaneId, id: ids.privateLinkId, config: azureLink() }),
  }),
  "flotilla.v1.DataPlaneService/RemovePrivateLink": rpc(D.removePrivateLink, {
    objectScoped: true,
    request: (ids) => ({ dataPlane: ids.dataPlaneId, id: ids.privateLinkId }),
  }),
  "flotilla.v1.DatabasesService/CreateDatabaseService": rpc(DB.createDatabaseService, {
    objectScoped: true,
    request: (ids) => ({
      environmentId: ids.environmentId,
      name: `db-${unique()}`,
      templateId: "postgres16",
      serverId: ids.serverId,
    }),
  }),
  "flotilla.v1.DatabasesService/GetConnectionInfo": rpc(DB.getConnectionInfo, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.databaseId }),
  }),
  "flotilla.v1.DatabasesService/CreateBackup": rpc(DB.createBackup, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.databaseId }),
  }),
  "flotilla.v1.DatabasesService/ListBackups": rpc(DB.listBackups, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.databaseId }),
  }),
  "flotilla.v1.DatabasesService/GetBackup": rpc(DB.getBackup, {
    objectScoped: true,
    request: (ids) => ({ backupId: ids.backupId }),
  }),
  "flotilla.v1.DatabasesService/RestoreBackup": rpc(DB.restoreBackup, {
    objectScoped: true,
    // The seeded backup never finishes (no agent): authorized, found, and refused as unfinished.
    acceptedError: "resource.conflict",
    request: (ids) => ({ serviceId: ids.databaseId, backupId: ids.backupId, confirm: true }),
  }),
  "flotilla.v1.DatabasesService/SetBackupSchedule": rpc(DB.setBackupSchedule, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.databaseId, cron: "0 3 * * *", retention: 3 }),
  }),
  "flotilla.v1.DatabasesService/GetBackupSchedule": rpc(DB.getBackupSchedule, {
    objectScoped: true,
    request: (ids) => ({ serviceId: ids.databaseId }),
  }),
};

/** Every RPC the hub serves, keyed like RPC_RULES and RPC_CASES. */
export function servedRpcs(): Array<{ key: string; method: DescMethod }> {
  return SERVICES.flatMap((service) =>
    service.methods.map((method) => ({ key: `${service.typeName}/${method.name}`, method })),
  );
}

/**
 * Creates one object of every kind TenantIds names, as the organization's owner, and returns
 * their ids. The owner's organization is the one its session or token is bound to.
 */
export async function seedTenant(baseUrl: string, ownerToken: string): Promise<TenantIds> {
  const transport = createConnectTransport({ baseUrl, httpVersion: "1.1" });
  const headers = { authorization: `Bearer ${ownerToken}` };
  const identity = createClient(IdentityService, transport);
  const orgs = createClient(OrganizationService, transport);
  const me = await identity.whoAmI({}, { headers });
  const member = await orgs.addMember(
    { email: randomEmail("seeded"), role: Role.DEVELOPER, initialPassword: PASSWORD },
    { headers },
  );
  const token = await identity.createApiToken({ name: `seeded ${unique()}` }, { headers });
  const projects = createClient(ProjectService, transport);
  const services = createClient(ServicesService, transport);
  const config = createClient(ConfigService, transport);
  const serversApi = createClient(ServerService, transport);
  // The server first: the organization's only server is where new services are placed.
  const joinToken = await serversApi.createJoinToken({ name: `seeded-${unique()}` }, { headers });
  const joined = await fetch(`${baseUrl}/agent/v1/join`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token: joinToken.token }),
  });
  const { server_id: serverId } = (await joined.json()) as { server_id: string };
  const project = await projects.createProject({ name: `Seeded ${unique()}` }, { headers });
  const environmentId = project.production!.id;
  const service = await services.createService(
    {
      environmentId,
      name: `seeded-${unique()}`,
      visibility: Visibility.PRIVATE,
      spec: SPEC,
      serverId,
    },
    { headers },
  );
  const serviceId = service.service!.id;
  const variableKey = "SEEDED_VARIABLE";
  const secretKey = "SEEDED_SECRET";
  await config.setConfig(
    {
      target: { scope: ConfigScope.SERVICE, id: serviceId },
      key: variableKey,
      value: "1",
      kind: ConfigKind.VARIABLE,
    },
    { headers },
  );
  await config.setConfig(
    {
      target: { scope: ConfigScope.ENVIRONMENT, id: environmentId },
      key: secretKey,
      value: "seeded-secret",
      kind: ConfigKind.SECRET,
    },
    { headers },
  );
  const first = await services.deploy({ serviceId }, { headers });
  const job = await services.runJob({ serviceId, command: "true" }, { headers });
  await services.deploy({ serviceId }, { headers });
  const apisApi = createClient(ApiService, transport);
  const gatewaysApi = createClient(GatewayService, transport);
  const gateway = await gatewaysApi.createGateway({ name: `seeded-${unique()}` }, { headers });
  const restApi = await apisApi.createApi(
    { name: `seeded-${unique()}`, kind: ApiKind.REST_API, definitionJson: REST_DEFINITION },
    { headers },
  );
  const provider = await apisApi.createApi(
    {
      name: `llm-${unique()}`,
      kind: ApiKind.LLM_PROVIDER,
      definitionJson: JSON.stringify({
        contextPath: "/llm",
        upstreamUrl: "http://127.0.0.1:9/v1",
        models: ["fake-model"],
      }),
      credential: "sk-seeded",
    },
    { headers },
  );
  const proxy = await apisApi.createApi(
    {
      name: `proxy-${unique()}`,
      kind: ApiKind.LLM_PROXY,
      definitionJson: JSON.stringify({ contextPath: "/ai", rateLimit: { requestsPerMinute: 60 } }),
      provider: provider.api!.id,
    },
    { headers },
  );
  const consumerKey = await apisApi.createConsumerKey(
    { api: proxy.api!.id, name: "seeded" },
    { headers },
  );
  await apisApi.deployApi({ api: restApi.api!.id, gateway: gateway.gateway!.id }, { headers });
  const domainHostname = `seeded-${unique()}.example.com`;
  await gatewaysApi.addServiceDomain({ serviceId, hostname: domainHostname }, { headers });
  const dataPlanes = createClient(DataPlaneService, transport);
  const plane = await dataPlanes.createDataPlane({ name: `seeded-${unique()}` }, { headers });
  const link = await dataPlanes.addPrivateLink(
    { dataPlane: plane.dataPlane!.id, provider: "azure", config: azureLink() },
    { headers },
  );
  const databases = createClient(DatabasesService, transport);
  const database = await databases.createDatabaseService(
    { environmentId, name: `seeded-db-${unique()}`, templateId: "postgres16", serverId },
    { headers },
  );
  const databaseId = database.service!.id;
  const backup = await databases.createBackup({ serviceId: databaseId }, { headers });
  const audit = await orgs.listAuditEvents({ limit: 1 }, { headers });
  // An organization holds at most 50 endpoints and a test may seed one tenant once per RPC: reuse
  // the seeded endpoint while it exists (a DeleteWebhookEndpoint case removes it).
  const webhooks = createClient(WebhooksService, transport);
  const seededUrl = "https://hooks.example.com/seeded";
  const existing = (await webhooks.listWebhookEndpoints({}, { headers })).endpoints.find(
    (e) => e.url === seededUrl,
  );
  const webhook = existing
    ? { endpoint: existing }
    : await webhooks.createWebhookEndpoint({ url: seededUrl }, { headers });
  return {
    webhookEndpointId: webhook.endpoint!.id,
    databaseId,
    backupId: backup.backup!.id,
    projectId: project.project!.id,
    environmentId,
    serviceId,
    deploymentId: first.deployment!.id,
    variableKey,
    secretKey,
    serverId,
    jobId: job.job!.id,
    organizationId: me.organization!.id,
    organizationSlug: me.organization!.slug,
    ownerUserId: me.user!.id,
    memberUserId: member.member!.user!.id,
    apiTokenId: token.token!.id,
    auditEventId: audit.events[0]!.id,
    gatewayId: gateway.gateway!.id,
    restApiId: restApi.api!.id,
    proxyApiId: proxy.api!.id,
    consumerKeyId: consumerKey.consumerKey!.id,
    domainHostname,
    dataPlaneId: plane.dataPlane!.id,
    privateLinkId: link.privateLink!.id,
  };
}

/** Ids that name nothing: well-formed, random, of no organization. */
export function absentIds(): TenantIds {
  const uuid = () => randomUUID();
  return {
    organizationId: uuid(),
    organizationSlug: `absent-${unique()}`,
    ownerUserId: uuid(),
    memberUserId: uuid(),
    apiTokenId: uuid(),
    auditEventId: uuid(),
    projectId: uuid(),
    environmentId: uuid(),
    serviceId: uuid(),
    deploymentId: uuid(),
    variableKey: "ABSENT_VARIABLE",
    secretKey: "ABSENT_SECRET",
    serverId: uuid(),
    jobId: uuid(),
    gatewayId: uuid(),
    restApiId: uuid(),
    proxyApiId: uuid(),
    consumerKeyId: uuid(),
    domainHostname: `absent-${unique()}.example.com`,
    webhookEndpointId: uuid(),
    dataPlaneId: uuid(),
    privateLinkId: uuid(),
    databaseId: uuid(),
    backupId: uuid(),
  };
}

export type RpcOutcome =
  | { ok: true; json: string; headers: Headers }
  | { ok: false; error: ConnectError; errorCode: string | null };

/** How long a server stream may stay silent before the call counts as accepted. */
const STREAM_QUIET_MS = 750;

/**
 * Calls one RPC by key over the Connect protocol (JSON), with an optional bearer credential and
 * extra headers. Never throws for an RPC error: the outcome carries it, with the catalogue code.
 * A server stream counts as accepted once it yields a message or stays open and quiet.
 */
export async function callRpc(
  baseUrl: string,
  key: string,
  request: MessageInitShape<DescMessage>,
  options: { token?: string; headers?: Record<string, string> } = {},
): Promise<RpcOutcome> {
  const found = servedRpcs().find((r) => r.key === key);
  if (!found) throw new Error(`${key} is not served (not in SERVICES)`);
  const { method } = found;
  if (method.methodKind !== "unary" && method.methodKind !== "server_streaming")
    throw new Error(`${key}: ${method.methodKind} RPCs are not supported by callRpc yet`);
  // The generic client: one function per method, by the method's local name.
  const client = createClient(
    method.parent,
    createConnectTransport({ baseUrl, httpVersion: "1.1" }),
  ) as unknown as Record<
    string,
    (request: unknown, options: CallOptions) => Promise<unknown> & AsyncIterable<unknown>
  >;
  const call = client[method.localName]!;
  const headers: Record<string, string> = { ...options.headers };
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  let responseHeaders = new Headers();
  const onHeader = (h: Headers) => {
    responseHeaders = h;
  };
  try {
    if (method.methodKind === "unary") {
      const res = (await call(request, { headers, onHeader })) as MessageShape<DescMessage>;
      return { ok: true, json: toJsonString(method.output, res), headers: responseHeaders };
    }
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), STREAM_QUIET_MS);
    try {
      const stream = call(request, { headers, onHeader, signal: abort.signal });
      for await (const msg of stream) {
        abort.abort();
        const json = toJsonString(method.output, msg as MessageShape<DescMessage>);
        return { ok: true, json, headers: responseHeaders };
      }
      return { ok: true, json: "", headers: responseHeaders };
    } catch (err) {
      if (abort.signal.aborted) return { ok: true, json: "", headers: responseHeaders };
      throw err;
    } finally {
      clearTimeout(timer);
    }
  } catch (err) {
    const error = ConnectError.from(err);
    return { ok: false, error, errorCode: error.metadata.get("flotilla-error-code") };
  }
}
