-- Scopes: one key per (client, matter, data category), stored only wrapped
-- by the KMS. Shredding a scope sets wrapped_key and kms_key_id to NULL; the
-- row stays as the tombstone.
CREATE TABLE vault_scopes (
    id              UUID PRIMARY KEY,
    -- 'client/matter-or-dash/category': one live scope per triple; after a
    -- shred, new data of the triple goes under a new scope and key.
    scope_name      TEXT NOT NULL,
    client_id       UUID NOT NULL,
    matter_id       UUID,
    category        TEXT NOT NULL,
    key_version     INTEGER NOT NULL,
    kms_key_id      TEXT,
    wrapped_key     BYTEA,
    state           TEXT NOT NULL CHECK (state IN ('active', 'pending_destruction', 'shredded')),
    -- Holds that cover the scope now, recomputed when a hold is placed or
    -- released; a shred requires 0 (and no covering hold, checked again).
    hold_count      INTEGER NOT NULL DEFAULT 0,
    destroy_after   TIMESTAMPTZ,
    shred_order     TEXT,
    shredded_at     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    CHECK ((state = 'shredded') = (wrapped_key IS NULL))
);
CREATE UNIQUE INDEX vault_scopes_live_name ON vault_scopes (scope_name) WHERE state <> 'shredded';
CREATE INDEX vault_scopes_client ON vault_scopes (client_id, matter_id);
CREATE INDEX vault_scopes_pending ON vault_scopes (destroy_after) WHERE state = 'pending_destruction';
CREATE INDEX vault_scopes_kms_key ON vault_scopes (kms_key_id) WHERE state <> 'shredded';

-- Records: fields encrypted under a record key, the record key wrapped by
-- the scope key. ShredRecord sets wrapped_key to NULL.
CREATE TABLE vault_records (
    id           UUID PRIMARY KEY,
    scope_id     UUID NOT NULL REFERENCES vault_scopes (id),
    client_id    UUID NOT NULL,
    matter_id    UUID,
    category     TEXT NOT NULL,
    key_version  INTEGER NOT NULL,
    wrapped_key  BYTEA,
    fields       BYTEA NOT NULL,
    field_names  TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    created_by   TEXT NOT NULL,
    request_id   TEXT,
    shredded_at  TIMESTAMPTZ,
    shred_order  TEXT
);
CREATE INDEX vault_records_scope ON vault_records (scope_id);
CREATE INDEX vault_records_client ON vault_records (client_id, id DESC);
CREATE UNIQUE INDEX vault_records_request ON vault_records (created_by, request_id) WHERE request_id IS NOT NULL;

-- Legal holds placed by the retention service.
CREATE TABLE vault_holds (
    hold_id     UUID PRIMARY KEY,
    client_id   UUID NOT NULL,
    matter_id   UUID,
    category    TEXT,
    placed_at   TIMESTAMPTZ NOT NULL,
    placed_by   TEXT NOT NULL,
    released_at TIMESTAMPTZ
);
CREATE INDEX vault_holds_client ON vault_holds (client_id) WHERE released_at IS NULL;

-- Field masking by role, as data. A role reads a field through its most
-- specific rule (category and type, then category, then type, then '*'/'*');
-- a role without any rule sees nothing in clear. A reader with several roles
-- gets the least restrictive of their masks.
CREATE TABLE vault_masking_rules (
    role       TEXT NOT NULL,
    category   TEXT NOT NULL,
    field_type TEXT NOT NULL,
    mask       TEXT NOT NULL CHECK (mask IN ('clear', 'last4', 'redact')),
    PRIMARY KEY (role, category, field_type)
);
INSERT INTO vault_masking_rules (role, category, field_type, mask) VALUES
    ('partner', '*', '*', 'clear'),
    ('associate', '*', '*', 'clear'),
    ('paralegal', '*', '*', 'clear'),
    ('paralegal', '*', 'national_id', 'last4'),
    ('paralegal', '*', 'account_number', 'last4'),
    ('legal_assistant', '*', '*', 'redact'),
    ('legal_assistant', 'contact_details', '*', 'clear');
