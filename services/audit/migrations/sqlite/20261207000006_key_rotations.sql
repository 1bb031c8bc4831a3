-- Changes of the checkpoint signing key: the checkpointer looks them up
-- before each checkpoint, so they are found without reading the log.
CREATE INDEX audit_events_key_rotations ON audit_events (idx)
    WHERE action = 'audit.signing_key.rotated';
