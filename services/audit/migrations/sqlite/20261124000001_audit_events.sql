-- The audit log. Rows are only ever inserted: no code path updates or
-- deletes them. `idx` is the dense position of the event in the log (its
-- Merkle leaf index), assigned under a lock by the appender.
CREATE TABLE audit_events (
    idx            INTEGER PRIMARY KEY,
    event_id       TEXT    NOT NULL UNIQUE,
    source_service TEXT    NOT NULL,
    occurred_at    TEXT    NOT NULL,
    recorded_at    TEXT    NOT NULL,
    action         TEXT    NOT NULL,
    actor_kind     INTEGER NOT NULL,
    actor_id       TEXT    NOT NULL,
    client_id      TEXT,
    matter_id      TEXT,
    outcome        INTEGER NOT NULL,
    payload        BLOB    NOT NULL,
    leaf_hash      BLOB    NOT NULL
);

CREATE INDEX audit_events_actor ON audit_events (actor_id, occurred_at);
CREATE INDEX audit_events_client ON audit_events (client_id, occurred_at) WHERE client_id IS NOT NULL;
CREATE INDEX audit_events_matter ON audit_events (matter_id, occurred_at) WHERE matter_id IS NOT NULL;
CREATE INDEX audit_events_time ON audit_events (occurred_at);

-- SQLite cannot revoke UPDATE/DELETE from the application, so refuse them.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;

-- Signed checkpoints (C2SP signed notes), append-only as well. Several may
-- state the same size: a checkpoint of an unchanged log is evidence that
-- nothing was recorded in the interval.
CREATE TABLE audit_checkpoints (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tree_size   INTEGER NOT NULL,
    root_hash   BLOB    NOT NULL,
    signed_note TEXT    NOT NULL,
    issued_at   TEXT    NOT NULL
);

CREATE INDEX audit_checkpoints_size ON audit_checkpoints (tree_size, id);

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
