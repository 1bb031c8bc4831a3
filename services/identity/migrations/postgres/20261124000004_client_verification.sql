-- Clients proving who they are: one-time codes over a contact channel, and
-- identity-document checks by staff. Contact addresses, codes and document
-- numbers are kept only as keyed hashes (HMAC-SHA-256 with the pepper).
ALTER TABLE clients ADD COLUMN verification_level INTEGER NOT NULL DEFAULT 0;

CREATE TABLE client_verifications (
    id           UUID PRIMARY KEY,
    client_id    UUID NOT NULL REFERENCES clients (id),
    channel      INTEGER NOT NULL,
    contact_hash BYTEA NOT NULL,
    reference    TEXT NOT NULL,
    code_hash    BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    completed_at TIMESTAMPTZ
);
CREATE INDEX client_verifications_client ON client_verifications (client_id);

CREATE TABLE identity_document_checks (
    id              UUID PRIMARY KEY,
    client_id       UUID NOT NULL REFERENCES clients (id),
    document_type   TEXT NOT NULL,
    issuing_country TEXT NOT NULL,
    number_hash     BYTEA NOT NULL,
    verified_by     UUID NOT NULL REFERENCES staff (id),
    verified_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX identity_document_checks_client ON identity_document_checks (client_id);
