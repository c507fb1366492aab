//! The store's rules that are not a query's business, decided here once for
//! every backend: what a lost attempt (an expired lease, a restarted worker, a
//! retry) does to its job, how a finished attempt ends it, who may take a
//! worker's registration over, which checkpoints
//! retention keeps, the order a pipeline is stored in, what a repeated request
//! key returns, and which jobs may be started from. A backend reads the facts,
//! asks here, and writes the verdict in the same transaction.

use camp_proto::limits::{excerpt, truncate_text, MAX_MESSAGE_TEXT_BYTES};
use camp_proto::SpecError;

use std::collections::HashMap;

use uuid::Uuid;

use super::{JobState, LeaseRef, NewJob, NewNode, NewPipeline, Outcome, RequestKey, Retention, StoreError, StoreResult};

/// A spec rule broken by a submission (the store checks what needs other jobs).
pub(crate) fn spec_invalid(e: SpecError) -> StoreError {
    StoreError::Invalid { field: e.field.to_string(), reason: e.reason }
}

/// The nodes in an order where every node comes after the nodes it names, by
/// the contract's rules (`camp_proto::pipeline`, which the CLI applies too).
pub(crate) fn pipeline_order(nodes: &[NewNode]) -> StoreResult<Vec<usize>> {
    camp_proto::pipeline::topological_order(nodes).map_err(|e| StoreError::Invalid {
        field: match &e.node {
            Some((i, key)) => format!("nodes[{i}] ({key}).{}", e.field),
            None => e.field.to_string(),
        },
        reason: e.reason,
    })
}

/// A pipeline node as the job it becomes, and the jobs it waits for, once
/// the nodes before it (in `pipeline_order`) have their ids in `ids`: its
/// `init_from` node's id goes into the spec and, with its `after` nodes, into
/// its parents.
pub(crate) fn pipeline_job(p: &NewPipeline, node: &NewNode, ids: &HashMap<&str, i64>) -> (NewJob, Vec<i64>) {
    let mut spec = node.spec.clone();
    let init = node.init_from.as_deref().map(|k| ids[k]);
    spec.init_from = init.unwrap_or(0);
    let mut parents: Vec<i64> = node.after.iter().map(|k| ids[k.as_str()]).collect();
    parents.extend(init);
    parents.sort_unstable();
    parents.dedup();
    let job = NewJob {
        name: node.name.clone(),
        owner: p.owner.clone(),
        spec,
        priority: node.priority,
        max_attempts: p.max_attempts,
        request: None,
    };
    (job, parents)
}

/// The fencing rule: a worker write goes through only if `at` is the job's
/// current token — the job (its state, attempt and lease holder as read in the
/// write's transaction) is running, at this attempt, leased to this worker.
pub(crate) fn check_fence(at: LeaseRef, job: Option<(String, u32, Option<Uuid>)>) -> StoreResult<()> {
    let (state, attempt, holder) = job.ok_or_else(|| StoreError::NotFound(format!("job {}", at.job_id)))?;
    if state != "running" || attempt != at.attempt {
        return Err(StoreError::Stale(format!(
            "job {} attempt {} is not the running attempt (job is {state}, attempt {attempt})",
            at.job_id, at.attempt
        )));
    }
    if holder != Some(at.worker) {
        return Err(StoreError::Stale(format!("job {} attempt {} is leased to another worker", at.job_id, at.attempt)));
    }
    Ok(())
}

/// A listing's page as the query takes it: at most `limit` rows (0: 100),
/// ids below `before_id` (0 or less: from the newest).
pub(crate) fn page(limit: u32, before_id: i64) -> (i64, i64) {
    let limit = if limit == 0 { 100 } else { limit };
    (i64::from(limit), if before_id <= 0 { i64::MAX } else { before_id })
}

/// A job named by `init_from`: it must exist and not have failed or been
/// cancelled (a queued or running one is waited for).
pub(crate) fn check_init_parent(id: i64, state: Option<JobState>) -> StoreResult<()> {
    match state {
        None => Err(StoreError::Invalid { field: "init_from".into(), reason: format!("job {id} does not exist") }),
        Some(state @ (JobState::Failed | JobState::Cancelled)) => Err(StoreError::Invalid {
            field: "init_from".into(),
            reason: format!("job {id} {}: there is nothing to start from", state.as_str()),
        }),
        Some(_) => Ok(()),
    }
}

