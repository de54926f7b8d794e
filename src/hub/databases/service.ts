// Managed databases after creation: connection info from the observed endpoint, backups and restores as
// agent jobs (a backup row settles from its job's result), and backup schedules run by the hub's sweep.
import {
  actorLabel,
  type Caller,
  checkId,
  FlotillaError,
  invalid,
  notFound,
  uuidv7,
} from "../../shared/index.js";
import type { Db, Queryable } from "../../store/index.js";
import { recordAudit } from "../audit/index.js";
import { appendEvent } from "../outbox/index.js";
import { nextRun, parseCron } from "./cron.js";
import type { CredentialsPort, DatabaseService, JobsPort, ServicesPort } from "./ports.js";

export type BackupState = "pending" | "running" | "done" | "failed";

export interface Backup {
  id: string;
  serviceId: string;
  serverId: string;
  state: BackupState;
  origin: "manual" | "schedule";
  file: string | null;
  sizeBytes: number | null;
  sha256: string | null;
  error: string | null;
  durationMs: number | null;
  createdAt: Date;
  finishedAt: Date | null;
}

export interface BackupSchedule {
  serviceId: string;
  cron: string;
  retention: number;
  nextRunAt: Date;
  lastRunAt: Date | null;
}

export interface ConnectionInfo {
  host: string;
  port: number;
  user: string;
  database: string;
  password: string | null;
  uri: string;
  status: string;
}

interface BackupRow {
  id: string;
  organization_id: string;
  service_id: string;
  server_id: string;
  dispatch_id: string;
  state: "pending" | "done" | "failed";
  origin: "manual" | "schedule";
  file: string | null;
  size_bytes: string | number | null;
  sha256: string | null;
  error: string | null;
  duration_ms: string | number | null;
  created_at: Date;
  finished_at: Date | null;
}

interface ScheduleRow {
  service_id: string;
  organization_id: string;
  cron: string;
  retention: number;
  next_run_at: Date;
  last_run_at: Date | null;
}

const BACKUP_COLUMNS = `id, organization_id, service_id, server_id, dispatch_id, state, origin, file, size_bytes, sha256, error,
  duration_ms, created_at, finished_at`;
const SCHEDULE_COLUMNS = "service_id, organization_id, cron, retention, next_run_at, last_run_at";

/** A dump of a large database takes long; the job's deadline is this (the reaper waits a minute more). */
const BACKUP_TIMEOUT_MS = 60 * 60_000;
const DEFAULT_RETENTION = 7;
const FILE = /^[A-Za-z0-9._-]{1,200}$/;

const toBackup = (r: BackupRow, running = false): Backup => ({
  id: r.id,
  serviceId: r.service_id,
  serverId: r.server_id,
  state: r.state === "pending" && running ? "running" : r.state,
  origin: r.origin,
  file: r.file,
  sizeBytes: r.size_bytes === null ? null : Number(r.size_bytes),
  sha256: r.sha256,
  error: r.error,
  durationMs: r.duration_ms === null ? null : Number(r.duration_ms),
  createdAt: r.created_at,
  finishedAt: r.finished_at,
});

const toSchedule = (r: ScheduleRow): BackupSchedule => ({
  serviceId: r.service_id,
  cron: r.cron,
  retention: r.retention,
  nextRunAt: r.next_run_at,
  lastRunAt: r.last_run_at,
});

/** The endpoint a database is reached at: exec reports loopback host:port; docker is {slug}:port on the environment network. */
function endpointOf(s: DatabaseService): { host: string; port: number } | null {
  if (s.driver === "docker") return { host: s.slug, port: s.port };
  const m = /^(.+):(\d+)$/.exec(s.observed.endpoint ?? "");
  return m ? { host: m[1]!, port: Number(m[2]) } : null;
}

export function connectionUri(
  host: string,
  port: number,
  user: string,
  database: string,
  password: string | null,
): string {
  const auth = encodeURIComponent(user) + (password ? `:${encodeURIComponent(password)}` : "");
  return `postgresql://${auth}@${host}:${port}/${encodeURIComponent(database)}`;
}

/** The service args a job needs so the hub adds the service's config (decrypted) when it sends it. */
const serviceArgs = (s: DatabaseService) => ({
  id: s.id,
  slug: s.slug,
  visibility: "PRIVATE",
  environment_id: s.environmentId,
});

export class DatabasesService {
  constructor(
    private readonly db: Db,
    private readonly services: ServicesPort,
    private readonly credentials: CredentialsPort,
    private readonly jobs: JobsPort,
  ) {}

  /** The service, if it is a managed database of the caller's organization. */
  private async database(c: Caller, idText: string, q: Queryable): Promise<DatabaseService> {
    const s = await this.services.get(c, checkId("service_id", idText), q);
    if (s.kind !== "database")
      throw new FlotillaError(
        "resource.conflict",
        `service_id: ${s.slug} is not a managed database (create one with CreateDatabaseService: flotilla db create)`,
        { field: "service_id" },
      );
    return s;
  }

