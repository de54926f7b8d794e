-- Module dataplanes: named groups of servers and gateways (a region, a cluster, a cloud account).
-- Every organization has one default data plane (created on first use); a server whose
-- data_plane_id is NULL belongs to it.

CREATE TABLE data_planes (
  id uuid PRIMARY KEY,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  name text NOT NULL CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$'),
  region text CHECK (length(region) BETWEEN 1 AND 100),
  is_default boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (organization_id, name),
  -- Lets other tables pin (organization_id, data_plane_id) pairs with a composite foreign key.
  UNIQUE (organization_id, id)
);
CREATE UNIQUE INDEX data_planes_one_default_idx ON data_planes (organization_id) WHERE is_default;

-- Owned by the servers module: which data plane a server belongs to (NULL: the default one). The
-- composite key keeps a server inside its own organization's data planes; deleting the data plane
-- moves its servers back to the default (PostgreSQL 15 accepts a column list on SET NULL).
ALTER TABLE servers ADD COLUMN data_plane_id uuid;
ALTER TABLE servers ADD CONSTRAINT servers_data_plane_fk FOREIGN KEY (organization_id, data_plane_id)
  REFERENCES data_planes (organization_id, id) ON DELETE SET NULL (data_plane_id);
