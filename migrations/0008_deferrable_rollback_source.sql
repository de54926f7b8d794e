-- Module services: a deployment's source_deployment_id (a rollback's origin) may be checked at
-- commit, so a copy of an installation (flotilla migrate) can insert deployments in any order.
ALTER TABLE deployments
  ALTER CONSTRAINT deployments_source_deployment_id_fkey DEFERRABLE INITIALLY IMMEDIATE;
