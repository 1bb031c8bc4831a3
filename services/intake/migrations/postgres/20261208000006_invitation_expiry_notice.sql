-- When the maker of an invitation that expired unanswered was told of it
-- (a staff notice in the outbox, written in the same transaction), so that
-- each is told once.
ALTER TABLE intake_invitations ADD COLUMN expiry_told_at TIMESTAMPTZ;
CREATE INDEX intake_invitations_untold ON intake_invitations (expires_at)
    WHERE submitted_at IS NULL AND expiry_told_at IS NULL;
