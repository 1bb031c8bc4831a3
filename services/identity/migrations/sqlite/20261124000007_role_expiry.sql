-- Role memberships, like every grant, can lapse by themselves.
ALTER TABLE staff_roles ADD COLUMN expires_at TEXT;
