-- Module servers: machines that run an agent, the one-time join tokens that enrol them, their
-- control-channel affinity and liveness, and dispatches (durable intents addressed to an agent).

CREATE TABLE join_tokens (
  id uuid PRIMARY KEY,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  -- SHA-256 of the token: it carries 256 random bits, so a fast hash is enough.
  token_hash bytea NOT NULL UNIQUE,
  server_name text NOT NULL CHECK (server_name ~ '^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$'),
  created_by text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  used_at timestamptz,
  server_id uuid
);

CREATE TABLE servers (
  id uuid PRIMARY KEY,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  name text NOT NULL CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$'),
  -- The per-server secret the agent proves with an HMAC; sealed, because the hub must use it.
  secret_sealed bytea NOT NULL,
  secret_key_id text NOT NULL,
  -- Affinity and liveness: written by the replica holding the control channel, as compare-and-sets.
  status text NOT NULL DEFAULT 'offline' CHECK (status IN ('online', 'offline')),
  connected_hub_id text,
  session_id text,
  connected_at timestamptz,
  last_heartbeat timestamptz,
  disconnected_at timestamptz,
  -- What the agent reports about itself.
  agent_version text,
  drivers jsonb NOT NULL DEFAULT '[]'::jsonb,
  cores integer,
  memory_bytes bigint,
  disk_free_bytes bigint,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (organization_id, name)
);

CREATE TABLE dispatches (
  id uuid PRIMARY KEY,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  server_id uuid NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
  service_id uuid,
  deployment_id uuid,
  op text NOT NULL CHECK (op IN ('deploy', 'start', 'stop', 'restart', 'delete', 'job')),
  -- Bulky arguments live here, never in a NOTIFY; secrets never live here either.
  args jsonb NOT NULL DEFAULT '{}'::jsonb,
  state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'in_progress', 'done', 'failed')),
  claimed_by text,
  attempts integer NOT NULL DEFAULT 0,
  result jsonb,
  error text,
  deadline_at timestamptz,
  correlation_id text NOT NULL,
  traceparent text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dispatches_server_state_idx ON dispatches (server_id, state, created_at);
