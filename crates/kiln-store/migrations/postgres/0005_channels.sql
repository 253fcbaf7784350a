-- Deployments: named channels of an application (production, staging, …),
-- each pointing at one succeeded version. Versions stay immutable; a
-- channel moves. `revision` grows by one at each change, so an edge agent
-- can wait for "anything after revision N".
CREATE TABLE channels (
    application_id  UUID NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    owner_id        BIGINT NOT NULL,
    -- No cascade: a version a channel points at cannot be deleted.
    version_id      UUID NOT NULL REFERENCES versions(id),
    revision        BIGINT NOT NULL,
    updated_us      BIGINT NOT NULL,
    PRIMARY KEY (application_id, name)
);
CREATE INDEX channels_version ON channels(version_id);

-- Every change of a channel, kept: which version, when, by which token.
-- Not tied to versions by a key, so a version that was once deployed can
-- still be deleted once no channel points at it.
CREATE TABLE channel_events (
    application_id  UUID NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    revision        BIGINT NOT NULL,
    version_id      UUID NOT NULL,
    -- 'promote' or 'rollback'.
    action          TEXT NOT NULL,
    -- Who made the change: the owner and the fingerprint of the token used.
    actor           TEXT NOT NULL,
    created_us      BIGINT NOT NULL,
    PRIMARY KEY (application_id, name, revision)
);

-- Read-only tokens of edge servers: channels and artifacts of one owner,
-- of one application when application_id is set.
CREATE TABLE edge_tokens (
    -- sha256 of the token; the token itself is never stored.
    hash            TEXT PRIMARY KEY,
    owner_id        BIGINT NOT NULL REFERENCES owners(id) ON DELETE CASCADE,
    application_id  UUID REFERENCES applications(id) ON DELETE CASCADE,
    created_us      BIGINT NOT NULL
);

-- Artifacts are also served by content address.
CREATE INDEX versions_sha256 ON versions(binary_sha256);
