-- Compliance reports as built (JSON and printable HTML), on demand and
-- monthly.
CREATE TABLE compliance_reports (
    id           BLOB PRIMARY KEY,
    start_at     TEXT NOT NULL,
    end_at       TEXT NOT NULL,
    generated_at TEXT NOT NULL,
    generated_by TEXT NOT NULL,
    json         TEXT NOT NULL,
    html         TEXT NOT NULL,
    tree_size    INTEGER NOT NULL
);
CREATE INDEX compliance_reports_by_period ON compliance_reports (start_at, end_at);
