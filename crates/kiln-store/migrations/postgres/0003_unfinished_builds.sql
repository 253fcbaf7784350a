-- Claiming a build counts each owner's running builds, and an upload
-- counts its owner's queued and running ones: both look only at these.
CREATE INDEX builds_unfinished ON builds(owner_id, state) WHERE state IN ('queued', 'running');
