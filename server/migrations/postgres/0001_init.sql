-- camp's whole state. A coordinator keeps nothing else, so several may share one database.

CREATE TABLE users (
    name        TEXT PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- API tokens, stored as the sha256 of the token: a leaked table gives no usable token.
CREATE TABLE api_tokens (
    token_sha256 TEXT PRIMARY KEY,
    user_name    TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE workers (
    id              UUID PRIMARY KEY,
    name            TEXT NOT NULL,
    hostname        TEXT NOT NULL,
    device_kind     TEXT NOT NULL CHECK (device_kind IN ('cpu', 'cuda')),
    gpus            TEXT[] NOT NULL,
    datasets        TEXT[] NOT NULL,
    labels          JSONB NOT NULL DEFAULT '{}',
    registered_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_heartbeat  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    name             TEXT NOT NULL,
    owner            TEXT NOT NULL,
    stage            TEXT NOT NULL,
    dataset          TEXT NOT NULL,
    device           TEXT NOT NULL CHECK (device IN ('any', 'cpu', 'cuda')),
    spec             JSONB NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority         INT NOT NULL DEFAULT 0,
    -- attempts started so far; the running attempt's number is the fencing token
    attempt          INT NOT NULL DEFAULT 0,
    max_attempts     INT NOT NULL CHECK (max_attempts >= 1),
    lease_losses     INT NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN NOT NULL DEFAULT false,
    lease_worker     UUID REFERENCES workers(id),
    lease_expires_at TIMESTAMPTZ,
    message          TEXT NOT NULL DEFAULT '',
    result           JSONB,
    epoch            INT NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ
);
CREATE INDEX jobs_claimable ON jobs (priority DESC, id) WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE state = 'running';

-- Which report batches were stored: a re-sent batch is recognised by its sequence.
CREATE TABLE report_batches (
    job_id    BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt   INT NOT NULL,
    sequence  BIGINT NOT NULL,
    PRIMARY KEY (job_id, attempt, sequence)
);

CREATE TABLE metrics (
    id       BIGSERIAL PRIMARY KEY,
    job_id   BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt  INT NOT NULL,
    step     BIGINT NOT NULL,
    epoch    INT NOT NULL,
    name     TEXT NOT NULL,
    value    DOUBLE PRECISION NOT NULL,
    at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX metrics_by_job ON metrics (job_id, id);

CREATE TABLE job_logs (
    id       BIGSERIAL PRIMARY KEY,
    job_id   BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt  INT NOT NULL,
    at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    line     TEXT NOT NULL
);
CREATE INDEX job_logs_by_job ON job_logs (job_id, id);

CREATE TABLE checkpoints (
    id          BIGSERIAL PRIMARY KEY,
    job_id      BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt     INT NOT NULL,
    epoch       INT NOT NULL,
    step        BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    size        BIGINT NOT NULL,
    top1        DOUBLE PRECISION,
    metadata    JSONB NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX checkpoints_by_job ON checkpoints (job_id, id);

CREATE TABLE checkpoint_chunks (
    checkpoint_id  BIGINT NOT NULL REFERENCES checkpoints(id) ON DELETE CASCADE,
    idx            INT NOT NULL,
    data           BYTEA NOT NULL,
    PRIMARY KEY (checkpoint_id, idx)
);
