-- Compliance reports as built (JSON and printable HTML), on demand and
-- monthly.
CREATE TABLE compliance_reports (
    id           UUID PRIMARY KEY,
    start_at     TIMESTAMPTZ NOT NULL,
    end_at       TIMESTAMPTZ NOT NULL,
    generated_at TIMESTAMPTZ NOT NULL,
    generated_by TEXT NOT NULL,
    json         TEXT NOT NULL,
    html         TEXT NOT NULL,
    tree_size    BIGINT NOT NULL
);
CREATE INDEX compliance_reports_by_period ON compliance_reports (start_at, end_at);
