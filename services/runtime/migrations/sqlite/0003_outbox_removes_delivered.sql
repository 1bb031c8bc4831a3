-- Delivered events now leave the outbox as soon as the audit service has
-- them (the relay deletes exactly the events it sent); rows an earlier
-- version marked delivered and kept for an hour go now.
DELETE FROM outbox WHERE delivered_at IS NOT NULL;
