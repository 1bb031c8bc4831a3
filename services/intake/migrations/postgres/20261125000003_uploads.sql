-- Files clients uploaded for file fields: the vault document holding each
-- (its name and content stay in the vault, encrypted), until a submission
-- names it.
CREATE TABLE intake_uploads (
    id            UUID PRIMARY KEY,
    invitation_id UUID NOT NULL REFERENCES intake_invitations (id),
    field         TEXT NOT NULL,
    record_id     UUID NOT NULL,
    request_id    UUID NOT NULL,
    media_type    TEXT NOT NULL,
    size_bytes    BIGINT NOT NULL,
    sha256        TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    UNIQUE (invitation_id, request_id)
);
