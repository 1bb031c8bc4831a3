-- Corrections (CorrectRecord): a record's versions form a chain. A new
-- version names the one it corrected (supersedes); the corrected one names
-- its successor (superseded_by, set once: only the current version can be
-- corrected, so the chain never forks) and stays as history in its scope.
-- Adding nullable columns and a constant default rewrites no rows.
ALTER TABLE vault_records
    ADD COLUMN version INTEGER NOT NULL DEFAULT 1,
    ADD COLUMN supersedes UUID,
    ADD COLUMN superseded_by UUID,
    ADD COLUMN superseded_at TIMESTAMPTZ;
