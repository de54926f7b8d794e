// Connect handlers for DatabasesService: create from the catalogue, connection info, backups, restore, schedules.
import type { ConnectRouter } from "@connectrpc/connect";
import { DatabasesService as DatabasesRpc } from "../../gen/flotilla/v1/databases_pb.js";
import { Driver } from "../../gen/flotilla/v1/services_pb.js";
import type { Backup, BackupSchedule, DatabasesService } from "../databases/index.js";
import { hasCapability } from "../identity/index.js";
import type { ServicesService } from "../services/index.js";
import { caller, principal, ts } from "./handler-context.js";
import { serviceMessage } from "./services-routes.js";

export interface DatabasesRouteOptions {
  services: ServicesService;
  databases: DatabasesService;
}

const DRIVER_FROM_PROTO = new Map<Driver, "exec" | "docker">([
  [Driver.EXEC, "exec"],
  [Driver.DOCKER, "docker"],
]);

const backup = (b: Backup) => ({
  id: b.id,
  serviceId: b.serviceId,
  serverId: b.serverId,
  state: b.state,
  origin: b.origin,
  file: b.file ?? "",
  sizeBytes: BigInt(b.sizeBytes ?? 0),
  sha256: b.sha256 ?? "",
  error: b.error ?? "",
  durationMs: BigInt(b.durationMs ?? 0),
  createdAt: ts(b.createdAt),
  finishedAt: ts(b.finishedAt),
});

const schedule = (s: BackupSchedule | null) =>
  s
    ? {
        serviceId: s.serviceId,
        cron: s.cron,
        retention: s.retention,
        nextRunAt: ts(s.nextRunAt),
        lastRunAt: ts(s.lastRunAt),
      }
    : undefined;

export function databasesRoutes(router: ConnectRouter, o: DatabasesRouteOptions): void {
  const { databases } = o;
  router.service(DatabasesRpc, {
    async createDatabaseService(req, ctx) {
      const c = caller(ctx);
      const driver =
        req.driver === Driver.UNSPECIFIED
          ? undefined
          : (DRIVER_FROM_PROTO.get(req.driver) ?? ("unknown" as "exec"));
      const r = await o.services.createDatabase(c, {
        environmentId: req.environmentId,
        name: req.name,
        slug: req.slug,
        templateId: req.templateId,
        serverId: req.serverId,
        deployNow: req.deployNow,
        driver,
      });
      // Without the password: the endpoint is known at once only under Docker ({slug}:5432).
      const info = await databases.connectionInfo(c, r.service.id, false);
      return {
        service: serviceMessage(r.service),
        deploymentId: r.deployment?.id ?? "",
        connectionUri: info.uri,
      };
    },
    async getConnectionInfo(req, ctx) {
      const reveal = hasCapability(principal(ctx).role, "config.reveal");
      const info = await databases.connectionInfo(caller(ctx), req.serviceId, reveal);
      return {
        host: info.host,
        port: info.port,
        user: info.user,
        database: info.database,
        password: info.password ?? "",
        uri: info.uri,
        passwordIncluded: info.password !== null,
        status: info.status,
      };
    },
    async createBackup(req, ctx) {
      return { backup: backup(await databases.createBackup(caller(ctx), req.serviceId)) };
    },
    async listBackups(req, ctx) {
      const list = await databases.listBackups(caller(ctx), req.serviceId, req.limit);
      return { backups: list.map(backup) };
    },
    async getBackup(req, ctx) {
      return { backup: backup(await databases.getBackup(caller(ctx), req.backupId)) };
    },
    async restoreBackup(req, ctx) {
      const jobId = await databases.restore(caller(ctx), req.serviceId, req.backupId, req.confirm);
      return { jobId };
    },
    async setBackupSchedule(req, ctx) {
      const s = await databases.setSchedule(caller(ctx), req.serviceId, req.cron, req.retention);
      return { schedule: schedule(s) };
    },
    async getBackupSchedule(req, ctx) {
      return { schedule: schedule(await databases.getSchedule(caller(ctx), req.serviceId)) };
    },
  });
}
