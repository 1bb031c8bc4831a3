-- Certificates of physical disposal (signed like those of crypto-shredding),
-- and the certificate that covers each destroyed item.
CREATE TABLE physical_certificates (
    id         UUID PRIMARY KEY,
    body       TEXT NOT NULL,
    signature  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
ALTER TABLE physical_items ADD COLUMN certificate_id UUID;
