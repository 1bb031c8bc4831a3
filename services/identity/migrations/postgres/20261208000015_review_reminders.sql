-- Access reviewers told of the items waiting for them in a campaign: when
-- it starts ('started') and before its deadline ('due'), each claimed here
-- by one replica before it is sent.
CREATE TABLE review_reminders (
    campaign_id UUID NOT NULL REFERENCES review_campaigns (id),
    staff_id    UUID NOT NULL REFERENCES staff (id),
    stage       TEXT NOT NULL,
    sent_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (campaign_id, staff_id, stage)
);
