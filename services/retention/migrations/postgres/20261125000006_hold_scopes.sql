-- Holds over an explicit set of a client's scopes (scoped = 1).
ALTER TABLE retention_holds ADD COLUMN scoped INTEGER NOT NULL DEFAULT 0;
CREATE TABLE retention_hold_scopes (
    hold_id  UUID NOT NULL REFERENCES retention_holds (id),
    scope_id UUID NOT NULL,
    PRIMARY KEY (hold_id, scope_id)
);
