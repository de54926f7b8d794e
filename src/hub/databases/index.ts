// Public entry of the databases module: connection info, backups, restores and backup schedules.
export { type Cron, nextRun, parseCron } from "./cron.js";
export type {
  CredentialsPort,
  DatabaseService,
  JobState,
  JobsPort,
  ServicesPort,
} from "./ports.js";
export {
  type Backup,
  type BackupSchedule,
  type BackupState,
  type ConnectionInfo,
  connectionUri,
  DatabasesService,
} from "./service.js";
