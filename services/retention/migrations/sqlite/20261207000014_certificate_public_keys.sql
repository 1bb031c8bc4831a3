-- Each certificate keeps the public key that verifies it, so that it can
-- still be named after retention's signing key changed (NULL: issued
-- before this column; its key id still names the key).
ALTER TABLE retention_certificates ADD COLUMN public_key TEXT;
ALTER TABLE retention_erasure_certificates ADD COLUMN public_key TEXT;
ALTER TABLE physical_certificates ADD COLUMN public_key TEXT;
