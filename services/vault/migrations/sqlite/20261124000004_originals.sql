-- Originals that belong to the client (wills, deeds, signed instruments):
-- a scope holding one is never shredded; retention lists it for return.
ALTER TABLE vault_records ADD COLUMN original INTEGER NOT NULL DEFAULT 0;
CREATE INDEX vault_records_originals ON vault_records (scope_id) WHERE original = 1;
