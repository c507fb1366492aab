-- Claims at lab scale: the claimable set is an index that already excludes
-- jobs waiting for their parents, walked per owner; a job's required worker
-- labels are a column matched by containment.

-- Parents of a queued job that have not succeeded yet. Set at submission and
-- counted down as each parent succeeds; 0 = claimable as far as the DAG goes.
ALTER TABLE jobs ADD COLUMN parents_pending INT NOT NULL DEFAULT 0;
UPDATE jobs j SET parents_pending = (
    SELECT count(*) FROM job_dependencies d JOIN jobs p ON p.id = d.parent_id
    WHERE d.child_id = j.id AND p.state <> 'succeeded')
WHERE j.state = 'queued';

-- Labels a worker must carry (all of them, with these values) to run the job.
ALTER TABLE jobs ADD COLUMN require_labels JSONB NOT NULL DEFAULT '{}';

-- Each owner's claimable jobs in claim order: a claim reads each owner's
-- first few without sorting the queue.
CREATE INDEX jobs_claimable_by_owner ON jobs (owner, priority DESC, id) WHERE state = 'queued' AND parents_pending = 0;
DROP INDEX jobs_claimable;

-- Heartbeats renew leases many times a second across a fleet: with no index
-- on the lease's expiry, a renewal is a HOT update (no index is written, and
-- the page is pruned in place without a vacuum), and room is left on each
-- page for it. The reaper finds running jobs by jobs_running_by_owner.
DROP INDEX jobs_leased;
ALTER TABLE jobs SET (fillfactor = 80);
