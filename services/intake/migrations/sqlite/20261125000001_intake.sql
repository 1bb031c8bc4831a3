-- Intake: privacy notices and forms (published versions never change),
-- invitations (only the hash of their secret), submissions (metadata,
-- consent and vault record ids; never the answers).
CREATE TABLE intake_privacy_notices (
    version      INTEGER PRIMARY KEY,
    body         TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    published_at TEXT NOT NULL,
    published_by TEXT NOT NULL
);

CREATE TABLE intake_form_versions (
    name                        TEXT NOT NULL,
    version                     INTEGER NOT NULL,
    title                       TEXT NOT NULL,
    fields                      TEXT NOT NULL,
    privacy_notice_version      INTEGER NOT NULL REFERENCES intake_privacy_notices (version),
    required_verification_level INTEGER NOT NULL,
    published_at                TEXT NOT NULL,
    published_by                TEXT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE intake_invitations (
    id           BLOB PRIMARY KEY,
    secret_hash  BLOB NOT NULL UNIQUE,
    client_id    BLOB NOT NULL,
    matter_id    BLOB NOT NULL,
    form_name    TEXT NOT NULL,
    form_version INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    submitted_at TEXT,
    FOREIGN KEY (form_name, form_version) REFERENCES intake_form_versions (name, version)
);

CREATE TABLE intake_submissions (
    id                     BLOB PRIMARY KEY,
    invitation_id          BLOB NOT NULL UNIQUE REFERENCES intake_invitations (id),
    request_id             BLOB NOT NULL,
    client_id              BLOB NOT NULL,
    matter_id              BLOB NOT NULL,
    form_name              TEXT NOT NULL,
    form_version           INTEGER NOT NULL,
    privacy_notice_version INTEGER NOT NULL,
    privacy_notice_sha256  TEXT NOT NULL,
    consent_at             TEXT NOT NULL,
    state                  TEXT NOT NULL,
    decided_by             TEXT,
    decided_at             TEXT,
    decision_reason        TEXT
);
CREATE INDEX intake_submissions_by_client ON intake_submissions (client_id, matter_id);

CREATE TABLE intake_submission_records (
    submission_id BLOB NOT NULL REFERENCES intake_submissions (id),
    record_id     BLOB NOT NULL,
    category      TEXT NOT NULL,
    fields        TEXT NOT NULL,
    PRIMARY KEY (submission_id, record_id)
);
