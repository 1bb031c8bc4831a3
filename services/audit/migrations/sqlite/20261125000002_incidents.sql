-- Incident response. Notification rules are data: a firm adds or corrects a
-- row, not code, and its counsel reviews them. The rows below were checked
-- (2026-11) against the regulations' texts (GDPR, UK GDPR, HIPAA) and, for
-- the US states, against published summaries of the statutes cited;
-- deadlines without a fixed number of hours ("without undue delay") have
-- deadline_hours 0.
CREATE TABLE incident_rules (
    code           TEXT PRIMARY KEY,
    regime         TEXT NOT NULL,
    recipient      TEXT NOT NULL,
    trigger_kind   TEXT NOT NULL CHECK (trigger_kind IN ('awareness', 'discovery')),
    deadline_hours INTEGER NOT NULL,
    deadline_text  TEXT NOT NULL,
    basis          TEXT NOT NULL,
    jurisdiction   TEXT NOT NULL
);

INSERT INTO incident_rules VALUES
    ('gdpr-authority', 'GDPR', 'the lead supervisory authority', 'awareness', 72,
     'without undue delay and, where feasible, not later than 72 hours after becoming aware',
     'GDPR Art. 33(1)', 'EU'),
    ('gdpr-data-subjects', 'GDPR', 'the affected persons (where the breach is likely to result in a high risk)', 'awareness', 0,
     'without undue delay', 'GDPR Art. 34(1)', 'EU'),
    ('uk-gdpr-ico', 'UK GDPR', 'the Information Commissioner''s Office', 'awareness', 72,
     'without undue delay and, where feasible, not later than 72 hours after becoming aware',
     'UK GDPR Art. 33(1)', 'GB'),
    ('hipaa-individuals', 'HIPAA', 'the affected individuals', 'discovery', 1440,
     'without unreasonable delay and in no case later than 60 calendar days after discovery',
     '45 CFR 164.404(b)', 'US'),
    ('us-co-residents', 'Colorado', 'the affected Colorado residents', 'awareness', 720,
     'not later than 30 days after determination that a security breach occurred',
     'Colo. Rev. Stat. 6-1-716(2)', 'US-CO'),
    ('us-co-attorney-general', 'Colorado', 'the Colorado Attorney General (500 or more residents)', 'awareness', 720,
     'not later than 30 days after determination that a security breach occurred',
     'Colo. Rev. Stat. 6-1-716(2)', 'US-CO'),
    ('us-wa-residents', 'Washington', 'the affected Washington residents', 'discovery', 720,
     'in the most expedient time possible and no more than 30 calendar days after discovery',
     'RCW 19.255.010', 'US-WA'),
    ('us-wa-attorney-general', 'Washington', 'the Washington Attorney General (more than 500 residents)', 'discovery', 720,
     'no more than 30 calendar days after discovery',
     'RCW 19.255.010', 'US-WA'),
    ('clients-professional-conduct', 'Professional conduct', 'the affected clients', 'awareness', 0,
     'promptly, so that clients can make informed decisions',
     'ABA Model Rule 1.4; ABA Formal Opinion 483 (2018)', 'US');

CREATE TABLE incidents (
    id            BLOB PRIMARY KEY,
    title         TEXT NOT NULL,
    description   TEXT NOT NULL,
    stage         TEXT NOT NULL,
    aware_at      TEXT NOT NULL,
    discovered_at TEXT NOT NULL,
    opened_by     TEXT NOT NULL,
    opened_at     TEXT NOT NULL
);

CREATE TABLE incident_rule_links (
    incident_id BLOB NOT NULL REFERENCES incidents (id),
    rule_code   TEXT NOT NULL REFERENCES incident_rules (code),
    PRIMARY KEY (incident_id, rule_code)
);

CREATE TABLE incident_client_terms (
    incident_id BLOB NOT NULL REFERENCES incidents (id),
    client_id   BLOB NOT NULL,
    hours       INTEGER NOT NULL,
    PRIMARY KEY (incident_id, client_id)
);

CREATE TABLE incident_timeline (
    id          BLOB PRIMARY KEY,
    incident_id BLOB NOT NULL REFERENCES incidents (id),
    at          TEXT NOT NULL,
    staff_id    TEXT NOT NULL,
    stage       TEXT,
    note        TEXT NOT NULL
);
CREATE INDEX incident_timeline_by_incident ON incident_timeline (incident_id, at);

CREATE TABLE incident_notifications (
    id              BLOB PRIMARY KEY,
    incident_id     BLOB NOT NULL REFERENCES incidents (id),
    obligation_code TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    channel         TEXT NOT NULL,
    sent_at         TEXT NOT NULL,
    body            TEXT NOT NULL,
    recorded_by     TEXT NOT NULL
);
CREATE INDEX incident_notifications_by_incident ON incident_notifications (incident_id, sent_at);
