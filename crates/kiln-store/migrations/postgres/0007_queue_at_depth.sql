-- The queue at depth. A claim skips through the owners that have queued
-- builds (state, owner_id), counts each one's running builds and takes the
-- oldest queued build of the owner with the fewest (owner_id, state, …):
-- each step reads one index, so a claim costs the same with ten queued
-- builds or a hundred thousand. A keyset page of one owner's builds, all
-- of them or those in one state, reads only its own rows.
CREATE INDEX builds_state_owner ON builds(state, owner_id, created_us, id);
CREATE INDEX builds_owner_state ON builds(owner_id, state, created_us, id);
DROP INDEX builds_owner;
CREATE INDEX builds_owner ON builds(owner_id, created_us, id);
-- builds_owner_state serves an upload's count of unfinished builds too.
DROP INDEX builds_unfinished;
