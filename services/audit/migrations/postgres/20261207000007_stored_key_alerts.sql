-- A scope key the vault could not rewrap under the active KMS key: its
-- stored wrapped key does not open under its own scope (altered, or moved
-- from another scope's row) or the KMS refuses its old key. An alert, for
-- the security officer to look; no incident of itself.
INSERT INTO detection_rules VALUES
    ('scope-key-not-rewrapped', 'action', 'a scope key could not be rewrapped under the active KMS key: its stored wrapped key does not open under its scope (altered or moved in the database), or the KMS refuses its old key', 0, 3600, 'vault.scope_key.rewrap_failed', 0, 0, 1, 0);

-- A record the vault could not open where it is stored: its ciphertext or
-- wrapped key fails to authenticate (altered, moved or corrupt).
INSERT INTO detection_rules VALUES
    ('stored-data-unreadable', 'action', 'a record did not open where it is stored: its ciphertext or wrapped key fails to authenticate (altered, moved or corrupt in the database)', 0, 3600, 'vault.record.unreadable', 0, 0, 1, 0);