/// What a submission makes, which its request key stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Made {
    Job,
    Experiment,
}

/// A request key seen before (same owner): the job or experiment the first
/// request made, if this request is the same request for the same kind of
/// thing; otherwise why not.
pub(crate) fn earlier_submission(
    key: &RequestKey,
    made: Made,
    stored_sha256: &str,
    job: Option<i64>,
    experiment: Option<i64>,
) -> StoreResult<i64> {
    let used = |how: &str| StoreError::FailedPrecondition(format!("request_id '{}' was used before {how}", excerpt(&key.id)));
    if stored_sha256 != key.sha256 {
        return Err(used("for a different request"));
    }
    match (made, job, experiment) {
        (Made::Job, Some(id), _) | (Made::Experiment, _, Some(id)) => Ok(id),
        (Made::Job, None, Some(_)) => Err(used("for a pipeline")),
        (Made::Experiment, Some(_), None) => Err(used("for a single job")),
        // What it made was deleted: nothing to return, and a new one would break the promise.
        (_, None, None) => Err(used("(what it made no longer exists)")),
    }
}

/// A running job's lease as found when its attempt is lost: expired (the
/// reaper), its worker registered again (a restart), or given back by the
/// worker as `Outcome::Retry`.
#[derive(Debug, Clone)]
pub(crate) struct ExpiredLease {
    pub attempt: u32,
    pub max_attempts: u32,
    /// Attempts lost before this one.
    pub lease_losses: u32,
    pub cancel_requested: bool,
    /// The worker that held it (its name), if it is still registered.
    pub worker: Option<String>,
}

/// How an attempt was lost.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Loss<'a> {
    /// The lease ran out: the worker stopped heartbeating.
    Expired,
    /// The worker that held it registered again: it restarted, the attempt is gone.
    Restarted,
    /// The worker gave it up for a reason outside the job (`Outcome::Retry`), with its message.
    OutsideTheJob(&'a str),
}

/// The reaper's verdict on an expired lease: see `lost_attempt`.
pub(crate) fn reap(lease: &ExpiredLease) -> (JobState, String) {
    lost_attempt(lease, Loss::Expired)
}

/// The verdict on a lost attempt, whatever lost it: the job's new state and
/// message. A job whose cancel was asked is cancelled; one that has now lost
/// `max_attempts` attempts fails; any other goes back to the queue (the next
/// claim starts attempt + 1 from its latest checkpoint). The attempt counts
/// as lost (`lease_losses` + 1) in every case.
pub(crate) fn lost_attempt(lease: &ExpiredLease, loss: Loss<'_>) -> (JobState, String) {
    let worker = lease.worker.as_deref().unwrap_or("?");
    let lost = lease.lease_losses + 1;
    let n = lease.attempt;
    let why = match loss {
        Loss::Expired => format!("lease expired on attempt {n} (worker {worker} stopped heartbeating)"),
        Loss::Restarted => format!("worker {worker} restarted during attempt {n}"),
        Loss::OutsideTheJob(message) => format!("attempt {n} failed outside the job ({message})"),
    };
    if lease.cancel_requested {
        let how = match loss {
            Loss::Expired => "the worker stopped heartbeating",
            Loss::Restarted => "the worker restarted",
            Loss::OutsideTheJob(_) => "the worker gave the attempt up",
        };
        (JobState::Cancelled, format!("cancelled: {how}"))
    } else if lost >= lease.max_attempts {
        (JobState::Failed, format!("failed: {why}; {lost} of {} attempts lost", lease.max_attempts))
    } else {
        (JobState::Queued, format!("re-queued: {why}"))
    }
}

/// How a job ends an attempt its worker finished: its new state, its message,
/// and whether the attempt counts as lost. `Retry` is a lost attempt
/// (`lost_attempt`); `Released` goes back to the queue uncounted; the others
/// are final, with the worker's message.
pub(crate) fn finished(outcome: Outcome, message: &str, lease: &ExpiredLease) -> (JobState, String, bool) {
    match ending_state(outcome) {
        Some(state) => (state, message.to_string(), false),
        None => {
            let (state, message) = lost_attempt(lease, Loss::OutsideTheJob(message));
            (state, excerpt_message(message), true)
        }
    }
}

