-- The SPIFFE id of the application a session was opened through (NULL for
-- sessions opened before it was recorded).
ALTER TABLE sessions ADD COLUMN opened_by TEXT;
