-- When the client was sent a receipt for the submission (through identity,
-- NotifyClient, to the contact the invitation was sent to and the client
-- verified); unset until it went.
ALTER TABLE intake_submissions ADD COLUMN receipt_sent_at TIMESTAMPTZ;
