-- The identity service's data key, wrapped by the KMS: it seals secrets the
-- service must keep (TOTP seeds). One row; replicas race to create it once.
CREATE TABLE identity_data_keys (
    id         INTEGER PRIMARY KEY,
    key_id     TEXT NOT NULL,
    wrapped    BLOB NOT NULL,
    created_at TEXT NOT NULL
);
