//! The queue's timing: long-poll claims that wake on a submission within
//! milliseconds (NOTIFY, not a poll interval), and the lease reaper.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use uuid::Uuid;

use crate::store::{Change, Claimed, Store, StoreResult};

/// A safety net only: claims are retried at least this often even if a
/// notification was lost (for example while the listener reconnected).
const RECHECK: Duration = Duration::from_secs(5);

/// Claims the next job for `worker`, waiting up to `wait` for one to appear.
pub async fn claim_wait(store: &dyn Store, worker: Uuid, lease: Duration, wait: Duration) -> StoreResult<Option<Claimed>> {
    // Subscribe before the first try so that a submission between the try and the wait is not missed.
    let mut changes = store.subscribe();
    let deadline = Instant::now() + wait;
    loop {
        if let Some(claimed) = store.claim(worker, lease).await? {
            return Ok(Some(claimed));
        }
        let wake = deadline.min(Instant::now() + RECHECK);
        loop {
            match tokio::time::timeout_at(wake, changes.recv()).await {
                Err(_) if Instant::now() >= deadline => return Ok(None),
                Err(_) | Ok(Ok(Change::Queue)) | Ok(Err(RecvError::Lagged(_))) => break,
                Ok(Ok(Change::Job(_))) => continue,
                Ok(Err(RecvError::Closed)) => return Ok(None),
            }
        }
    }
}

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
                }
            }
            Err(e) => tracing::error!("lease reaper: {e}"),
        }
    }
}