  private static placed(s: DatabaseService): string {
    if (!s.serverId)
      throw new FlotillaError(
        "resource.conflict",
        `service_id: ${s.slug} is not placed on a server, so nothing runs it`,
        { field: "service_id" },
      );
    return s.serverId;
  }

  async connectionInfo(c: Caller, serviceId: string, reveal: boolean): Promise<ConnectionInfo> {
    const s = await this.database(c, serviceId, this.db);
    const { user, database } = await this.credentials.names(c, s.id);
    const at = endpointOf(s);
    const password = reveal ? await this.credentials.revealPassword(c, s.id) : null;
    return {
      host: at?.host ?? "",
      port: at?.port ?? 0,
      user,
      database,
      password,
      uri: at ? connectionUri(at.host, at.port, user, database, password) : "",
      status: s.observed.status,
    };
  }

  /** A backup job on the database's server; the row is pending until the job's result settles it. */
  async createBackup(c: Caller, serviceId: string): Promise<Backup> {
    return this.db.tx(async (tx) => {
      const s = await this.database(c, serviceId, tx);
      return this.insertBackup(tx, c.organizationId, s, "manual", actorLabel(c), c.actor);
    });
  }

  private async insertBackup(
    tx: Queryable,
    organizationId: string,
    s: DatabaseService,
    origin: "manual" | "schedule",
    createdBy: string,
    actor: Caller["actor"] | { type: "system"; id: null },
  ): Promise<Backup> {
    const serverId = DatabasesService.placed(s);
    const id = uuidv7();
    const dispatchId = await this.jobs.intend(tx, {
      organizationId,
      serverId,
      serviceId: s.id,
      deploymentId: s.desiredDeploymentId,
      args: {
        task: "postgres.backup",
        command: "pg_dump",
        backup_id: id,
        service: serviceArgs(s),
        timeout_ms: BACKUP_TIMEOUT_MS,
      },
    });
    const { rows } = await tx.query<BackupRow>(
      `INSERT INTO database_backups (id, organization_id, service_id, server_id, dispatch_id, origin, created_by)
       VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ${BACKUP_COLUMNS}`,
      [id, organizationId, s.id, serverId, dispatchId, origin, createdBy],
    );
    await recordAudit(tx, {
      organizationId,
      actor,
      action: "database.backup",
      target: { type: "service", id: s.id },
      details: { backup_id: id, origin, job_id: dispatchId },
    });
    return toBackup(rows[0]!);
  }

  /**
   * A pending backup takes its job's outcome: done with file, size and checksum, or failed with
   * the job's reason. A compare-and-set on state = 'pending', so two settlers write it once.
   */
  private async settle(r: BackupRow): Promise<Backup> {
    if (r.state !== "pending") return toBackup(r);
    const job = await this.jobs.state(this.db, r.dispatch_id);
    if (!job || job.state === "pending" || job.state === "in_progress")
      return toBackup(r, job?.state === "in_progress");
    const result = (job.result ?? {}) as Record<string, unknown>;
    let update: { state: "done" | "failed"; values: unknown[] };
    const ok =
      job.state === "done" &&
      typeof result.file === "string" &&
      FILE.test(result.file) &&
      Number.isSafeInteger(result.size_bytes) &&
      typeof result.sha256 === "string" &&
      /^[0-9a-f]{64}$/.test(result.sha256);
    if (ok) {
      update = {
        state: "done",
        values: [result.file, result.size_bytes, result.sha256, null, result.duration_ms ?? null],
      };
    } else {
      const reason =
        job.state === "done"
          ? "the agent reported a backup without its file, size or checksum"
          : (job.error ?? "the backup job failed");
      update = {
        state: "failed",
        values: [null, null, null, reason.slice(0, 4000), result.duration_ms ?? null],
      };
    }
    const settled = await this.db.tx(async (tx) => {
      const { rows } = await tx.query<BackupRow>(
        `UPDATE database_backups SET state = $2, file = $3, size_bytes = $4, sha256 = $5, error = $6,
                duration_ms = $7, finished_at = now()
         WHERE id = $1 AND state = 'pending' RETURNING ${BACKUP_COLUMNS}`,
        [r.id, update.state, ...update.values],
      );
      if (rows[0])
        await appendEvent(tx, {
          organizationId: r.organization_id,
          type: update.state === "done" ? "database.backup_done" : "database.backup_failed",
          subjectId: r.service_id,
          payload: { service_id: r.service_id, backup_id: r.id, state: update.state },
        });
      return rows[0];
    });
    return settled ? toBackup(settled) : this.readBackup(r.id);
  }

