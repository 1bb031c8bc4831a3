-- Originals the firm holds for a client (wills, deeds, signed instruments)
-- are never shredded by the schedule: a due scope that holds any goes onto
-- the return-to-client list instead, until a records manager records the
-- return.
ALTER TABLE retention_scopes ADD COLUMN original_count BIGINT NOT NULL DEFAULT 0;

CREATE TABLE retention_returns (
    id             BLOB PRIMARY KEY,
    scope_id       BLOB NOT NULL,
    client_id      BLOB NOT NULL,
    matter_id      BLOB,
    category       TEXT NOT NULL,
    original_count BIGINT NOT NULL,
    due_at         TEXT NOT NULL,
    policy_id      BLOB,
    policy_version INTEGER,
    state          TEXT NOT NULL CHECK (state IN ('listed', 'returned')),
    listed_at      TEXT NOT NULL,
    returned_at    TEXT,
    returned_by    TEXT,
    -- How it went back (e.g. a courier's tracking reference); no client data.
    reference      TEXT
);
-- One open entry per scope.
CREATE UNIQUE INDEX retention_returns_listed ON retention_returns (scope_id) WHERE state = 'listed';
CREATE INDEX retention_returns_client ON retention_returns (client_id);
