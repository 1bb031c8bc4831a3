-- A password an administrator set as temporary (1) signs in only after the
-- staff member changed it (ChangePassword).
ALTER TABLE credentials ADD COLUMN must_change_password INTEGER NOT NULL DEFAULT 0;
