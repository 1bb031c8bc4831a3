-- Exceptions to ethical walls: one screened staff member let through one
-- wall for one matter, with a reason, until it lapses or is revoked.
CREATE TABLE wall_exceptions (
    id         BLOB PRIMARY KEY,
    wall_id    BLOB NOT NULL REFERENCES walls (id),
    staff_id   BLOB NOT NULL REFERENCES staff (id),
    matter_id  BLOB NOT NULL REFERENCES matters (id),
    reason     TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    granted_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX wall_exceptions_by_staff ON wall_exceptions (staff_id, matter_id);
