-- An administrator removed a staff member's TOTP authenticator
-- (ResetTotp): the help-desk step an account takeover talks its way
-- through. An alert, for the security officer to confirm with the staff
-- member; no incident of itself.
INSERT INTO detection_rules VALUES
    ('authenticator-removed', 'action', 'an administrator removed a staff member''s TOTP authenticator: confirm with the staff member that they asked for it', 0, 3600, 'identity.totp.reset', 0, 0, 1, 0);
