-- Reads of the newest points of each series, and the list of a job's series
-- (a loose index scan), go through (job_id, name, id).
CREATE INDEX metrics_by_series ON metrics (job_id, name, id);

-- Retention thins an ended job's step-level series once; this marks the jobs
-- it has looked at, and the partial index finds those it has not.
ALTER TABLE jobs ADD COLUMN metrics_retained INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_metrics_to_retain ON jobs (id)
    WHERE metrics_retained = 0 AND state IN ('succeeded', 'failed', 'cancelled');
