-- The directory: roles and their permissions (data, not code), staff,
-- clients, matters, and every grant with its validity interval. Grants are
-- never deleted, only revoked or left to lapse, so that decisions can be
-- explained for any point in time.

CREATE TABLE roles (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL
);

CREATE TABLE role_permissions (
    role       TEXT NOT NULL REFERENCES roles (name),
    permission TEXT NOT NULL,
    PRIMARY KEY (role, permission)
);

CREATE TABLE staff (
    id           BLOB PRIMARY KEY,
    email        TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    disabled_at  TEXT
);

CREATE TABLE staff_roles (
    staff_id   BLOB NOT NULL REFERENCES staff (id),
    role       TEXT NOT NULL REFERENCES roles (name),
    granted_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX staff_roles_staff ON staff_roles (staff_id);

CREATE TABLE clients (
    id         BLOB PRIMARY KEY,
    created_at TEXT NOT NULL
);

CREATE TABLE matters (
    id                      BLOB PRIMARY KEY,
    client_id               BLOB NOT NULL REFERENCES clients (id),
    responsible_attorney_id BLOB REFERENCES staff (id),
    practice_area           TEXT NOT NULL,
    opened_at               TEXT NOT NULL,
    closed_at               TEXT
);
CREATE INDEX matters_client ON matters (client_id);

CREATE TABLE assignments (
    id         BLOB PRIMARY KEY,
    matter_id  BLOB NOT NULL REFERENCES matters (id),
    staff_id   BLOB NOT NULL REFERENCES staff (id),
    granted_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT
);
CREATE INDEX assignments_staff ON assignments (staff_id, matter_id);

CREATE TABLE walls (
    id         BLOB PRIMARY KEY,
    created_at TEXT NOT NULL,
    lifted_at  TEXT
);

CREATE TABLE wall_members (
    wall_id  BLOB NOT NULL REFERENCES walls (id),
    staff_id BLOB NOT NULL REFERENCES staff (id),
    PRIMARY KEY (wall_id, staff_id)
);
CREATE INDEX wall_members_staff ON wall_members (staff_id);

CREATE TABLE wall_targets (
    wall_id   BLOB NOT NULL REFERENCES walls (id),
    client_id BLOB REFERENCES clients (id),
    matter_id BLOB REFERENCES matters (id),
    CHECK ((client_id IS NULL) <> (matter_id IS NULL))
);
CREATE INDEX wall_targets_wall ON wall_targets (wall_id);

CREATE TABLE attestations (
    id           BLOB PRIMARY KEY,
    staff_id     BLOB NOT NULL REFERENCES staff (id),
    kind         INTEGER NOT NULL,
    version      TEXT NOT NULL,
    completed_at TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    score        INTEGER,
    pass_mark    INTEGER,
    recorded_at  TEXT NOT NULL
);
CREATE INDEX attestations_staff ON attestations (staff_id, kind);

CREATE TABLE break_glass (
    id            BLOB PRIMARY KEY,
    staff_id      BLOB NOT NULL REFERENCES staff (id),
    matter_id     BLOB NOT NULL REFERENCES matters (id),
    justification TEXT NOT NULL,
    opened_at     TEXT NOT NULL,
    expires_at    TEXT NOT NULL
);
CREATE INDEX break_glass_staff ON break_glass (staff_id, matter_id);

-- Idempotency keys of create requests (AIP-155).
CREATE TABLE request_ids (
    request_id BLOB PRIMARY KEY,
    operation  TEXT NOT NULL,
    result_id  BLOB NOT NULL,
    created_at TEXT NOT NULL
);
