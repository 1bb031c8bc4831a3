-- Tasks of an incident: what, who, by when, done when.
CREATE TABLE incident_tasks (
    id          UUID PRIMARY KEY,
    incident_id UUID NOT NULL REFERENCES incidents (id),
    title       TEXT NOT NULL,
    assignee    TEXT NOT NULL,
    due_at      TIMESTAMPTZ NOT NULL,
    done_at     TIMESTAMPTZ,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX incident_tasks_by_incident ON incident_tasks (incident_id, due_at);
