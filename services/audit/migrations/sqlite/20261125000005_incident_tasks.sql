-- Tasks of an incident: what, who, by when, done when.
CREATE TABLE incident_tasks (
    id          BLOB PRIMARY KEY,
    incident_id BLOB NOT NULL REFERENCES incidents (id),
    title       TEXT NOT NULL,
    assignee    TEXT NOT NULL,
    due_at      TEXT NOT NULL,
    done_at     TEXT,
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX incident_tasks_by_incident ON incident_tasks (incident_id, due_at);
