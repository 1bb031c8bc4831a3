-- The notice that gave records managers the last reminder of a disposal's
-- staged destruction, shortly before its key goes (see
-- retention.destruction_reminder_seconds).
ALTER TABLE retention_disposals ADD COLUMN reminder_notice_id TEXT;
