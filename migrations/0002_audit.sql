-- Module audit: one row per mutation, with who, what, on which target, and the request context.
-- No foreign keys: the trail outlives the objects it names.

CREATE TABLE audit_log (
  id uuid PRIMARY KEY,
  organization_id uuid,
  actor_type text NOT NULL CHECK (actor_type IN ('user', 'token', 'system', 'anonymous')),
  actor_id text,
  action text NOT NULL CHECK (action ~ '^[a-z_]+(\.[a-z_]+)+$'),
  target_type text,
  target_id text,
  correlation_id text NOT NULL,
  traceparent text NOT NULL,
  request_id text,
  details jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_org_time_idx ON audit_log (organization_id, created_at DESC);
