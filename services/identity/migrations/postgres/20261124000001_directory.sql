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
    id           UUID PRIMARY KEY,
    email        TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    disabled_at  TIMESTAMPTZ
);

CREATE TABLE staff_roles (
    staff_id   UUID NOT NULL REFERENCES staff (id),
    role       TEXT NOT NULL REFERENCES roles (name),
    granted_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX staff_roles_staff ON staff_roles (staff_id);

CREATE TABLE clients (
    id         UUID PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE matters (
    id                      UUID PRIMARY KEY,
    client_id               UUID NOT NULL REFERENCES clients (id),
    responsible_attorney_id UUID REFERENCES staff (id),
    practice_area           TEXT NOT NULL,
    opened_at               TIMESTAMPTZ NOT NULL,
    closed_at               TIMESTAMPTZ
);
CREATE INDEX matters_client ON matters (client_id);

CREATE TABLE assignments (
    id         UUID PRIMARY KEY,
    matter_id  UUID NOT NULL REFERENCES matters (id),
    staff_id   UUID NOT NULL REFERENCES staff (id),
    granted_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX assignments_staff ON assignments (staff_id, matter_id);

CREATE TABLE walls (
    id         UUID PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    lifted_at  TIMESTAMPTZ
);

CREATE TABLE wall_members (
    wall_id  UUID NOT NULL REFERENCES walls (id),
    staff_id UUID NOT NULL REFERENCES staff (id),
    PRIMARY KEY (wall_id, staff_id)
);
CREATE INDEX wall_members_staff ON wall_members (staff_id);

CREATE TABLE wall_targets (
    wall_id   UUID NOT NULL REFERENCES walls (id),
    client_id UUID REFERENCES clients (id),
    matter_id UUID REFERENCES matters (id),
    CHECK ((client_id IS NULL) <> (matter_id IS NULL))
);
CREATE INDEX wall_targets_wall ON wall_targets (wall_id);

CREATE TABLE attestations (
    id           UUID PRIMARY KEY,
    staff_id     UUID NOT NULL REFERENCES staff (id),
    kind         INTEGER NOT NULL,
    version      TEXT NOT NULL,
    completed_at TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    score        INTEGER,
    pass_mark    INTEGER,
    recorded_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX attestations_staff ON attestations (staff_id, kind);

CREATE TABLE break_glass (
    id            UUID PRIMARY KEY,
    staff_id      UUID NOT NULL REFERENCES staff (id),
    matter_id     UUID NOT NULL REFERENCES matters (id),
    justification TEXT NOT NULL,
    opened_at     TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX break_glass_staff ON break_glass (staff_id, matter_id);

-- Idempotency keys of create requests (AIP-155).
CREATE TABLE request_ids (
    request_id UUID PRIMARY KEY,
    operation  TEXT NOT NULL,
    result_id  UUID NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
