-- The service's own data key, wrapped by the KMS: it seals secrets the
-- service must read back (identity: TOTP seeds; intake: invitation contact
-- addresses). One row; replicas race to create it once.
CREATE TABLE service_data_keys (
    id         INTEGER PRIMARY KEY,
    key_id     TEXT NOT NULL,
    wrapped    BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
