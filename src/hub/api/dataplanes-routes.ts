// Connect handlers for DataPlaneService: data planes and their private links as rows.
import type { JsonObject } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import { DataPlaneService as DataPlaneRpc } from "../../gen/flotilla/v1/dataplanes_pb.js";
import type { Caller } from "../../shared/index.js";
import type { Db } from "../../store/index.js";
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
  db: Db;
  /** The organization's servers by data plane id (a port onto the servers module). */
  servers(
    c: Caller,
    defaultPlaneId: string,
  ): Promise<Map<string, Array<{ id: string; name: string }>>>;
}

const dataPlane = (
  p: DataPlane,
  state: PlaneState | undefined,
  servers: Array<{ id: string; name: string }> = [],
) => ({
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
  servers,
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
  const withState = async (c: Caller, planes: DataPlane[]) => {
    const states = await o.links.planeStates(planes.map((p) => p.id));
    const defaultPlane =
      planes.find((p) => p.isDefault) ?? (await o.dataPlanes.defaultFor(o.db, c.organizationId));
    const servers = await o.servers(c, defaultPlane.id);
    return planes.map((p) => dataPlane(p, states.get(p.id), servers.get(p.id)));
  };
  router.service(DataPlaneRpc, {
    async listDataPlanes(_req, ctx) {
      const c = caller(ctx);
      return { dataPlanes: await withState(c, await o.dataPlanes.list(c)) };
    },
    async getDataPlane(req, ctx) {
      const c = caller(ctx);
      const plane = await o.dataPlanes.get(c, req.dataPlane);
      return { dataPlane: (await withState(c, [plane]))[0] };
    },
    async createDataPlane(req, ctx) {
      const c = caller(ctx);
      const plane = await o.dataPlanes.create(c, {
        name: req.name,
        ...(req.region ? { region: req.region } : {}),
        ...(req.provisioner ? { provisioner: req.provisioner } : {}),
      });
      return { dataPlane: (await withState(c, [plane]))[0] };
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
