// Connect handlers for ApiService and GatewayService: API definitions, consumer keys, deployments, gateways.
import type { ConnectRouter } from "@connectrpc/connect";
import {
  ApiKind,
  ApiService as ApiRpc,
  GatewayService as GatewayRpc,
} from "../../gen/flotilla/v1/apis_pb.js";
import { type ApiKindName, invalid } from "../../shared/index.js";
import type { Api, ApiDeployment, ApisService } from "../apis/index.js";
import type { Gateway, GatewaysService, ServiceDomain, ServiceDomains } from "../gateways/index.js";
import { caller, ts } from "./handler-context.js";

const KIND_TO_NAME = new Map<ApiKind, ApiKindName>([
  [ApiKind.REST_API, "RestApi"],
  [ApiKind.LLM_PROVIDER, "LlmProvider"],
  [ApiKind.LLM_PROXY, "LlmProxy"],
]);
const NAME_TO_KIND = new Map([...KIND_TO_NAME].map(([k, v]) => [v, k]));

const api = (a: Api) => ({
  id: a.id,
  name: a.name,
  kind: NAME_TO_KIND.get(a.kind) ?? ApiKind.UNSPECIFIED,
  definitionJson: JSON.stringify(a.definition),
  hasCredential: a.hasCredential,
  providerApiId: a.providerApiId ?? "",
  consumerKeys: a.consumerKeys.map((k) => ({ id: k.id, name: k.name, createdAt: ts(k.createdAt) })),
  createdAt: ts(a.createdAt),
  updatedAt: ts(a.updatedAt),
});

const deployment = (d: ApiDeployment) => ({
  deploymentId: d.deploymentId,
  apiId: d.apiId,
  apiName: d.apiName,
  kind: NAME_TO_KIND.get(d.kind) ?? ApiKind.UNSPECIFIED,
  gatewayId: d.gatewayId,
  state: d.state,
  deployedAt: ts(d.deployedAt),
  observedStatus: d.observed?.status ?? "",
  observedReason: d.observed?.reason ?? "",
  observedDeploymentId: d.observed?.deploymentId ?? "",
  observedAt: ts(d.observed?.at),
});

const gateway = (g: Gateway) => ({
  id: g.id,
  name: g.name,
  dataPlaneId: g.dataPlaneId,
  lastSeenAt: ts(g.lastSeenAt),
  createdAt: ts(g.createdAt),
});

export interface ApisRouteOptions {
  apis: ApisService;
  gateways: GatewaysService;
  /** How a gateway reaches this hub, for the printed command. */
  hubUrl: () => string;
  /** A new gateway gets the public routes of its data plane's services. */
  onGatewayCreated?: (organizationId: string) => void;
  domains: ServiceDomains;
}

const domain = (d: ServiceDomain) => ({
  id: d.id,
  serviceId: d.serviceId,
  hostname: d.hostname,
  createdAt: ts(d.createdAt),
});

export function apisRoutes(router: ConnectRouter, o: ApisRouteOptions): void {
  router.service(ApiRpc, {
    async createApi(req, ctx) {
      const kind = KIND_TO_NAME.get(req.kind);
      if (!kind) throw invalid("kind", "must be REST_API, LLM_PROVIDER or LLM_PROXY");
      const created = await o.apis.create(caller(ctx), {
        name: req.name,
        kind,
        definitionJson: req.definitionJson,
        credential: req.credential,
        provider: req.provider,
      });
      return { api: api(created) };
    },
    async listApis(_req, ctx) {
      return { apis: (await o.apis.list(caller(ctx))).map(api) };
    },
    async getApi(req, ctx) {
      return { api: api(await o.apis.get(caller(ctx), req.api)) };
    },
    async deleteApi(req, ctx) {
      await o.apis.remove(caller(ctx), req.api);
      return {};
    },
    async createConsumerKey(req, ctx) {
      const r = await o.apis.createConsumerKey(caller(ctx), req.api, req.name);
      return {
        consumerKey: {
          id: r.consumerKey.id,
          name: r.consumerKey.name,
          createdAt: ts(r.consumerKey.createdAt),
        },
        key: r.key,
      };
    },
    async deleteConsumerKey(req, ctx) {
      await o.apis.deleteConsumerKey(caller(ctx), req.api, req.consumerKeyId);
      return {};
    },
    async deployApi(req, ctx) {
      return { deployment: deployment(await o.apis.deploy(caller(ctx), req.api, req.gateway)) };
    },
    async undeployApi(req, ctx) {
      return { deployment: deployment(await o.apis.undeploy(caller(ctx), req.api, req.gateway)) };
    },
    async listApiDeployments(req, ctx) {
      const list = await o.apis.listDeployments(caller(ctx), {
        ...(req.api ? { api: req.api } : {}),
        ...(req.gateway ? { gateway: req.gateway } : {}),
      });
      return { deployments: list.map(deployment) };
    },
  });
  router.service(GatewayRpc, {
    async createGateway(req, ctx) {
      const c = caller(ctx);
      const r = await o.gateways.create(c, { name: req.name, dataPlane: req.dataPlane });
      o.onGatewayCreated?.(c.organizationId);
      return {
        gateway: gateway(r.gateway),
        token: r.token,
        command: `npx flotilla gateway --hub ${o.hubUrl()} --token ${r.token} --port 8000 --data-dir /var/lib/flotilla-gateway`,
      };
    },
    async listGateways(_req, ctx) {
      return { gateways: (await o.gateways.list(caller(ctx))).map(gateway) };
    },
    async getGateway(req, ctx) {
      return { gateway: gateway(await o.gateways.get(caller(ctx), req.gateway)) };
    },
    async deleteGateway(req, ctx) {
      await o.gateways.remove(caller(ctx), req.gateway);
      return {};
    },
    async addServiceDomain(req, ctx) {
      return { domain: domain(await o.domains.add(caller(ctx), req.serviceId, req.hostname)) };
    },
    async listServiceDomains(req, ctx) {
      return { domains: (await o.domains.list(caller(ctx), req.serviceId)).map(domain) };
    },
    async removeServiceDomain(req, ctx) {
      await o.domains.remove(caller(ctx), req.serviceId, req.hostname);
      return {};
    },
  });
}
