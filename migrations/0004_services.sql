-- Module services: services (apps and managed databases) and their immutable deployments.
-- Desired columns are written by the API; observed_* and the deployments' status columns only by
-- the agent-report path.

CREATE TABLE services (
  id uuid PRIMARY KEY,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  project_id uuid NOT NULL REFERENCES projects (id),
  -- No cascade: the projects module asks this module to remove its services (and their config)
  -- before it deletes an environment, so a forgotten path fails loudly instead of orphaning config.
  environment_id uuid NOT NULL REFERENCES environments (id),
  slug text NOT NULL CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$'),
  name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
  kind text NOT NULL DEFAULT 'app' CHECK (kind IN ('app', 'database')),
  template_id text,
  visibility text NOT NULL CHECK (visibility IN ('PUBLIC', 'PRIVATE')),
  server_id uuid,
  spec jsonb NOT NULL,
  desired_deployment_id uuid,
  observed_status text NOT NULL DEFAULT 'unknown'
    CHECK (observed_status IN ('unknown', 'pending', 'deploying', 'running', 'stopped', 'failed')),
  observed_reason text,
  observed_deployment_id uuid,
  observed_endpoint text,
  observed_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (environment_id, slug),
  -- A managed database is never public: the database refuses it, not just the API.
  CONSTRAINT services_database_private CHECK (kind <> 'database' OR visibility = 'PRIVATE')
);
CREATE INDEX services_org_idx ON services (organization_id, project_id, environment_id);

CREATE TABLE deployments (
  id uuid PRIMARY KEY,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  service_id uuid NOT NULL REFERENCES services (id) ON DELETE CASCADE,
  number integer NOT NULL CHECK (number > 0),
  spec jsonb NOT NULL,
  config_version text NOT NULL,
  reason text NOT NULL CHECK (reason IN ('create', 'deploy', 'rollback', 'config_change')),
  source_deployment_id uuid REFERENCES deployments (id) ON DELETE SET NULL,
  created_by text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  status text NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'deploying', 'running', 'failed', 'superseded', 'stopped')),
  status_reason text,
  endpoint text,
  observed_at timestamptz,
  UNIQUE (service_id, number)
);

ALTER TABLE services
  ADD CONSTRAINT services_desired_deployment_fk
  FOREIGN KEY (desired_deployment_id) REFERENCES deployments (id) DEFERRABLE INITIALLY DEFERRED;
