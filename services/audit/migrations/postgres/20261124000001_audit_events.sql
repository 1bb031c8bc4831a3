-- The audit log. Rows are only ever inserted: no code path updates or
-- deletes them. `idx` is the dense position of the event in the log (its
-- Merkle leaf index), assigned under a lock by the appender.
CREATE TABLE audit_events (
    idx            BIGINT      PRIMARY KEY,
    event_id       UUID        NOT NULL UNIQUE,
    source_service TEXT        NOT NULL,
    occurred_at    TIMESTAMPTZ NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL,
    action         TEXT        NOT NULL,
    actor_kind     SMALLINT    NOT NULL,
    actor_id       TEXT        NOT NULL,
    client_id      TEXT,
    matter_id      TEXT,
    outcome        SMALLINT    NOT NULL,
    -- The event exactly as received (protobuf), the bytes the log commits to.
    payload        BYTEA       NOT NULL,
    -- SHA-256(0x00 || payload), as computed when the event was appended.
    leaf_hash      BYTEA       NOT NULL
);

CREATE INDEX audit_events_actor ON audit_events (actor_id, occurred_at);
CREATE INDEX audit_events_client ON audit_events (client_id, occurred_at) WHERE client_id IS NOT NULL;
CREATE INDEX audit_events_matter ON audit_events (matter_id, occurred_at) WHERE matter_id IS NOT NULL;
CREATE INDEX audit_events_time ON audit_events (occurred_at);

-- Refuse UPDATE and DELETE even from the service's own role: the log is
-- append-only by construction, not by convention.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only';
END;
$$;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

-- Signed checkpoints (C2SP signed notes), append-only as well. Several may
-- state the same size: a checkpoint of an unchanged log is evidence that
-- nothing was recorded in the interval.
CREATE TABLE audit_checkpoints (
    id          BIGSERIAL   PRIMARY KEY,
    tree_size   BIGINT      NOT NULL,
    root_hash   BYTEA       NOT NULL,
    signed_note TEXT        NOT NULL,
    issued_at   TIMESTAMPTZ NOT NULL
);

CREATE INDEX audit_checkpoints_size ON audit_checkpoints (tree_size, id);

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE OR DELETE ON audit_checkpoints
FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
