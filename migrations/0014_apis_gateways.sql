-- Modules apis and gateways: API definitions, consumer keys, gateways with their own tokens, API
-- deployments (desired, written by the API) and each gateway's observed status per deployment
-- (written only by gateway reports).

CREATE TABLE apis (
  id uuid PRIMARY KEY,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  name text NOT NULL CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$'),
  kind text NOT NULL CHECK (kind IN ('RestApi', 'LlmProvider', 'LlmProxy')),
  -- Non-secret definition (context path, upstream, operations, models, rate limit...).
  definition jsonb NOT NULL,
  -- An LlmProvider's upstream credential, sealed by the config module's keyring.
  credential_sealed bytea,
  credential_key_id text,
  -- An LlmProxy's provider (an LlmProvider of the same organization).
  provider_api_id uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (organization_id, name),
  UNIQUE (organization_id, id),
  -- Deferrable: `flotilla migrate` copies a table's rows in one transaction in key order, and a
  -- self-reference must not depend on that order.
  FOREIGN KEY (organization_id, provider_api_id) REFERENCES apis (organization_id, id)
    DEFERRABLE INITIALLY DEFERRED,
  CONSTRAINT apis_credential_pair CHECK ((credential_sealed IS NULL) = (credential_key_id IS NULL)),
  CONSTRAINT apis_proxy_has_provider CHECK ((kind = 'LlmProxy') = (provider_api_id IS NOT NULL))
);

CREATE TABLE api_consumer_keys (
  id uuid PRIMARY KEY,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  api_id uuid NOT NULL REFERENCES apis (id) ON DELETE CASCADE,
  name text NOT NULL CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$'),
  -- SHA-256 of the key: it carries 256 random bits, so a fast hash is enough.
  key_hash bytea NOT NULL UNIQUE,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (api_id, name)
);

CREATE TABLE gateways (
  id uuid PRIMARY KEY,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  data_plane_id uuid NOT NULL,
  name text NOT NULL CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$'),
  token_hash bytea NOT NULL UNIQUE,
  -- Observed: written by the gateway's own sync calls.
  last_seen_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (organization_id, name),
  UNIQUE (organization_id, id),
  FOREIGN KEY (organization_id, data_plane_id) REFERENCES data_planes (organization_id, id)
);

-- One row per (gateway, API): the current deployment. A redeploy gives it a new deployment_id;
-- every state change moves deployed_at forward by at least one millisecond.
CREATE TABLE api_deployments (
  deployment_id uuid NOT NULL UNIQUE,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  api_id uuid NOT NULL,
  gateway_id uuid NOT NULL,
  state text NOT NULL CHECK (state IN ('DEPLOYED', 'UNDEPLOYED')),
  deployed_at timestamptz NOT NULL CHECK (deployed_at = date_trunc('milliseconds', deployed_at)),
  -- The definition as it was deployed (immutable for this deployment_id). Never secrets.
  content jsonb NOT NULL,
  created_by text NOT NULL,
  PRIMARY KEY (gateway_id, api_id),
  FOREIGN KEY (organization_id, api_id) REFERENCES apis (organization_id, id) ON DELETE CASCADE,
  FOREIGN KEY (organization_id, gateway_id) REFERENCES gateways (organization_id, id) ON DELETE CASCADE
);
CREATE INDEX api_deployments_gateway_idx ON api_deployments (gateway_id, deployed_at);

-- Observed: what a gateway reports about one deployment. Only the gateway-report path writes it.
CREATE TABLE api_deployment_status (
  gateway_id uuid NOT NULL REFERENCES gateways (id) ON DELETE CASCADE,
  api_id uuid NOT NULL,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  deployment_id uuid NOT NULL,
  -- The deployed_at of the deployment the gateway observed: an older report never overwrites a newer one.
  observed_deployed_at timestamptz NOT NULL,
  status text NOT NULL CHECK (status IN ('deployed', 'undeployed', 'failed')),
  reason text CHECK (length(reason) <= 1000),
  observed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (gateway_id, api_id)
);
