-- Corrections (CorrectRecord): a record's versions form a chain. A new
-- version names the one it corrected (supersedes); the corrected one names
-- its successor (superseded_by, set once: only the current version can be
-- corrected, so the chain never forks) and stays as history in its scope.
ALTER TABLE vault_records ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE vault_records ADD COLUMN supersedes BLOB;
ALTER TABLE vault_records ADD COLUMN superseded_by BLOB;
ALTER TABLE vault_records ADD COLUMN superseded_at TEXT;
