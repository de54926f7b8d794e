-- Module dataplanes: one data_plane_private_links row per element of a legacy `private_links`
-- array, in array order. Aborts (and so applies nothing) on an element with no service identity,
-- an unknown shape, or a duplicate identity on one data plane, naming the data plane and position.
-- On a database without legacy arrays (every fresh one) it inserts nothing.
DO $$
DECLARE
  plane record;
  entry jsonb;
  pos bigint;
  prov text;
  keys text[];
  allowed text[];
  identity_key text;
  ident text;
  kinds int;
  place text;
BEGIN
  FOR plane IN
    SELECT p.id, p.name, p.private_links FROM data_planes p
    WHERE jsonb_array_length(p.private_links) > 0
      AND NOT EXISTS (SELECT 1 FROM data_plane_private_links l WHERE l.data_plane_id = p.id)
    ORDER BY p.id
  LOOP
    -- The trigger rewrites the array from the rows as they are inserted: iterate over the original.
    FOR entry, pos IN SELECT e, o FROM jsonb_array_elements(plane.private_links) WITH ORDINALITY AS t(e, o)
    LOOP
      place := format('data plane %s (%s): private_links[%s]', plane.name, plane.id, pos - 1);
      IF jsonb_typeof(entry) <> 'object' THEN
        RAISE EXCEPTION '%: is a JSON %, not an object; fix or remove it, then migrate again',
          place, jsonb_typeof(entry);
      END IF;
      -- A tagged element names its provider; an untagged one is recognised by its provider-only keys.
      IF entry ? 'provider' THEN
        prov := entry ->> 'provider';
        entry := entry - 'provider';
        IF prov IS NULL OR prov NOT IN ('aws', 'azure', 'gcp') THEN
          RAISE EXCEPTION '%: unknown shape: provider % is not aws, azure or gcp', place, quote_nullable(prov);
        END IF;
      ELSE
        keys := ARRAY(SELECT k FROM jsonb_object_keys(entry) AS k ORDER BY k);
        kinds := (keys && ARRAY['az_ids', 'service_region'])::int
          + (keys && ARRAY['location', 'dns_name', 'resource_type'])::int
          + (keys && ARRAY['service_attachment', 'dns_zone_name', 'dns_record_names', 'all_ports'])::int;
        IF kinds <> 1 THEN
          RAISE EXCEPTION '%: unknown shape (keys: %): expected an aws {region, az_ids, service_name}, azure {service_name, location} or gcp {service_attachment, region, dns_zone_name, dns_record_names} link',
            place, array_to_string(keys, ', ');
        END IF;
        prov := CASE
          WHEN keys && ARRAY['az_ids', 'service_region'] THEN 'aws'
          WHEN keys && ARRAY['location', 'dns_name', 'resource_type'] THEN 'azure'
          ELSE 'gcp' END;
      END IF;
      keys := ARRAY(SELECT k FROM jsonb_object_keys(entry) AS k ORDER BY k);
      allowed := CASE prov
        WHEN 'aws' THEN ARRAY['region', 'az_ids', 'service_name', 'service_region']
        WHEN 'azure' THEN ARRAY['service_name', 'location', 'dns_name', 'resource_type']
        ELSE ARRAY['service_attachment', 'region', 'dns_zone_name', 'dns_record_names', 'all_ports'] END;
      IF NOT keys <@ allowed THEN
        RAISE EXCEPTION '%: unknown shape: % is not a field of a % link (fields: %)',
          place, array_to_string(ARRAY(SELECT unnest(keys) EXCEPT SELECT unnest(allowed)), ', '),
          prov, array_to_string(allowed, ', ');
      END IF;
      identity_key := CASE prov WHEN 'gcp' THEN 'service_attachment' ELSE 'service_name' END;
      ident := CASE WHEN jsonb_typeof(entry -> identity_key) = 'string' THEN entry ->> identity_key END;
      IF ident IS NULL OR btrim(ident) = '' THEN
        RAISE EXCEPTION '%: no service identity: a % link needs a non-empty string %',
          place, prov, identity_key;
      END IF;
      IF EXISTS (SELECT 1 FROM data_plane_private_links l
                 WHERE l.data_plane_id = plane.id AND l.provider = prov AND l.service_identity = ident) THEN
        RAISE EXCEPTION '%: duplicate: another % link on this data plane has % %; remove one of them, then migrate again',
          place, prov, identity_key, ident;
      END IF;
      -- A version 7 UUID (time-ordered, like the ids the hub makes), from gen_random_uuid's random bits.
      INSERT INTO data_plane_private_links (id, data_plane_id, provider, config)
      VALUES (
        encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
          PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
          FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid,
        plane.id, prov, entry);
    END LOOP;
  END LOOP;
END $$;
