-- Labels a worker must carry (all of them, with these values) to run the job: a JSON object.
ALTER TABLE jobs ADD COLUMN require_labels TEXT NOT NULL DEFAULT '{}';
