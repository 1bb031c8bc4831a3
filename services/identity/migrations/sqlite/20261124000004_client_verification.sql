-- Clients proving who they are: one-time codes over a contact channel, and
-- identity-document checks by staff. Contact addresses, codes and document
-- numbers are kept only as keyed hashes (HMAC-SHA-256 with the pepper).
ALTER TABLE clients ADD COLUMN verification_level INTEGER NOT NULL DEFAULT 0;

CREATE TABLE client_verifications (
    id           BLOB PRIMARY KEY,
    client_id    BLOB NOT NULL REFERENCES clients (id),
    channel      INTEGER NOT NULL,
    contact_hash BLOB NOT NULL,
    reference    TEXT NOT NULL,
    code_hash    BLOB NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    completed_at TEXT
);
CREATE INDEX client_verifications_client ON client_verifications (client_id);

CREATE TABLE identity_document_checks (
    id              BLOB PRIMARY KEY,
    client_id       BLOB NOT NULL REFERENCES clients (id),
    document_type   TEXT NOT NULL,
    issuing_country TEXT NOT NULL,
    number_hash     BLOB NOT NULL,
    verified_by     BLOB NOT NULL REFERENCES staff (id),
    verified_at     TEXT NOT NULL
);
CREATE INDEX identity_document_checks_client ON identity_document_checks (client_id);
