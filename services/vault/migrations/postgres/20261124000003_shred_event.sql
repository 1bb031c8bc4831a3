-- The audit event that recorded a scope's shred, so that a repeated order
-- (a retention sweeper resuming after a crash) gets the same evidence.
ALTER TABLE vault_scopes ADD COLUMN shred_event_id TEXT;
