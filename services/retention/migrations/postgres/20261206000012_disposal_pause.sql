-- Disposals paused by `confidant restore retention` until a records
-- manager resumes them (ResumeDisposals): at most one row.
CREATE TABLE retention_pause (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    reason TEXT NOT NULL,
    since  TIMESTAMPTZ NOT NULL
);
