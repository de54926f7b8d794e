-- Module events: what each durable NATS consumer has processed (redeliveries become no-ops) and
-- the messages it gave up on (poison), kept for inspection and replay.

CREATE TABLE event_processed (
  consumer text NOT NULL CHECK (consumer ~ '^[A-Za-z0-9_-]{1,64}$'),
  event_id uuid NOT NULL,
  processed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, event_id)
);
CREATE INDEX event_processed_time_idx ON event_processed (processed_at);

CREATE TABLE event_quarantine (
  id uuid PRIMARY KEY,
  -- NULL when the message was undecodable and carried no tenant-id header.
  organization_id uuid,
  consumer text NOT NULL CHECK (consumer ~ '^[A-Za-z0-9_-]{1,64}$'),
  stream text NOT NULL,
  subject text NOT NULL,
  stream_seq bigint NOT NULL CHECK (stream_seq > 0),
  -- NULL when the body could not be decoded.
  event_id uuid,
  event_type text,
  deliveries integer NOT NULL CHECK (deliveries >= 0),
  reason text NOT NULL CHECK (length(reason) <= 2000),
  -- Where the body lives: the stream and sequence (and the outbox row when the event id is known).
  payload_ref text NOT NULL,
  state text NOT NULL DEFAULT 'quarantined' CHECK (state IN ('quarantined', 'replayed')),
  replayed_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (consumer, stream, stream_seq)
);
CREATE INDEX event_quarantine_org_idx ON event_quarantine (organization_id, created_at DESC);
