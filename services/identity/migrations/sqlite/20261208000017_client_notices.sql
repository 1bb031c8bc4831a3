-- Notices to clients that another service asked identity to send
-- (NotifyClient: a receipt for intake answers), each claimed here by one
-- replica before it is sent, so that one asked for again goes once.
CREATE TABLE client_notices (
    notice_id TEXT PRIMARY KEY,
    client_id BLOB NOT NULL REFERENCES clients (id),
    kind      TEXT NOT NULL,
    sent_at   TEXT NOT NULL
);
