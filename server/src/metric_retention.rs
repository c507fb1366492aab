//! Bounded metric storage. A training run reports its step-level series
//! (loss, top-1, lr, images/s every `print_freq` steps) without end; a lab
//! that keeps every point of every finished job keeps millions of rows per
//! job that no one reads at that resolution. So a running job keeps every
//! point (a live view and a resume need them), and once a job has ended a
//! background pass thins each of its step-level series to at most
//! `--metric-points-per-series` points: the first, the last and evenly
//! spaced ones between (`MetricRetention::kept_ranks`). Epoch-level series
//! (the contract's `MetricName::is_epoch_summary`) and names camp does not
//! report are kept whole. Each ended job is looked at once (the store marks
//! it), by whichever coordinator gets there first.

use std::sync::Arc;
use std::time::Duration;

use crate::store::{MetricRetention, Store, StoreError, StoreResult};

/// Ended jobs read from the store at a time.
const BATCH: u32 = 32;

/// Thins the metrics of ended jobs every `every`, for ever (nothing when retention keeps every point).
pub async fn run(store: Arc<dyn Store>, retention: MetricRetention, every: Duration) {
    let Some(points) = retention.points_per_series else { return };
    let series = MetricRetention::step_series();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = pass(store.as_ref(), &series, points).await {
            tracing::error!("metric retention: {e}");
        }
    }
}

/// Thins `series` of every ended job not looked at yet to at most `points`
/// points each; returns how many jobs it looked at.
pub async fn pass(store: &dyn Store, series: &[String], points: u32) -> StoreResult<usize> {
    let mut jobs = 0;
    loop {
        let ended = store.jobs_to_downsample(series, BATCH).await?;
        if ended.is_empty() {
            return Ok(jobs);
        }
        for job in ended {
            match store.downsample_metrics(job, series, points).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(job, removed, points, "metric retention: step-level series thinned"),
                // Deleted meanwhile: nothing left to thin.
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            jobs += 1;
        }
    }
}
