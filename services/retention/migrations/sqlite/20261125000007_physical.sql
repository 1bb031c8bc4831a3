-- Physical records: storage locations with their controls, the register of
-- files, boxes and original documents, their custody log, and entries into
-- controlled rooms. Booleans are INTEGER 0/1 on both backends.
CREATE TABLE physical_locations (
    id               BLOB PRIMARY KEY,
    site             TEXT NOT NULL,
    room             TEXT NOT NULL,
    container        TEXT NOT NULL,
    controlled       INTEGER NOT NULL,
    code_change_days INTEGER NOT NULL,
    code_changed_at  TEXT,
    off_site         INTEGER NOT NULL,
    created_at       TEXT NOT NULL,
    created_by       TEXT NOT NULL,
    UNIQUE (site, room, container)
);

CREATE TABLE physical_location_access (
    location_id BLOB NOT NULL REFERENCES physical_locations (id),
    staff_id    TEXT NOT NULL,
    granted_at  TEXT NOT NULL,
    granted_by  TEXT NOT NULL,
    PRIMARY KEY (location_id, staff_id)
);

CREATE TABLE physical_items (
    id              BLOB PRIMARY KEY,
    label           TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL CHECK (kind IN ('file', 'box', 'original_document')),
    client_id       BLOB NOT NULL,
    matter_id       BLOB,
    category        TEXT NOT NULL,
    original        INTEGER NOT NULL,
    location_id     BLOB NOT NULL REFERENCES physical_locations (id),
    box_id          BLOB REFERENCES physical_items (id),
    state           TEXT NOT NULL CHECK (state IN ('in', 'checked_out', 'returned', 'destroyed')),
    holder_staff_id TEXT,
    due_back_at     TEXT,
    registered_at   TEXT NOT NULL,
    registered_by   TEXT NOT NULL
);
CREATE INDEX physical_items_by_client ON physical_items (client_id, matter_id);
CREATE INDEX physical_items_by_location ON physical_items (location_id);

CREATE TABLE physical_custody (
    id          BLOB PRIMARY KEY,
    item_id     BLOB NOT NULL REFERENCES physical_items (id),
    action      TEXT NOT NULL,
    at          TEXT NOT NULL,
    staff_id    TEXT NOT NULL,
    location_id BLOB,
    reason      TEXT NOT NULL
);
CREATE INDEX physical_custody_by_item ON physical_custody (item_id, at);

CREATE TABLE physical_entries (
    id          BLOB PRIMARY KEY,
    location_id BLOB NOT NULL REFERENCES physical_locations (id),
    staff_id    TEXT NOT NULL,
    at          TEXT NOT NULL,
    allowed     INTEGER NOT NULL
);
