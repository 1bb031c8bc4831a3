-- Notices of work waiting for staff that another service asked identity to
-- send (NotifyStaff: a destruction staged, a disposal batch or an erasure
-- waiting for approval): each recipient of a notice claimed here by one
-- replica before it is sent, so a notice asked for again goes to nobody
-- twice.
CREATE TABLE staff_notices (
    notice_id TEXT NOT NULL,
    staff_id  BLOB NOT NULL REFERENCES staff (id),
    kind      TEXT NOT NULL,
    sent_at   TEXT NOT NULL,
    PRIMARY KEY (notice_id, staff_id)
);
