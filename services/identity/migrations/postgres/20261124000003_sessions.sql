-- Staff sign-in: a password hash and a TOTP second factor per staff member,
-- sessions, and refresh tokens that rotate on every use.
CREATE TABLE credentials (
    staff_id          UUID PRIMARY KEY REFERENCES staff (id),
    password_hash     TEXT NOT NULL,
    password_set_at   TIMESTAMPTZ NOT NULL,
    totp_secret       BYTEA,
    totp_confirmed_at TIMESTAMPTZ,
    -- The last TOTP time step accepted: a code is accepted once (RFC 6238 §5.2).
    totp_last_step    BIGINT
);

CREATE TABLE sessions (
    id            UUID PRIMARY KEY,
    staff_id      UUID NOT NULL REFERENCES staff (id),
    created_at    TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL,
    revoked_at    TIMESTAMPTZ,
    revoke_reason TEXT
);
CREATE INDEX sessions_staff ON sessions (staff_id);

-- Only a hash of each refresh token is kept.
CREATE TABLE refresh_tokens (
    token_hash BYTEA PRIMARY KEY,
    session_id UUID NOT NULL REFERENCES sessions (id),
    issued_at  TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
