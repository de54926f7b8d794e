// Connect handlers for DataPlaneService: data planes and their private links as rows.
import type { JsonObject } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import { DataPlaneService as DataPlaneRpc } from "../../gen/flotilla/v1/dataplanes_pb.js";
import type {
  DataPlane,
  DataPlanesService,
  PlaneState,
  PrivateLink,
  PrivateLinksService,
} from "../dataplanes/index.js";
import { caller, ts } from "./handler-context.js";

export interface DataPlanesRouteOptions {
  dataPlanes: DataPlanesService;
  links: PrivateLinksService;
}

const dataPlane = (p: DataPlane, state: PlaneState | undefined) => ({
  id: p.id,
  name: p.name,
  region: p.region ?? "",
  isDefault: p.isDefault,
  provisioner: state?.provisioner ?? "local",
  createdAt: ts(p.createdAt),
  convergence: {
    requested: BigInt(state?.converge.requested ?? 0),
    converged: BigInt(state?.converge.converged ?? 0),
    convergedAt: ts(state?.converge.convergedAt),
    lastError: state?.converge.lastError ?? "",
    attempts: state?.converge.attempts ?? 0,
    nextAttemptAt: ts(state?.converge.nextAttemptAt),
  },
});

const privateLink = (l: PrivateLink) => ({
  id: l.id,
  dataPlaneId: l.dataPlaneId,
  provider: l.provider,
  config: l.config as JsonObject,
  serviceIdentity: l.serviceIdentity,
  generation: BigInt(l.generation),
  status: l.status,
  ...(l.details ? { details: l.details as JsonObject } : {}),
  error: l.error ?? "",
  observedAt: ts(l.observedAt),
  createdAt: ts(l.createdAt),
});

export function dataPlanesRoutes(router: ConnectRouter, o: DataPlanesRouteOptions): void {
  const withState = async (planes: DataPlane[]) => {
    const states = await o.links.planeStates(planes.map((p) => p.id));
    return planes.map((p) => dataPlane(p, states.get(p.id)));
  };
  router.service(DataPlaneRpc, {
    async listDataPlanes(_req, ctx) {
      return { dataPlanes: await withState(await o.dataPlanes.list(caller(ctx))) };
    },
    async getDataPlane(req, ctx) {
      const plane = await o.dataPlanes.get(caller(ctx), req.dataPlane);
      return { dataPlane: (await withState([plane]))[0] };
    },
    async createDataPlane(req, ctx) {
      const plane = await o.dataPlanes.create(caller(ctx), {
        name: req.name,
        ...(req.region ? { region: req.region } : {}),
        ...(req.provisioner ? { provisioner: req.provisioner } : {}),
      });
      return { dataPlane: (await withState([plane]))[0] };
    },
    async listPrivateLinks(req, ctx) {
      const { links } = await o.links.list(caller(ctx), req.dataPlane);
      return { privateLinks: links.map(privateLink) };
    },
    async addPrivateLink(req, ctx) {
      const link = await o.links.add(caller(ctx), {
        dataPlane: req.dataPlane,
        provider: req.provider,
        config: req.config,
      });
      return { privateLink: privateLink(link) };
    },
    async updatePrivateLink(req, ctx) {
      const link = await o.links.update(caller(ctx), {
        dataPlane: req.dataPlane,
        id: req.id,
        config: req.config,
        ...(req.provider ? { provider: req.provider } : {}),
        ...(req.expectedGeneration ? { expectedGeneration: Number(req.expectedGeneration) } : {}),
      });
      return { privateLink: privateLink(link) };
    },
    async removePrivateLink(req, ctx) {
      await o.links.remove(caller(ctx), { dataPlane: req.dataPlane, id: req.id });
      return {};
    },
  });
}
