-- One token per worker. A name is never reused, even once its token is
-- revoked, so the worker a build record names is exactly one credential.
-- The server's shared --worker-token is not here: it is the worker named
-- `default`, known from the server's configuration.
CREATE TABLE workers (
    name        TEXT PRIMARY KEY,
    -- sha256 of the token; the token itself is never stored.
    token_hash  TEXT NOT NULL UNIQUE,
    created_us  BIGINT NOT NULL,
    -- Set once; a revoked token is refused from then on.
    revoked_us  BIGINT
);

-- The worker that claimed a build's latest attempt. Heartbeats and reports
-- are accepted from it only; it stays once the build ends.
ALTER TABLE builds ADD COLUMN worker TEXT;
CREATE INDEX builds_running_worker ON builds(worker) WHERE state = 'running';
