-- Retention policies, one row per version. A policy governs one data
-- category; its live version is its highest.
CREATE TABLE retention_policies (
    id                 BLOB NOT NULL,
    version            INTEGER NOT NULL,
    category           TEXT NOT NULL,
    period_years       INTEGER NOT NULL,
    period_months      INTEGER NOT NULL,
    period_days        INTEGER NOT NULL,
    trigger_kind       TEXT NOT NULL CHECK (trigger_kind IN ('creation', 'matter_closed', 'relationship_ended', 'named_event')),
    trigger_event_name TEXT,
    action             TEXT NOT NULL CHECK (action IN ('shred', 'review')),
    client_notice_days INTEGER NOT NULL,
    basis              TEXT NOT NULL,
    created_at         TEXT NOT NULL,
    created_by         TEXT NOT NULL,
    PRIMARY KEY (id, version)
);
-- One policy per category.
CREATE UNIQUE INDEX retention_policies_category ON retention_policies (category) WHERE version = 1;

-- Events periods count from: matter closings, ends of relationships, named
-- events. Kept, never updated: the latest of a kind counts.
CREATE TABLE retention_triggers (
    id          BLOB PRIMARY KEY,
    client_id   BLOB NOT NULL,
    matter_id   BLOB,
    kind        TEXT NOT NULL CHECK (kind IN ('matter_closed', 'relationship_ended', 'named_event')),
    event_name  TEXT,
    occurred_at TEXT NOT NULL,
    recorded_by TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE INDEX retention_triggers_client ON retention_triggers (client_id);

-- The vault's scopes as retention knows them, with their due dates.
CREATE TABLE retention_scopes (
    scope_id       BLOB PRIMARY KEY,
    client_id      BLOB NOT NULL,
    matter_id      BLOB,
    category       TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    vault_state    TEXT NOT NULL,
    due_at         TEXT,
    policy_id      BLOB,
    policy_version INTEGER,
    synced_at      TEXT NOT NULL
);
CREATE INDEX retention_scopes_due ON retention_scopes (due_at) WHERE due_at IS NOT NULL AND vault_state <> 'shredded';
CREATE INDEX retention_scopes_client ON retention_scopes (client_id);
CREATE INDEX retention_scopes_category ON retention_scopes (category);

-- Legal holds. in_vault: the vault confirmed it (until then it is sent
-- again on every sync).
CREATE TABLE retention_holds (
    id          BLOB PRIMARY KEY,
    reason      TEXT NOT NULL,
    client_id   BLOB NOT NULL,
    matter_id   BLOB,
    category    TEXT,
    placed_by   TEXT NOT NULL,
    placed_at   TEXT NOT NULL,
    in_vault    INTEGER NOT NULL DEFAULT 0,
    released_at TEXT
);
CREATE INDEX retention_holds_client ON retention_holds (client_id);

CREATE TABLE retention_hold_approvals (
    hold_id     BLOB NOT NULL REFERENCES retention_holds (id),
    staff_id    TEXT NOT NULL,
    approved_at TEXT NOT NULL,
    PRIMARY KEY (hold_id, staff_id)
);
