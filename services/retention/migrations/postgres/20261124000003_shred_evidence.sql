-- The vault's audit event of each shred: the certificate carries the signed
-- audit checkpoint that contains it, with the inclusion proof.
ALTER TABLE retention_disposals ADD COLUMN shred_event_id TEXT;
