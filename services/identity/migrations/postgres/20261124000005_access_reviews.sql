-- Access reviews: a campaign snapshots every live grant (matter assignments
-- and role memberships) for reviewers to certify or revoke before a deadline.
CREATE TABLE review_campaigns (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    deadline   TIMESTAMPTZ NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE review_items (
    id          UUID PRIMARY KEY,
    campaign_id UUID NOT NULL REFERENCES review_campaigns (id),
    kind        TEXT NOT NULL,
    staff_id    UUID NOT NULL REFERENCES staff (id),
    -- The matter (assignment) or the role name (membership).
    subject     TEXT NOT NULL,
    -- The assignment id, or empty for a role membership.
    grant_id    TEXT NOT NULL,
    decision    INTEGER,
    decided_at  TIMESTAMPTZ,
    decided_by  TEXT
);
CREATE INDEX review_items_campaign ON review_items (campaign_id);
