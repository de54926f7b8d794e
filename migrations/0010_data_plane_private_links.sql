-- Module dataplanes: private links as rows (seed 000), the converge requests that wake the
-- data-plane controller, and the legacy `private_links` array kept as a projection of the rows.

-- The legacy shape: one untagged config object per link (the provider follows from its keys). From
-- here on the rows are the truth and the trigger below rewrites this array from them; it stays
-- only while a legacy reader exists (docs/private-links.md, "Retiring the projection").
ALTER TABLE data_planes ADD COLUMN private_links jsonb NOT NULL DEFAULT '[]'::jsonb
  CHECK (jsonb_typeof(private_links) = 'array');
-- Which operator-configured provisioner converges this data plane (hub option; `local` is built in).
ALTER TABLE data_planes ADD COLUMN provisioner text NOT NULL DEFAULT 'local'
  CHECK (provisioner ~ '^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$');

CREATE TABLE data_plane_private_links (
  id uuid PRIMARY KEY,
  data_plane_id uuid NOT NULL REFERENCES data_planes (id) ON DELETE CASCADE,
  provider text NOT NULL CHECK (provider IN ('aws', 'azure', 'gcp')),
  -- Desired state, written by users through the API only.
  config jsonb NOT NULL CHECK (jsonb_typeof(config) = 'object' AND octet_length(config::text) <= 16384),
  service_identity text GENERATED ALWAYS AS (
    CASE provider WHEN 'gcp' THEN config ->> 'service_attachment' ELSE config ->> 'service_name' END
  ) STORED,
  -- Bumped by the trigger below on every config or provider change.
  generation bigint NOT NULL DEFAULT 1 CHECK (generation >= 1),
  -- Observed state, written by the data-plane controller only, always for the current generation.
  status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'provisioned', 'failed')),
  details jsonb,
  error text,
  observed_at timestamptz,
  -- clock_timestamp(): rows inserted in one transaction (the backfill) keep their order.
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  CONSTRAINT data_plane_private_links_identity_present
    CHECK (service_identity IS NOT NULL AND length(service_identity) BETWEEN 1 AND 1024),
  CONSTRAINT data_plane_private_links_identity_key UNIQUE (data_plane_id, provider, service_identity)
);

-- One row per data plane that ever had a link change: `requested` counts changes, `converged` is
-- the count the last finished converge covered. A converge is due while requested > converged;
-- however many changes arrived, one converge covers them all (coalescing). The claim columns make
-- the converge a compare-and-set lease, so of several hub replicas one converges a data plane.
CREATE TABLE data_plane_converge_requests (
  data_plane_id uuid PRIMARY KEY REFERENCES data_planes (id) ON DELETE CASCADE,
  requested bigint NOT NULL DEFAULT 1,
  requested_at timestamptz NOT NULL DEFAULT now(),
  converged bigint NOT NULL DEFAULT 0,
  converged_at timestamptz,
  claimed_by text,
  claimed_until timestamptz,
  attempts integer NOT NULL DEFAULT 0,
  last_error text,
  next_attempt_at timestamptz,
  CHECK (converged <= requested)
);
CREATE INDEX data_plane_converge_requests_due_idx ON data_plane_converge_requests (next_attempt_at)
  WHERE requested > converged;

-- A config or provider change is a new generation: the observed columns describe the old one, so
-- they are reset in the same write. A link never moves to another data plane.
CREATE FUNCTION data_plane_private_links_new_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.data_plane_id IS DISTINCT FROM OLD.data_plane_id THEN
    RAISE EXCEPTION 'a private link cannot move to another data plane' USING ERRCODE = 'check_violation';
  END IF;
  IF NEW.config IS DISTINCT FROM OLD.config OR NEW.provider IS DISTINCT FROM OLD.provider THEN
    NEW.generation := OLD.generation + 1;
    NEW.status := 'pending';
    NEW.details := NULL;
    NEW.error := NULL;
    NEW.observed_at := NULL;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER data_plane_private_links_new_generation BEFORE UPDATE ON data_plane_private_links
  FOR EACH ROW EXECUTE FUNCTION data_plane_private_links_new_generation();

-- Desired state changed: rewrite the legacy projection, record a durable converge request, then
-- signal (NOTIFY is delivered at commit, so a rolled-back change never wakes anyone).
CREATE FUNCTION data_plane_private_links_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  plane uuid := CASE WHEN TG_OP = 'DELETE' THEN OLD.data_plane_id ELSE NEW.data_plane_id END;
BEGIN
  -- A data plane being deleted takes its links by cascade: nothing is left to converge.
  IF NOT EXISTS (SELECT 1 FROM data_planes WHERE id = plane) THEN
    RETURN NULL;
  END IF;
  UPDATE data_planes SET private_links = COALESCE(
    (SELECT jsonb_agg(l.config ORDER BY l.created_at, l.id)
       FROM data_plane_private_links l WHERE l.data_plane_id = plane),
    '[]'::jsonb)
  WHERE id = plane;
  INSERT INTO data_plane_converge_requests (data_plane_id, requested, requested_at)
  VALUES (plane, 1, now())
  -- A change may be the fix for a failing provisioner run: it is tried at once, not after the
  -- backoff (attempts keep counting, so a run that fails again backs off further).
  ON CONFLICT (data_plane_id) DO UPDATE
    SET requested = data_plane_converge_requests.requested + 1, requested_at = now(),
        next_attempt_at = NULL;
  PERFORM pg_notify('flotilla_dataplanes', plane::text);
  RETURN NULL;
END $$;
CREATE TRIGGER data_plane_private_links_added_or_removed AFTER INSERT OR DELETE ON data_plane_private_links
  FOR EACH ROW EXECUTE FUNCTION data_plane_private_links_changed();
-- Only desired columns: the controller's status writes (status, details, error, observed_at)
-- never fire it, so observing never causes another converge.
CREATE TRIGGER data_plane_private_links_config_changed AFTER UPDATE OF config, provider ON data_plane_private_links
  FOR EACH ROW WHEN (OLD.config IS DISTINCT FROM NEW.config OR OLD.provider IS DISTINCT FROM NEW.provider)
  EXECUTE FUNCTION data_plane_private_links_changed();
