-- Where a matter is governed (ISO 3166 country or subdivision), for
-- retention policies per jurisdiction.
ALTER TABLE matters ADD COLUMN jurisdiction TEXT;
