-- Module config: variables and sealed secrets scoped to an environment or a service. A scope row
-- carries the revision that makes up the effective config version; entries die with their scope.

CREATE TABLE config_scopes (
  scope_type text NOT NULL CHECK (scope_type IN ('environment', 'service')),
  scope_id uuid NOT NULL,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  revision integer NOT NULL CHECK (revision > 0),
  PRIMARY KEY (scope_type, scope_id)
);

CREATE TABLE config_entries (
  id uuid PRIMARY KEY,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  scope_type text NOT NULL,
  scope_id uuid NOT NULL,
  key text NOT NULL CHECK (key ~ '^[A-Za-z_][A-Za-z0-9_]*$' AND length(key) <= 256),
  kind text NOT NULL CHECK (kind IN ('variable', 'secret')),
  -- Variables keep their value; secrets keep only the AES-256-GCM box and the master key's id.
  value text,
  sealed bytea,
  key_id text,
  updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (scope_type, scope_id, key),
  FOREIGN KEY (scope_type, scope_id) REFERENCES config_scopes (scope_type, scope_id) ON DELETE CASCADE,
  CONSTRAINT config_entries_sealed_secrets CHECK (
    (kind = 'variable' AND value IS NOT NULL AND sealed IS NULL AND key_id IS NULL)
    OR (kind = 'secret' AND value IS NULL AND sealed IS NOT NULL AND key_id IS NOT NULL)
  )
);
CREATE INDEX config_entries_org_idx ON config_entries (organization_id, scope_type, scope_id);
