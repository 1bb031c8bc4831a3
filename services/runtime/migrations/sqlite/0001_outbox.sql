-- The transactional outbox of audit events. A service inserts events here in
-- the same transaction as the change they record; the relay delivers them to
-- the audit service in `seq` order and marks them delivered.
CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT    NOT NULL UNIQUE,
    payload      BLOB    NOT NULL,
    created_at   TEXT    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    delivered_at TEXT
);

CREATE INDEX outbox_pending ON outbox (seq) WHERE delivered_at IS NULL;
