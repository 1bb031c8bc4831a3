-- Reminders sent to staff about the agreement or training that decisions
-- count: one before it lapses ('due') and one when it has ('lapsed'), each
-- claimed here by one replica before it is sent.
CREATE TABLE attestation_reminders (
    attestation_id UUID NOT NULL REFERENCES attestations (id),
    stage          TEXT NOT NULL,
    staff_id       UUID NOT NULL REFERENCES staff (id),
    sent_at        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (attestation_id, stage)
);
