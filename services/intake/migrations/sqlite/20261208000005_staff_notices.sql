-- Notices for staff of work waiting for them (a client's answers waiting
-- for the review of whoever invited them), written in the transaction that
-- stored the submission and sent through identity (NotifyStaff) after it:
-- an outbox, so a notice is never lost when identity or its mail gateway
-- is away, and sent again until it went (see
-- confidant_runtime::staff_notices). `kind` is the name of the proto enum
-- value (StaffNoticeKind).
CREATE TABLE staff_notice_outbox (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    item_count   INTEGER NOT NULL,
    deadline     TEXT,
    reference    BLOB,
    except_staff BLOB,
    recipient    BLOB,
    created_at   TEXT NOT NULL,
    -- The last try that did not reach everyone: such a notice waits behind
    -- the others, so that one that keeps failing does not hold them up.
    tried_at     TEXT,
    sent_at      TEXT
);
CREATE INDEX staff_notice_outbox_unsent ON staff_notice_outbox (COALESCE(tried_at, created_at), id)
    WHERE sent_at IS NULL;