/// The state an ending gives its job whatever the job's facts; None for a
/// retry, a lost attempt (`lost_attempt` decides).
fn ending_state(outcome: Outcome) -> Option<JobState> {
    match outcome {
        Outcome::Succeeded => Some(JobState::Succeeded),
        Outcome::Failed => Some(JobState::Failed),
        Outcome::Cancelled => Some(JobState::Cancelled),
        Outcome::Released => Some(JobState::Queued),
        Outcome::Retry => None,
    }
}

/// The state an ending gives its job when it needs neither the job's facts
/// nor a cascade to its children: a success, a release (back to the queue,
/// uncounted). Such endings can be written many at once (`finish_batch`).
pub(crate) fn plain_ending(outcome: Outcome) -> Option<JobState> {
    match outcome {
        Outcome::Succeeded | Outcome::Released => ending_state(outcome),
        Outcome::Failed | Outcome::Cancelled | Outcome::Retry => None,
    }
}

/// A verdict's message within the bound the worker's own messages have.
fn excerpt_message(message: String) -> String {
    truncate_text(&message, MAX_MESSAGE_TEXT_BYTES)
}

/// Whether a worker registering again as `previous` may take that row over:
/// only if the row exists and was registered with the same credential as
/// this registration (or both without one). A caller with another credential
/// must not take over, or requeue the jobs of, a worker that is not its own.
pub(crate) fn may_take_over(stored_credential: Option<Option<i64>>, credential_id: Option<i64>) -> bool {
    stored_credential == Some(credential_id)
}

/// The checkpoints a new one makes redundant, from a job's complete
/// checkpoints as (id, top-1) in upload order: all but the `keep_latest`
/// newest (at least one) and, with `keep_best`, the best evaluated one (the
/// highest top-1; the oldest among equals).
pub(crate) fn retention_victims(checkpoints: &[(i64, Option<f64>)], retention: Retention) -> Vec<i64> {
    let keep_latest = retention.keep_latest.max(1) as usize;
    let best = if retention.keep_best {
        checkpoints
            .iter()
            .filter_map(|&(id, top1)| top1.filter(|t| !t.is_nan()).map(|t| (id, t)))
            .fold(None, |best: Option<(i64, f64)>, (id, t)| match best {
                Some((_, b)) if b >= t => best,
                _ => Some((id, t)),
            })
            .map(|(id, _)| id)
    } else {
        None
    };
    let mut newest_first: Vec<i64> = checkpoints.iter().map(|&(id, _)| id).collect();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    newest_first.into_iter().skip(keep_latest).filter(|&id| Some(id) != best).collect()
}

