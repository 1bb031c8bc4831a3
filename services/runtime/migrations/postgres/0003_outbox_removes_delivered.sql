-- Delivered events now leave the outbox as soon as the audit service has
-- them (the relay deletes exactly the events it sent); rows an earlier
-- version marked delivered and kept for an hour go now. What stays is the
-- backlog, so the primary key serves "oldest pending first" and the
-- partial index of undelivered rows is one more index every event paid to
-- maintain for nothing. `delivered_at` is no longer written; it stays for
-- replicas of the previous version that still mark rows during a rolling
-- upgrade.
DELETE FROM outbox WHERE delivered_at IS NOT NULL;
DROP INDEX outbox_pending;
