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

-- Counts succeeded parents down in each of their waiting children; returns
-- how many children now wait for nothing. Call it in a statement after the
-- parents' update: it then sees every child committed meanwhile (a child
-- being submitted holds its parents' rows until it commits).
CREATE FUNCTION camp_count_down_children(parents BIGINT[]) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    ready BIGINT;
BEGIN
    WITH children AS (
        SELECT d.child_id, count(*) AS n FROM job_dependencies d WHERE d.parent_id = ANY(parents) GROUP BY d.child_id),
    counted AS (
        UPDATE jobs c SET parents_pending = greatest(c.parents_pending - ch.n, 0) FROM children ch
        WHERE c.id = ch.child_id AND c.state = 'queued' AND c.parents_pending > 0
        RETURNING c.parents_pending)
    SELECT count(*) INTO ready FROM counted WHERE parents_pending = 0;
    RETURN ready;
END $$;

-- A batch of plain endings (success: 'succeeded', release: 'queued'), one
-- round trip for the lot (the store's `finish_batch`): each attempt is ended
-- only under its fencing token (this worker, this attempt, still running); a
-- job named twice is ended once (its first entry). Then, in a statement of its
-- own (a fresh snapshot: it sees every child committed while the first waited
-- for a parent's row), each succeeded job's waiting children are counted
-- down. The jobs ended are announced in one notification ('jobs:ID,...'), and
-- the queue ('queue') when a job went back to it or a child became claimable.
-- Returns the jobs ended with their new state.
CREATE FUNCTION camp_finish_batch(ids BIGINT[], attempts INT[], workers UUID[], states TEXT[], messages TEXT[], results TEXT[])
RETURNS TABLE (id BIGINT, state TEXT) LANGUAGE plpgsql AS $$
DECLARE
    done_ids BIGINT[];
    done_states TEXT[];
    ready BIGINT;
BEGIN
    WITH r AS (
        SELECT DISTINCT ON (u.id) u.* FROM unnest(ids, attempts, workers, states, messages, results)
            WITH ORDINALITY AS u(id, attempt, worker, state, message, result, n) ORDER BY u.id, u.n),
    done AS (
        UPDATE jobs j SET state = r.state, message = r.message, result = COALESCE(r.result::jsonb, j.result),
            lease_worker = NULL, lease_expires_at = NULL,
            finished_at = CASE WHEN r.state = 'queued' THEN NULL ELSE now() END
        FROM r WHERE j.id = r.id AND j.attempt = r.attempt AND j.lease_worker = r.worker AND j.state = 'running'
        RETURNING j.id, j.state)
    SELECT array_agg(done.id), array_agg(done.state) INTO done_ids, done_states FROM done;
    IF done_ids IS NULL THEN
        RETURN;
    END IF;
    PERFORM pg_notify('camp', 'jobs:' || array_to_string(done_ids, ','));
    -- A statement of its own, so a fresh snapshot.
    ready := camp_count_down_children(ARRAY(SELECT e.id FROM unnest(done_ids, done_states) AS e(id, state) WHERE e.state = 'succeeded'));
    IF ready > 0 OR 'queued' = ANY(done_states) THEN
        PERFORM pg_notify('camp', 'queue');
    END IF;
    RETURN QUERY SELECT unnest(done_ids), unnest(done_states);
END $$;

-- Claims and finishes rewrite a job row twice: an index that stand-alone jobs
-- do not need should not be written for them (reads name an experiment).
DROP INDEX jobs_by_experiment;
CREATE INDEX jobs_by_experiment ON jobs (experiment_id, id) WHERE experiment_id IS NOT NULL;
