-- Module services: a managed database is a service made from a catalogue template, and it stays
-- one. kind and template_id go together and never change after creation, so the constraint that
-- keeps a database PRIVATE cannot be escaped by turning the row into an app first.
ALTER TABLE services
  ADD CONSTRAINT services_database_template
  CHECK ((kind = 'database') = (template_id IS NOT NULL));

CREATE FUNCTION services_kind_is_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.kind IS DISTINCT FROM OLD.kind OR NEW.template_id IS DISTINCT FROM OLD.template_id THEN
    RAISE EXCEPTION 'a service''s kind and template are fixed at creation (service %)', OLD.id
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END
$$;

CREATE TRIGGER services_kind_is_fixed
  BEFORE UPDATE OF kind, template_id ON services
  FOR EACH ROW EXECUTE FUNCTION services_kind_is_fixed();
