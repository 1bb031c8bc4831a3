-- Detection rules over the event stream, kept as data; the alerts they
-- raise; and how far the detector has read the log.
CREATE TABLE detection_rules (
    code           TEXT PRIMARY KEY,
    kind           TEXT NOT NULL CHECK (kind IN ('distinct_clients', 'denials', 'walled', 'action', 'off_hours', 'shred_outside_retention')),
    description    TEXT NOT NULL,
    threshold      INTEGER NOT NULL,
    window_seconds INTEGER NOT NULL,
    action_name    TEXT,
    hours_start    INTEGER NOT NULL,
    hours_end      INTEGER NOT NULL,
    enabled        INTEGER NOT NULL,
    opens_incident INTEGER NOT NULL
);

INSERT INTO detection_rules VALUES
    ('many-clients', 'distinct_clients', 'a staff member read the data of more distinct clients than the threshold within the window', 20, 3600, NULL, 0, 0, 1, 0),
    ('repeated-denials', 'denials', 'an actor was refused more often than the threshold within the window', 5, 600, NULL, 0, 0, 1, 0),
    ('walled-access', 'walled', 'someone behind an ethical wall tried to reach the walled client or matter', 0, 3600, NULL, 0, 0, 1, 0),
    ('break-glass', 'action', 'emergency access was opened', 0, 3600, 'identity.break_glass.opened', 0, 0, 1, 1),
    ('reads-off-hours', 'off_hours', 'client data was read outside working hours (UTC)', 0, 3600, NULL, 7, 20, 1, 0),
    ('shred-outside-retention', 'shred_outside_retention', 'client data was shredded other than by the retention service', 0, 3600, NULL, 0, 0, 1, 1);

CREATE TABLE detection_alerts (
    id          BLOB PRIMARY KEY,
    rule_code   TEXT NOT NULL,
    actor_id    TEXT NOT NULL,
    fired_at    TEXT NOT NULL,
    event_idx   INTEGER NOT NULL,
    summary     TEXT NOT NULL,
    incident_id BLOB
);
CREATE INDEX detection_alerts_by_rule ON detection_alerts (rule_code, actor_id, fired_at);

CREATE TABLE detection_cursor (
    id       INTEGER PRIMARY KEY,
    next_idx INTEGER NOT NULL
);
INSERT INTO detection_cursor (id, next_idx) VALUES (1, 0);
