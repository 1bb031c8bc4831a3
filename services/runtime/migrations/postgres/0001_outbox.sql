-- The transactional outbox of audit events. A service inserts events here in
-- the same transaction as the change they record; the relay delivers them to
-- the audit service in `seq` order and marks them delivered.
CREATE TABLE outbox (
    seq          BIGSERIAL PRIMARY KEY,
    event_id     UUID        NOT NULL UNIQUE,
    payload      BYTEA       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts     INTEGER     NOT NULL DEFAULT 0,
    last_error   TEXT,
    delivered_at TIMESTAMPTZ
);

CREATE INDEX outbox_pending ON outbox (seq) WHERE delivered_at IS NULL;
