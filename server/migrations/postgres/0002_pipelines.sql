-- Pipelines: an experiment holds a DAG of jobs. A child becomes claimable only
-- when all its parents succeeded; a failed or cancelled parent cancels it.

CREATE TABLE experiments (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    owner       TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE jobs ADD COLUMN experiment_id BIGINT REFERENCES experiments(id) ON DELETE CASCADE;
ALTER TABLE jobs ADD COLUMN node TEXT NOT NULL DEFAULT '';
CREATE INDEX jobs_by_experiment ON jobs (experiment_id, id);

CREATE TABLE job_dependencies (
    child_id   BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    parent_id  BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    PRIMARY KEY (child_id, parent_id)
);
CREATE INDEX job_dependencies_by_parent ON job_dependencies (parent_id);
