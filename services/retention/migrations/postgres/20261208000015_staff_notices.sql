-- Notices for staff of work waiting for them (a destruction staged, a
-- disposal batch, an erasure or a hold's release waiting for approval,
-- originals to return), written in the transaction that made the work
-- and sent through identity (NotifyStaff) after it: an outbox, so a notice
-- is never lost when identity or its mail gateway is away, and sent again
-- until it went (see confidant_runtime::staff_notices). `kind` is the name
-- of the proto enum value (StaffNoticeKind).
CREATE TABLE staff_notice_outbox (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    item_count   BIGINT NOT NULL,
    deadline     TIMESTAMPTZ,
    reference    UUID,
    except_staff UUID,
    recipient    UUID,
    created_at   TIMESTAMPTZ NOT NULL,
    -- The last try that did not reach everyone: such a notice waits behind
    -- the others, so that one that keeps failing does not hold them up.
    tried_at     TIMESTAMPTZ,
    sent_at      TIMESTAMPTZ
);
CREATE INDEX staff_notice_outbox_unsent ON staff_notice_outbox (COALESCE(tried_at, created_at), id)
    WHERE sent_at IS NULL;
-- The notice that told records managers of a disposal's staged destruction.
ALTER TABLE retention_disposals ADD COLUMN notice_id TEXT;
-- The notice that told records managers of a scope on the return-to-client
-- list.
ALTER TABLE retention_returns ADD COLUMN notice_id TEXT;
