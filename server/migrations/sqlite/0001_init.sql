-- camp's whole state on one machine (the embedded store): the PostgreSQL
-- schema in SQLite's types. Times are microseconds since the Unix epoch
-- (UTC), lists and objects JSON text, worker ids 16-byte UUID blobs.

CREATE TABLE credentials (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    token_sha256  TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('user', 'admin', 'worker')),
    name          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    revoked_at    INTEGER
);

CREATE TABLE workers (
    id              BLOB PRIMARY KEY,
    name            TEXT NOT NULL,
    hostname        TEXT NOT NULL,
    device_kind     TEXT NOT NULL CHECK (device_kind IN ('cpu', 'cuda')),
    gpus            TEXT NOT NULL,
    datasets        TEXT NOT NULL,
    labels          TEXT NOT NULL DEFAULT '{}',
    registered_at   INTEGER NOT NULL,
    last_heartbeat  INTEGER NOT NULL,
    session_sha256  TEXT UNIQUE,
    credential_id   INTEGER REFERENCES credentials(id) ON DELETE SET NULL
);

CREATE TABLE experiments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    owner       TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT NOT NULL,
    owner            TEXT NOT NULL,
    stage            TEXT NOT NULL,
    dataset          TEXT NOT NULL,
    device           TEXT NOT NULL CHECK (device IN ('any', 'cpu', 'cuda')),
    spec             TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority         INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    lease_losses     INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    lease_worker     BLOB REFERENCES workers(id),
    lease_expires_at INTEGER,
    message          TEXT NOT NULL DEFAULT '',
    result           TEXT,
    epoch            INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    experiment_id    INTEGER REFERENCES experiments(id) ON DELETE CASCADE,
    node             TEXT NOT NULL DEFAULT ''
);
CREATE INDEX jobs_claimable ON jobs (priority DESC, id) WHERE state = 'queued';
-- A claim walks each owner's queue in claim order (fair share is per owner).
CREATE INDEX jobs_queued_by_owner ON jobs (owner, priority DESC, id) WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_running_by_owner ON jobs (owner) WHERE state = 'running';
CREATE INDEX jobs_by_experiment ON jobs (experiment_id, id);
CREATE INDEX jobs_by_lease_worker ON jobs (lease_worker) WHERE state = 'running';

CREATE TABLE job_dependencies (
    child_id   INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    parent_id  INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    PRIMARY KEY (child_id, parent_id)
);
CREATE INDEX job_dependencies_by_parent ON job_dependencies (parent_id);

CREATE TABLE submissions (
    owner           TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    request_sha256  TEXT NOT NULL,
    job_id          INTEGER REFERENCES jobs(id) ON DELETE CASCADE,
    experiment_id   INTEGER REFERENCES experiments(id) ON DELETE CASCADE,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (owner, request_id)
);

CREATE TABLE report_batches (
    job_id    INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt   INTEGER NOT NULL,
    sequence  INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt, sequence)
);

CREATE TABLE metrics (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id   INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt  INTEGER NOT NULL,
    step     INTEGER NOT NULL,
    epoch    INTEGER NOT NULL,
    name     TEXT NOT NULL,
    value    REAL NOT NULL,
    at       INTEGER NOT NULL
);
CREATE INDEX metrics_by_job ON metrics (job_id, id);

CREATE TABLE job_logs (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id   INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt  INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    line     TEXT NOT NULL
);
CREATE INDEX job_logs_by_job ON job_logs (job_id, id);

-- Checkpoints live in the database file as blobs, one row per 1 MiB chunk:
-- one file to back up, a checkpoint appears atomically with its commit, and
-- the WAL makes an acknowledged upload survive a crash of the coordinator.
CREATE TABLE checkpoints (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    epoch       INTEGER NOT NULL,
    step        INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    top1        REAL,
    metadata    TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    complete    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX checkpoints_by_job ON checkpoints (job_id, id);

CREATE TABLE checkpoint_chunks (
    checkpoint_id  INTEGER NOT NULL REFERENCES checkpoints(id) ON DELETE CASCADE,
    idx            INTEGER NOT NULL,
    data           BLOB NOT NULL,
    PRIMARY KEY (checkpoint_id, idx)
);
