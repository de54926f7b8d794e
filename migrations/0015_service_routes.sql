-- Module gateways: public routes of PUBLIC services on the gateways of their server's data plane.
-- Desired rows are written by the hub's route controller; a PRIVATE service can never hold a
-- DEPLOYED route: the triggers below refuse it, whatever writes the row.

CREATE TABLE service_routes (
  -- Plays the deployment id in the gateway sync protocol: new on every change of the route.
  route_id uuid NOT NULL UNIQUE,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  service_id uuid NOT NULL REFERENCES services (id) ON DELETE CASCADE,
  gateway_id uuid NOT NULL REFERENCES gateways (id) ON DELETE CASCADE,
  hostnames jsonb NOT NULL CHECK (jsonb_typeof(hostnames) = 'array' AND jsonb_array_length(hostnames) BETWEEN 1 AND 20),
  -- The endpoint the agent reports (host:port or URL), copied when the route was written.
  endpoint text NOT NULL CHECK (length(endpoint) BETWEEN 1 AND 300),
  state text NOT NULL CHECK (state IN ('DEPLOYED', 'UNDEPLOYED')),
  deployed_at timestamptz NOT NULL CHECK (deployed_at = date_trunc('milliseconds', deployed_at)),
  PRIMARY KEY (gateway_id, service_id)
);
CREATE INDEX service_routes_service_idx ON service_routes (service_id);

CREATE FUNCTION service_routes_public_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.state = 'DEPLOYED' AND NOT EXISTS (
    SELECT 1 FROM services s WHERE s.id = NEW.service_id AND s.visibility = 'PUBLIC'
  ) THEN
    RAISE EXCEPTION 'service % is not PUBLIC: it cannot have a public route', NEW.service_id
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER service_routes_public_only BEFORE INSERT OR UPDATE ON service_routes
  FOR EACH ROW EXECUTE FUNCTION service_routes_public_only();

-- A service turning PRIVATE loses its routes in the same statement: they are undeployed here
-- (deployed_at moves forward), so no window exists where a PRIVATE service is routed.
CREATE FUNCTION services_private_undeploys_routes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.visibility <> 'PUBLIC' THEN
    UPDATE service_routes SET state = 'UNDEPLOYED',
      deployed_at = greatest(date_trunc('milliseconds', clock_timestamp()), deployed_at + interval '1 millisecond')
    WHERE service_id = NEW.id AND state = 'DEPLOYED';
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER services_private_undeploys_routes AFTER UPDATE OF visibility ON services
  FOR EACH ROW EXECUTE FUNCTION services_private_undeploys_routes();

-- Custom domains a PUBLIC service is also routed at (beside <service>-<env>.<base domain>). A
-- hostname names one service installation-wide: two services cannot both claim it.
CREATE TABLE service_domains (
  id uuid PRIMARY KEY,
  organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  service_id uuid NOT NULL REFERENCES services (id) ON DELETE CASCADE,
  hostname text NOT NULL UNIQUE
    CHECK (hostname ~ '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$' AND length(hostname) <= 253),
  created_by text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX service_domains_service_idx ON service_domains (service_id);
