-- When a staff member's e-mail address or displayed name last changed
-- (UpdateStaffMember), for a restore to tell whether a logged change is in
-- the database.
ALTER TABLE staff ADD COLUMN updated_at TEXT;
