-- The erasure of one record before its schedule, asked for by a records
-- manager and approved by others: a persisted state machine,
-- awaiting_approval -> ordered -> shredded -> certified, or cancelled
-- (withdrawn, or refused by the vault) before the vault destroyed anything.
CREATE TABLE retention_erasures (
    id               UUID PRIMARY KEY,
    record_id        UUID NOT NULL,
    -- The record's first version: the same for every version of it.
    chain_id         UUID NOT NULL,
    version_ids      TEXT NOT NULL,
    scope_id         UUID NOT NULL,
    client_id        UUID NOT NULL,
    matter_id        UUID,
    category         TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('fields', 'document')),
    basis            TEXT NOT NULL CHECK (basis IN ('client_request', 'collected_in_error', 'no_longer_needed', 'legal_order')),
    reference        TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('awaiting_approval', 'ordered', 'shredded', 'certified', 'cancelled')),
    approvals_needed INTEGER NOT NULL,
    requested_by     TEXT NOT NULL,
    requested_at     TIMESTAMPTZ NOT NULL,
    order_id         UUID NOT NULL,
    shredded_at      TIMESTAMPTZ,
    destroyed_ids    TEXT,
    shred_event_ids  TEXT,
    cancel_reason    TEXT,
    request_id       TEXT,
    updated_at       TIMESTAMPTZ NOT NULL
);
-- One open erasure per record (whichever version it names).
CREATE UNIQUE INDEX retention_erasures_open_record ON retention_erasures (chain_id)
    WHERE state IN ('awaiting_approval', 'ordered', 'shredded');
CREATE INDEX retention_erasures_client ON retention_erasures (client_id);
-- A records manager's idempotency keys.
CREATE UNIQUE INDEX retention_erasures_request ON retention_erasures (requested_by, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX retention_erasures_state ON retention_erasures (state);

CREATE TABLE retention_erasure_approvals (
    erasure_id  UUID NOT NULL REFERENCES retention_erasures (id),
    staff_id    TEXT NOT NULL,
    approved_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (erasure_id, staff_id)
);

-- Certificates of erasure: the signed bytes and the signature.
CREATE TABLE retention_erasure_certificates (
    id         UUID PRIMARY KEY,
    erasure_id UUID NOT NULL UNIQUE REFERENCES retention_erasures (id),
    body       TEXT NOT NULL,
    signature  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