/// Which points of a step-level series of `n` points (ranked 0..n by step,
/// then row id) downsampling to at most `points` keeps: all of them if there
/// are no more than `points`; else the first, the last, and evenly spaced
/// ranks between: rank `r` stays when `r * (points - 1) / (n - 1)` (integer
/// division) differs from that of `r - 1`, which picks `points` ranks. Both
/// backends run this rule as SQL (`DOWNSAMPLE_VICTIMS` in each); the store
/// suite holds them to this function.
pub(crate) fn downsample_keeps(n: u64, points: u32) -> Vec<u64> {
    let m = u64::from(points.max(2));
    if n <= m {
        return (0..n).collect();
    }
    let bucket = |r: u64| r * (m - 1) / (n - 1);
    (0..n).filter(|&r| r == 0 || bucket(r) != bucket(r - 1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_keeps_the_first_the_last_and_evenly_spaced_points() {
        assert_eq!(downsample_keeps(5, 10), vec![0, 1, 2, 3, 4], "a short series stays whole");
        assert_eq!(downsample_keeps(10, 2), vec![0, 9]);
        assert_eq!(downsample_keeps(10, 1), vec![0, 9], "at least the first and the last");
        assert_eq!(downsample_keeps(11, 3), vec![0, 5, 10]);
        for (n, m) in [(1_000_u64, 7_u32), (2_000_000, 2_000), (2_001, 2_000), (99, 98)] {
            let kept = downsample_keeps(n, m);
            assert_eq!(kept.len(), m as usize, "{n} points to {m}");
            assert_eq!((kept[0], *kept.last().unwrap()), (0, n - 1));
            let gaps: Vec<u64> = kept.windows(2).map(|w| w[1] - w[0]).collect();
            let (lo, hi) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
            assert!(hi - lo <= 1, "evenly spaced: gaps {lo}..{hi} ({n} to {m})");
        }
    }

    fn lease(losses: u32, cancel: bool) -> ExpiredLease {
        ExpiredLease { attempt: losses + 1, max_attempts: 3, lease_losses: losses, cancel_requested: cancel, worker: Some("w1".into()) }
    }

    #[test]
    fn an_expired_lease_requeues_until_the_last_attempt_fails_and_a_cancel_wins() {
        assert_eq!(reap(&lease(0, false)).0, JobState::Queued);
        assert_eq!(reap(&lease(1, false)).0, JobState::Queued);
        let (state, message) = reap(&lease(2, false));
        assert_eq!(state, JobState::Failed);
        assert!(message.contains("3 of 3 attempts lost") && message.contains("worker w1"), "{message}");
        assert_eq!(reap(&lease(0, true)).0, JobState::Cancelled);
    }

    #[test]
    fn a_retry_and_a_restart_are_lost_attempts_counted_against_max_attempts() {
        let (state, message, lost) = finished(Outcome::Retry, "downloading checkpoint 1: broken pipe", &lease(0, false));
        assert_eq!((state, lost), (JobState::Queued, true));
        assert!(message.contains("attempt 1 failed outside the job (downloading checkpoint 1: broken pipe)"), "{message}");
        let (state, message, _) = finished(Outcome::Retry, "x", &lease(2, false));
        assert_eq!(state, JobState::Failed);
        assert!(message.contains("3 of 3 attempts lost"), "{message}");
        assert_eq!(finished(Outcome::Retry, "x", &lease(0, true)).0, JobState::Cancelled);
        assert_eq!(finished(Outcome::Released, "bye", &lease(2, false)), (JobState::Queued, "bye".to_string(), false));
        let (state, message) = lost_attempt(&lease(0, false), Loss::Restarted);
        assert_eq!(state, JobState::Queued);
        assert!(message.contains("worker w1 restarted during attempt 1"), "{message}");
        let long = "x".repeat(10_000);
        assert!(finished(Outcome::Retry, &long, &lease(0, false)).1.len() <= MAX_MESSAGE_TEXT_BYTES);
    }

    #[test]
    fn only_the_same_credential_takes_a_worker_row_over() {
        assert!(may_take_over(Some(Some(4)), Some(4)));
        assert!(may_take_over(Some(None), None));
        assert!(!may_take_over(Some(Some(4)), Some(5)), "another credential's worker");
        assert!(!may_take_over(Some(Some(4)), None), "a caller without a credential");
        assert!(!may_take_over(Some(None), Some(4)), "a worker registered without one");
        assert!(!may_take_over(None, None), "an unknown id");
    }

    #[test]
    fn retention_keeps_the_newest_and_the_best() {
        let ckpts = [(1, Some(0.5)), (2, Some(0.9)), (3, Some(0.7)), (4, None), (5, Some(0.6))];
        assert_eq!(retention_victims(&ckpts, Retention { keep_latest: 2, keep_best: true }), vec![3, 1]);
        assert_eq!(retention_victims(&ckpts, Retention { keep_latest: 2, keep_best: false }), vec![3, 2, 1]);
        assert_eq!(retention_victims(&ckpts, Retention { keep_latest: 0, keep_best: false }), vec![4, 3, 2, 1], "at least one is kept");
        // Equal top-1: the oldest is the best.
        assert_eq!(retention_victims(&[(1, Some(0.9)), (2, Some(0.9)), (3, None)], Retention { keep_latest: 1, keep_best: true }), vec![2]);
    }

    #[test]
    fn a_repeated_request_key_returns_what_the_first_request_made_of_the_same_kind() {
        let key = RequestKey { id: "k".into(), sha256: "s".into() };
        assert_eq!(earlier_submission(&key, Made::Job, "s", Some(4), None).unwrap(), 4);
        assert!(matches!(earlier_submission(&key, Made::Job, "t", Some(4), None), Err(StoreError::FailedPrecondition(_))));
        assert!(matches!(earlier_submission(&key, Made::Experiment, "s", Some(4), None), Err(StoreError::FailedPrecondition(_))));
    }
}
