-- Access reviews: a campaign snapshots every live grant (matter assignments
-- and role memberships) for reviewers to certify or revoke before a deadline.
CREATE TABLE review_campaigns (
    id         BLOB PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    deadline   TEXT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE review_items (
    id          BLOB PRIMARY KEY,
    campaign_id BLOB NOT NULL REFERENCES review_campaigns (id),
    kind        TEXT NOT NULL,
    staff_id    BLOB NOT NULL REFERENCES staff (id),
    -- The matter (assignment) or the role name (membership).
    subject     TEXT NOT NULL,
    -- The assignment id, or empty for a role membership.
    grant_id    TEXT NOT NULL,
    decision    INTEGER,
    decided_at  TEXT,
    decided_by  TEXT
);
CREATE INDEX review_items_campaign ON review_items (campaign_id);