  private async readBackup(id: string): Promise<Backup> {
    const { rows } = await this.db.query<BackupRow>(
      `SELECT ${BACKUP_COLUMNS} FROM database_backups WHERE id = $1`,
      [id],
    );
    if (!rows[0]) throw notFound(`backup ${id}`);
    return toBackup(rows[0]);
  }

  async listBackups(c: Caller, serviceId: string, limit: number): Promise<Backup[]> {
    const n = limit || 50;
    if (!Number.isInteger(n) || n < 1 || n > 500)
      throw invalid("limit", "must be between 1 and 500");
    const s = await this.database(c, serviceId, this.db);
    const { rows } = await this.db.query<BackupRow>(
      `SELECT ${BACKUP_COLUMNS} FROM database_backups WHERE service_id = $1 AND organization_id = $2
       ORDER BY created_at DESC, id DESC LIMIT $3`,
      [s.id, c.organizationId, n],
    );
    return Promise.all(rows.map((r) => this.settle(r)));
  }

  async getBackup(c: Caller, idText: string): Promise<Backup> {
    const id = checkId("backup_id", idText);
    const { rows } = await this.db.query<BackupRow>(
      `SELECT ${BACKUP_COLUMNS} FROM database_backups WHERE id = $1 AND organization_id = $2`,
      [id, c.organizationId],
    );
    if (!rows[0]) throw notFound(`backup ${id}`);
    return this.settle(rows[0]);
  }

