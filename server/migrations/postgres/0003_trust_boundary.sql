-- The trust boundary: credentials with roles, expiry and revocation; worker
-- registrations bound to a secret session and to the credential that made
-- them; idempotent submissions; checkpoints streamed into the store before
-- they become visible.

-- One row per API token, stored as the sha256 of the token.
CREATE TABLE credentials (
    id            BIGSERIAL PRIMARY KEY,
    token_sha256  TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('user', 'admin', 'worker')),
    -- the user's name, or the worker credential's name
    name          TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ
);
INSERT INTO credentials (token_sha256, role, name, created_at)
    SELECT token_sha256, 'user', user_name, created_at FROM api_tokens;
DROP TABLE api_tokens;
DROP TABLE users;

-- A registration's secret (hashed) and the credential it registered with.
ALTER TABLE workers ADD COLUMN session_sha256 TEXT UNIQUE;
ALTER TABLE workers ADD COLUMN credential_id BIGINT REFERENCES credentials(id) ON DELETE SET NULL;

-- A client's idempotency keys: a retried submission returns the first result.
CREATE TABLE submissions (
    owner           TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    request_sha256  TEXT NOT NULL,
    job_id          BIGINT REFERENCES jobs(id) ON DELETE CASCADE,
    experiment_id   BIGINT REFERENCES experiments(id) ON DELETE CASCADE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, request_id)
);

-- An upload writes its chunks as they arrive; the checkpoint becomes visible
-- (complete) only once its bytes are all there and their sha256 checked.
ALTER TABLE checkpoints ADD COLUMN complete BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE checkpoints ALTER COLUMN complete SET DEFAULT false;
-- Chunks are read back in slices (substring): store them uncompressed so a
-- slice is read without the whole chunk.
ALTER TABLE checkpoint_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- Fair share counts each owner's running jobs.
CREATE INDEX jobs_running_by_owner ON jobs (owner) WHERE state = 'running';
