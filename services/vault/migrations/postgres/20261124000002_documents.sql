-- Documents are records too (same keys, scopes, shredding and listing):
-- their filename and media type are encrypted fields, their content is a
-- series of STREAM-encrypted segments. A document is written in state
-- 'uploading' and becomes 'available' only once every segment is stored, so
-- nothing partial is ever visible.
ALTER TABLE vault_records ADD COLUMN kind TEXT NOT NULL DEFAULT 'record'
    CHECK (kind IN ('record', 'document'));
ALTER TABLE vault_records ADD COLUMN upload_state TEXT NOT NULL DEFAULT 'available'
    CHECK (upload_state IN ('uploading', 'available'));
ALTER TABLE vault_records ADD COLUMN doc_size BIGINT;
ALTER TABLE vault_records ADD COLUMN doc_sha256 BYTEA;
ALTER TABLE vault_records ADD COLUMN doc_segments INTEGER;
ALTER TABLE vault_records ADD COLUMN doc_nonce BYTEA;
CREATE INDEX vault_records_uploading ON vault_records (created_at) WHERE upload_state = 'uploading';

CREATE TABLE vault_document_segments (
    record_id  UUID NOT NULL REFERENCES vault_records (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    ciphertext BYTEA NOT NULL,
    PRIMARY KEY (record_id, seq)
);
