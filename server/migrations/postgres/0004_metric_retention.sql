-- The names of each job's metric series, kept by `report` beside the points
-- (a few rows per job): a watch and "the newest N of each series" start from
-- them instead of scanning a job's millions of points for its names.
CREATE TABLE metric_series (
    job_id BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    name   TEXT NOT NULL,
    PRIMARY KEY (job_id, name)
);
INSERT INTO metric_series (job_id, name) SELECT DISTINCT job_id, name FROM metrics;

-- Retention thins an ended job's step-level series once; this marks the jobs
-- it has looked at, and the partial index finds those it has not.
ALTER TABLE jobs ADD COLUMN metrics_retained BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX jobs_metrics_to_retain ON jobs (id)
    WHERE NOT metrics_retained AND state IN ('succeeded', 'failed', 'cancelled');
