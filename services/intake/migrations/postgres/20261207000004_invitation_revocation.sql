-- An invitation withdrawn by the firm: when, and by which staff member.
ALTER TABLE intake_invitations ADD COLUMN revoked_at TIMESTAMPTZ;
ALTER TABLE intake_invitations ADD COLUMN revoked_by TEXT;
CREATE INDEX intake_invitations_by_client ON intake_invitations (client_id, id);
