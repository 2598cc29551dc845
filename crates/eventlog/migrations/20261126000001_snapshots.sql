-- Snapshots of stream states, so that a writer loads a long stream as one row plus the
-- events after it instead of folding the whole stream.
--
-- Derived data, never the truth: a snapshot is the fold of its stream's events up to
-- `stream_version`, written by the process that appended that version. Rows may be
-- deleted at any time (a load then folds the events again and the next append writes
-- a new one). `state_schema` names the state's shape; a load ignores a snapshot of
-- another shape, so changing a state type needs no migration.
CREATE TABLE IF NOT EXISTS snapshots (
    stream_id       text        PRIMARY KEY,
    state_schema    text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    state           jsonb       NOT NULL,
    taken_at        timestamptz NOT NULL DEFAULT now()
);