  /** Restores a finished backup into the running database, on the server holding its file. */
  async restore(
    c: Caller,
    serviceId: string,
    backupIdText: string,
    confirm: boolean,
  ): Promise<string> {
    const backupId = checkId("backup_id", backupIdText);
    if (!confirm)
      throw invalid(
        "confirm",
        "restoring replaces what the database holds with the backup's contents; set confirm to proceed",
      );
    const backup = await this.getBackup(c, backupId);
    return this.db.tx(async (tx) => {
      const s = await this.database(c, serviceId, tx);
      if (backup.serviceId !== s.id)
        throw new FlotillaError(
          "resource.conflict",
          `backup_id: backup ${backupId} belongs to another database; restore one of ${s.slug}'s backups`,
          { field: "backup_id" },
        );
      if (backup.state !== "done")
        throw new FlotillaError(
          "resource.conflict",
          `backup_id: backup ${backupId} is ${backup.state}${backup.error ? ` (${backup.error})` : ""}; only a finished backup can be restored`,
          { field: "backup_id" },
        );
      const serverId = DatabasesService.placed(s);
      if (serverId !== backup.serverId)
        throw new FlotillaError(
          "resource.conflict",
          `backup_id: the backup's file is on server ${backup.serverId}, and ${s.slug} now runs on ${serverId}`,
          { field: "backup_id" },
        );
      const jobId = await this.jobs.intend(tx, {
        organizationId: c.organizationId,
        serverId,
        serviceId: s.id,
        deploymentId: s.desiredDeploymentId,
        args: {
          task: "postgres.restore",
          command: "pg_restore",
          backup_id: backup.id,
          file: backup.file,
          sha256: backup.sha256,
          service: serviceArgs(s),
          timeout_ms: BACKUP_TIMEOUT_MS,
        },
      });
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "database.restore",
        target: { type: "service", id: s.id },
        details: { backup_id: backup.id, job_id: jobId },
      });
      await appendEvent(tx, {
        organizationId: c.organizationId,
        type: "database.restore_requested",
        subjectId: s.id,
        payload: { service_id: s.id, backup_id: backup.id, job_id: jobId },
      });
      return jobId;
    });
  }

  async getSchedule(c: Caller, serviceId: string): Promise<BackupSchedule | null> {
    const s = await this.database(c, serviceId, this.db);
    const { rows } = await this.db.query<ScheduleRow>(
      `SELECT ${SCHEDULE_COLUMNS} FROM database_backup_schedules WHERE service_id = $1 AND organization_id = $2`,
      [s.id, c.organizationId],
    );
    return rows[0] ? toSchedule(rows[0]) : null;
  }

  /** Sets the schedule (an empty cron removes it); the next run is computed now, in UTC. */
  async setSchedule(
    c: Caller,
    serviceId: string,
    cronText: string,
    retentionInput: number,
  ): Promise<BackupSchedule | null> {
    const cron = cronText.trim();
    if (cron.length > 200) throw invalid("cron", "must be at most 200 characters");
    const retention = retentionInput || DEFAULT_RETENTION;
    if (!Number.isInteger(retention) || retention < 1 || retention > 1000)
      throw invalid("retention", "must be from 1 to 1000");
    const next = cron ? nextRun(parseCron(cron), new Date()) : null;
    if (cron && !next) throw invalid("cron", `"${cron}" never runs in the next five years`);
    return this.db.tx(async (tx) => {
      const s = await this.database(c, serviceId, tx);
      if (cron) DatabasesService.placed(s);
      let schedule: BackupSchedule | null = null;
      if (!next) {
        await tx.query(
          "DELETE FROM database_backup_schedules WHERE service_id = $1 AND organization_id = $2",
          [s.id, c.organizationId],
        );
      } else {
        const { rows } = await tx.query<ScheduleRow>(
          `INSERT INTO database_backup_schedules (service_id, organization_id, cron, retention, next_run_at, created_by)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (service_id) DO UPDATE SET cron = excluded.cron, retention = excluded.retention,
             next_run_at = excluded.next_run_at, updated_at = now()
           RETURNING ${SCHEDULE_COLUMNS}`,
          [s.id, c.organizationId, cron, retention, next, actorLabel(c)],
        );
        schedule = toSchedule(rows[0]!);
      }
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: cron ? "database.schedule_set" : "database.schedule_removed",
        target: { type: "service", id: s.id },
        details: cron ? { cron, retention } : {},
      });
      return schedule;
    });
  }

  /**
   * One sweep (the hub runs it under an advisory lock; every claim is a compare-and-set anyway):
   * due schedules take their backup and move to their next run, pending backups settle from
   * their jobs, and scheduled backups beyond their schedule's retention are removed (rows here,
   * files by a prune job on their server). Returns what it did.
   */
  async sweep(now = new Date()): Promise<{ started: number; settled: number; pruned: number }> {
    let started = 0;
    const due = await this.db.query<ScheduleRow>(
      `SELECT ${SCHEDULE_COLUMNS} FROM database_backup_schedules WHERE next_run_at <= $1
       ORDER BY next_run_at LIMIT 100`,
      [now],
    );
    for (const r of due.rows) {
      const next = nextRun(parseCron(r.cron), now);
      const won = await this.db.tx(async (tx) => {
        const claimed = await tx.query(
          `UPDATE database_backup_schedules SET next_run_at = $3, last_run_at = $4
           WHERE service_id = $1 AND next_run_at = $2 RETURNING service_id`,
          [
            r.service_id,
            r.next_run_at,
            next ?? new Date(now.getTime() + 5 * 366 * 86_400_000),
            now,
          ],
        );
        if (!claimed.rows[0]) return false;
        // The schedule acts for its organization; the actor is only used to scope the lookup.
        const scope: Caller = {
          organizationId: r.organization_id,
          actor: { type: "user", id: "schedule" },
        };
        const s = await this.services.get(scope, r.service_id, tx);
        // Not placed: nothing can take it; the next run tries again.
        if (!s.serverId) return false;
        await this.insertBackup(tx, r.organization_id, s, "schedule", "schedule", {
          type: "system",
          id: null,
        });
        return true;
      });
      if (won) started++;
    }
    let settled = 0;
    const pending = await this.db.query<BackupRow>(
      `SELECT ${BACKUP_COLUMNS} FROM database_backups WHERE state = 'pending' ORDER BY created_at LIMIT 200`,
    );
    for (const r of pending.rows) if ((await this.settle(r)).state !== "pending") settled++;
    return { started, settled, pruned: await this.prune() };
  }

  /** Scheduled backups beyond retention (done ones by the count; failed ones by the same count). */
  private async prune(): Promise<number> {
    let pruned = 0;
    const schedules = await this.db.query<ScheduleRow>(
      `SELECT ${SCHEDULE_COLUMNS} FROM database_backup_schedules`,
    );
    for (const sch of schedules.rows) {
      await this.db.tx(async (tx) => {
        const { rows } = await tx.query<BackupRow>(
          `DELETE FROM database_backups WHERE id IN (
             SELECT id FROM (
               SELECT id, row_number() OVER (PARTITION BY state ORDER BY created_at DESC, id DESC) AS n
               FROM database_backups
               WHERE service_id = $1 AND origin = 'schedule' AND state IN ('done', 'failed')
             ) ranked WHERE n > $2)
           RETURNING ${BACKUP_COLUMNS}`,
          [sch.service_id, sch.retention],
        );
        pruned += rows.length;
        const byServer = new Map<string, string[]>();
        for (const r of rows)
          if (r.file) byServer.set(r.server_id, [...(byServer.get(r.server_id) ?? []), r.file]);
        for (const [serverId, files] of byServer) {
          await this.jobs.intend(tx, {
            organizationId: sch.organization_id,
            serverId,
            serviceId: sch.service_id,
            deploymentId: null,
            args: {
              task: "postgres.prune",
              command: "rm",
              service_id: sch.service_id,
              files,
              timeout_ms: 60_000,
            },
          });
        }
      });
    }
    return pruned;
  }
}
