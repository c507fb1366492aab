-- Data-parallel jobs (spec.gpus): a job needs a worker with at least that many devices.
ALTER TABLE jobs ADD COLUMN gpus INTEGER NOT NULL DEFAULT 1;
ALTER TABLE workers ADD COLUMN devices INTEGER NOT NULL DEFAULT 1;
