-- Exceptions to ethical walls: one screened staff member let through one
-- wall for one matter, with a reason, until it lapses or is revoked.
CREATE TABLE wall_exceptions (
    id         UUID PRIMARY KEY,
    wall_id    UUID NOT NULL REFERENCES walls (id),
    staff_id   UUID NOT NULL REFERENCES staff (id),
    matter_id  UUID NOT NULL REFERENCES matters (id),
    reason     TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    granted_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX wall_exceptions_by_staff ON wall_exceptions (staff_id, matter_id);
