//! The queue's timing and its account of itself: the lease reaper, and why a
//! queued job has not started. (Claims are `dispatch`'s.)

use std::sync::Arc;
use std::time::Duration;

use crate::ops::metrics as names;
use crate::store::{ClaimPolicy, Job, JobState, QueueFacts, Store};

/// Returns jobs with expired leases to the queue (or fails them) every `every`.
pub async fn run_reaper(store: Arc<dyn Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.reap_expired_leases().await {
            Ok(reaped) => {
                for r in reaped {
                    tracing::warn!(job = r.job_id, attempt = r.attempt, state = r.new_state.as_str(), "lease expired");
                    metrics::counter!(names::LEASE_EXPIRIES).increment(1);
                    if r.new_state == JobState::Queued {
                        metrics::counter!(names::REQUEUES).increment(1);
                    }
                }
            }
            Err(e) => tracing::error!("lease reaper: {e}"),
        }
    }
}

/// Why `job` (queued) has not started, from the facts the queue decides on, in
/// the order claims check them.
pub fn waiting_reason(job: &Job, facts: &QueueFacts, policy: ClaimPolicy) -> String {
    if !facts.unfinished_parents.is_empty() {
        let parents: Vec<String> = facts.unfinished_parents.iter().map(|(id, state)| format!("job {id} ({})", state.as_str())).collect();
        return format!("waiting for its parents to succeed: {}", parents.join(", "));
    }
    if let Some(cap) = policy.max_running_per_user {
        if facts.owner_running >= cap {
            return format!("{} already has {} running jobs, the most one user may run at once", job.owner, facts.owner_running);
        }
    }
    if facts.live_matching_workers == 0 {
        let device = match job.spec.device.as_str() {
            "any" => String::new(),
            d => format!("device {d} and "),
        };
        let labels = match job.spec.require_labels.is_empty() {
            true => String::new(),
            false => {
                let wanted: Vec<String> = job.spec.require_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(" with labels {}", wanted.join(", "))
            }
        };
        let devices = match job.spec.gpus {
            1 => String::new(),
            n => format!(" and {n} devices"),
        };
        return format!("no live worker offers {device}data set {}{labels}{devices}", job.spec.dataset);
    }
    match facts.ahead {
        0 => "next in line: waiting for a free worker".into(),
        n => format!("{n} queued job(s) come first (higher priority, or older at the same priority)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            id: 7,
            name: "j".into(),
            owner: "ada".into(),
            spec: camp_proto::JobSpec::default(),
            state: JobState::Queued,
            priority: 0,
            attempt: 0,
            max_attempts: 3,
            lease_losses: 0,
            cancel_requested: false,
            worker: None,
            message: String::new(),
            result: None,
            epoch: 0,
            created_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
            experiment_id: None,
            node: String::new(),
            parents: vec![],
        }
    }

    #[test]
    fn a_queued_job_says_what_holds_it() {
        let capped = ClaimPolicy { max_running_per_user: Some(2) };
        let live = QueueFacts { live_matching_workers: 1, ..QueueFacts::default() };
        let parents = QueueFacts { unfinished_parents: vec![(3, JobState::Running)], ..live.clone() };
        assert_eq!(waiting_reason(&job(), &parents, capped), "waiting for its parents to succeed: job 3 (running)");
        let busy = QueueFacts { owner_running: 2, ..live.clone() };
        assert!(waiting_reason(&job(), &busy, capped).contains("ada already has 2 running jobs"));
        assert_eq!(waiting_reason(&job(), &busy, ClaimPolicy::default()), "next in line: waiting for a free worker");
        let nobody = QueueFacts::default();
        assert_eq!(waiting_reason(&job(), &nobody, capped), "no live worker offers data set cifar10");
        let mut picky = job();
        picky.spec.require_labels.insert("gpu".into(), "h100".into());
        assert_eq!(waiting_reason(&picky, &nobody, capped), "no live worker offers data set cifar10 with labels gpu=h100");
        picky.spec.gpus = 4;
        assert_eq!(waiting_reason(&picky, &nobody, capped), "no live worker offers data set cifar10 with labels gpu=h100 and 4 devices");
        let behind = QueueFacts { ahead: 4, ..live };
        assert!(waiting_reason(&job(), &behind, capped).starts_with("4 queued job(s) come first"));
    }
}
