-- Module databases: backups of managed databases (files on the agent that took them; size and
-- checksum recorded here) and per-database backup schedules run by the hub's sweep.

CREATE TABLE database_backups (
  id uuid PRIMARY KEY,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  service_id uuid NOT NULL REFERENCES services (id) ON DELETE CASCADE,
  -- The server holding the file: a restore runs there.
  server_id uuid NOT NULL,
  -- The job that takes it; its result settles this row.
  dispatch_id uuid NOT NULL UNIQUE,
  origin text NOT NULL CHECK (origin IN ('manual', 'schedule')),
  state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
  file text,
  size_bytes bigint CHECK (size_bytes >= 0),
  sha256 text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
  error text,
  duration_ms bigint,
  created_by text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  CONSTRAINT database_backups_done_has_file CHECK (
    state <> 'done' OR (file IS NOT NULL AND size_bytes IS NOT NULL AND sha256 IS NOT NULL)
  )
);
CREATE INDEX database_backups_service_idx ON database_backups (service_id, created_at DESC);
CREATE INDEX database_backups_pending_idx ON database_backups (state) WHERE state = 'pending';

CREATE TABLE database_backup_schedules (
  service_id uuid PRIMARY KEY REFERENCES services (id) ON DELETE CASCADE,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  cron text NOT NULL CHECK (length(cron) BETWEEN 1 AND 200),
  retention integer NOT NULL CHECK (retention BETWEEN 1 AND 1000),
  next_run_at timestamptz NOT NULL,
  last_run_at timestamptz,
  created_by text NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX database_backup_schedules_due_idx ON database_backup_schedules (next_run_at);
