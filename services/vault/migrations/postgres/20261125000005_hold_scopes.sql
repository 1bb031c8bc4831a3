-- Holds over an explicit set of a client's scopes (scoped = 1): they cover
-- exactly the scopes listed here, not the client's other scopes.
ALTER TABLE vault_holds ADD COLUMN scoped INTEGER NOT NULL DEFAULT 0;
CREATE TABLE vault_hold_scopes (
    hold_id  UUID NOT NULL REFERENCES vault_holds (hold_id),
    scope_id UUID NOT NULL,
    PRIMARY KEY (hold_id, scope_id)
);
CREATE INDEX vault_hold_scopes_scope ON vault_hold_scopes (scope_id);
