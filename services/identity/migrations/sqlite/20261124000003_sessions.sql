-- Staff sign-in: a password hash and a TOTP second factor per staff member,
-- sessions, and refresh tokens that rotate on every use.
CREATE TABLE credentials (
    staff_id          BLOB PRIMARY KEY REFERENCES staff (id),
    password_hash     TEXT NOT NULL,
    password_set_at   TEXT NOT NULL,
    totp_secret       BLOB,
    totp_confirmed_at TEXT,
    -- The last TOTP time step accepted: a code is accepted once (RFC 6238 §5.2).
    totp_last_step    INTEGER
);

CREATE TABLE sessions (
    id            BLOB PRIMARY KEY,
    staff_id      BLOB NOT NULL REFERENCES staff (id),
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    revoked_at    TEXT,
    revoke_reason TEXT
);
CREATE INDEX sessions_staff ON sessions (staff_id);

-- Only a hash of each refresh token is kept.
CREATE TABLE refresh_tokens (
    token_hash BLOB PRIMARY KEY,
    session_id BLOB NOT NULL REFERENCES sessions (id),
    issued_at  TEXT NOT NULL,
    used_at    TEXT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
