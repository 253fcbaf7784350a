-- Times are microseconds since the Unix epoch (UTC) in both backends, so
-- ordering and lease arithmetic are the same SQL everywhere.
CREATE TABLE owners (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    created_us  BIGINT NOT NULL
);

CREATE TABLE tokens (
    -- sha256 of the token; the token itself is never stored.
    hash        TEXT PRIMARY KEY,
    owner_id    BIGINT NOT NULL REFERENCES owners(id) ON DELETE CASCADE,
    created_us  BIGINT NOT NULL
);

CREATE TABLE applications (
    id          BLOB PRIMARY KEY,
    owner_id    BIGINT NOT NULL REFERENCES owners(id),
    name        TEXT NOT NULL,
    notes       TEXT NOT NULL,
    created_us  BIGINT NOT NULL
);
CREATE INDEX applications_owner ON applications(owner_id, created_us);

CREATE TABLE builds (
    id               BLOB PRIMARY KEY,
    application_id   BLOB NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    owner_id         BIGINT NOT NULL,
    version          TEXT NOT NULL,
    language         TEXT NOT NULL,
    phases           TEXT NOT NULL,
    conf             TEXT NOT NULL,
    notes            TEXT NOT NULL,
    created_us       BIGINT NOT NULL,
    state            TEXT NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    started_us       BIGINT,
    finished_us      BIGINT,
    error            TEXT,
    source_location  TEXT NOT NULL,
    logs_location    TEXT,
    profile          TEXT,
    lease_id         BLOB,
    lease_expires_us BIGINT
);
CREATE INDEX builds_owner ON builds(owner_id, created_us);
CREATE INDEX builds_queue ON builds(state, created_us);
-- One live or successful build per application version; a failed,
-- crashed or cancelled version number may be uploaded again.
CREATE UNIQUE INDEX builds_live_version ON builds(application_id, version)
    WHERE state IN ('queued', 'running', 'succeeded');

CREATE TABLE versions (
    id               BLOB PRIMARY KEY REFERENCES builds(id) ON DELETE CASCADE,
    application_id   BLOB NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    owner_id         BIGINT NOT NULL,
    version          TEXT NOT NULL,
    language         TEXT NOT NULL,
    phases           TEXT NOT NULL,
    conf             TEXT NOT NULL,
    notes            TEXT NOT NULL,
    created_us       BIGINT NOT NULL,
    source_location  TEXT NOT NULL,
    binary_location  TEXT NOT NULL,
    logs_location    TEXT NOT NULL,
    binary_sha256    TEXT NOT NULL,
    binary_size      BIGINT NOT NULL,
    profile          TEXT,
    UNIQUE (application_id, version)
);
CREATE INDEX versions_owner ON versions(owner_id, created_us);
