-- Certificates of physical disposal (signed like those of crypto-shredding),
-- and the certificate that covers each destroyed item.
CREATE TABLE physical_certificates (
    id         BLOB PRIMARY KEY,
    body       TEXT NOT NULL,
    signature  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
ALTER TABLE physical_items ADD COLUMN certificate_id BLOB;
