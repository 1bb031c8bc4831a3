-- Where an invitation's one-time codes go: the channel, and the address
-- sealed under intake's KMS-wrapped data key (bound to the invitation id).
ALTER TABLE intake_invitations ADD COLUMN contact_channel TEXT NOT NULL DEFAULT 'email';
ALTER TABLE intake_invitations ADD COLUMN contact_sealed BYTEA;
