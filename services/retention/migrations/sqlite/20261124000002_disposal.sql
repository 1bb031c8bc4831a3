-- The fencing token of the sweep leader: every sweep transaction first
-- raises it to its lease's token, and fails if a later leader's token is
-- already stored, so a stalled former leader cannot act.
CREATE TABLE retention_fence (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    token BIGINT NOT NULL
);
INSERT INTO retention_fence (id, token) VALUES (1, 0);

-- Disposition batches: what one sweep found due under one action.
CREATE TABLE retention_batches (
    id               BLOB PRIMARY KEY,
    action           TEXT NOT NULL CHECK (action IN ('shred', 'review')),
    state            TEXT NOT NULL CHECK (state IN ('awaiting_approval', 'approved', 'done')),
    approvals_needed INTEGER NOT NULL,
    created_at       TEXT NOT NULL
);

CREATE TABLE retention_batch_approvals (
    batch_id    BLOB NOT NULL REFERENCES retention_batches (id),
    staff_id    TEXT NOT NULL,
    approved_at TEXT NOT NULL,
    PRIMARY KEY (batch_id, staff_id)
);

-- One disposal per scope: a persisted state machine,
-- due -> approved -> shred_ordered -> shred_confirmed -> certified,
-- or cancelled (a hold arrived) from any state before shred_confirmed.
CREATE TABLE retention_disposals (
    id             BLOB PRIMARY KEY,
    scope_id       BLOB NOT NULL,
    batch_id       BLOB NOT NULL REFERENCES retention_batches (id),
    order_id       BLOB NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('due', 'approved', 'shred_ordered', 'shred_confirmed', 'certified', 'cancelled')),
    client_id      BLOB NOT NULL,
    matter_id      BLOB,
    category       TEXT NOT NULL,
    policy_id      BLOB,
    policy_version INTEGER,
    due_at         TEXT NOT NULL,
    record_count   BIGINT,
    shredded_at    TEXT,
    updated_at     TEXT NOT NULL
);
CREATE UNIQUE INDEX retention_disposals_live_scope ON retention_disposals (scope_id) WHERE state <> 'cancelled';
CREATE INDEX retention_disposals_state ON retention_disposals (state);

-- Certificates of disposal: the signed bytes and the signature, kept after
-- the data is gone.
CREATE TABLE retention_certificates (
    id         BLOB PRIMARY KEY,
    scope_id   BLOB NOT NULL UNIQUE,
    body       TEXT NOT NULL,
    signature  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
