//! What an operator watches of the store: whether it answers at all (gRPC
//! health) and how the queue stands (the `/metrics` gauges). Both are cheap,
//! read-only and asked every few seconds by every coordinator, so each is one
//! query.

use async_trait::async_trait;

use super::StoreResult;

/// Queued jobs of one device and data set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueuedCount {
    /// The device the jobs ask for: `cpu`, `cuda` or `any`.
    pub device: String,
    pub dataset: String,
    pub jobs: u64,
}

/// The queue at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Queued jobs by device and data set (claimable or waiting on parents), sorted; only non-empty groups.
    pub queued: Vec<QueuedCount>,
    /// Jobs running now (leased to a worker).
    pub running: u64,
    /// Workers heard from within `live_within`.
    pub live_workers: u64,
}

impl QueueDepth {
    /// The backends' one query returns rows of (kind, device, data set, count),
    /// kind `queued` (one row per device and data set), `running` or `live`.
    pub(crate) fn from_rows(rows: Vec<(String, String, String, i64)>) -> QueueDepth {
        let mut depth = QueueDepth::default();
        for (kind, device, dataset, n) in rows {
            let n = n.max(0) as u64;
            match kind.as_str() {
                "queued" => depth.queued.push(QueuedCount { device, dataset, jobs: n }),
                "running" => depth.running = n,
                "live" => depth.live_workers = n,
                _ => {}
            }
        }
        depth.queued.sort();
        depth
    }
}

#[async_trait]
pub trait OpsStore {
    /// Succeeds when the database answers a trivial query.
    async fn ping(&self) -> StoreResult<()>;
    /// Queued jobs by device and data set, running jobs and live workers, in one query.
    async fn queue_depth(&self, live_within: std::time::Duration) -> StoreResult<QueueDepth>;
}
