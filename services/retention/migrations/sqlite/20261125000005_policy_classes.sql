-- Policies per practice area and/or jurisdiction: a category's policy can
-- be narrowed to matters of one practice area, one jurisdiction (an ISO
-- 3166 country or subdivision) or both; the most specific one that fits a
-- scope's matter governs it.
ALTER TABLE retention_policies ADD COLUMN practice_area TEXT;
ALTER TABLE retention_policies ADD COLUMN jurisdiction TEXT;
DROP INDEX retention_policies_category;
CREATE UNIQUE INDEX retention_policies_class ON retention_policies
    (category, COALESCE(practice_area, ''), COALESCE(jurisdiction, '')) WHERE version = 1;

-- What identity says of the matters that scopes belong to, refreshed on
-- every sync while a matter is open. A scope of a matter not known here yet
-- is never disposed of (its policy may depend on the matter).
CREATE TABLE retention_matters (
    matter_id     BLOB PRIMARY KEY,
    client_id     BLOB NOT NULL,
    practice_area TEXT NOT NULL,
    jurisdiction  TEXT,
    closed_at     TEXT,
    synced_at     TEXT NOT NULL
);
