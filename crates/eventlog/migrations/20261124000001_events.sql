-- The event log: the single source of truth of taskchat.
--
-- `position` is a global sequence, but sequences are assigned at insert time and
-- transactions commit in another order, so readers never tail by position alone: they
-- read in (transaction_id, position) order and only below the oldest transaction still
-- running (pg_snapshot_xmin), which makes the tail gap-free.
CREATE TABLE IF NOT EXISTS events (
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version > 0),
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    causation_id    uuid,
    correlation_id  uuid,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
);

CREATE INDEX IF NOT EXISTS events_tail_idx ON events (transaction_id, position);
CREATE INDEX IF NOT EXISTS events_causation_idx ON events (causation_id)
    WHERE causation_id IS NOT NULL;
