//! What a running job reports: metrics and log lines.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{LeaseRef, StoreResult};

#[derive(Debug, Clone)]
pub struct MetricPoint {
    pub name: String,
    pub value: f64,
    pub step: i64,
    pub epoch: u32,
}

#[derive(Debug, Clone)]
pub struct StoredMetric {
    pub id: i64,
    pub attempt: u32,
    pub point: MetricPoint,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct ReportBatch {
    pub at: LeaseRef,
    pub sequence: u64,
    pub metrics: Vec<MetricPoint>,
    pub log_lines: Vec<String>,
    pub epoch: u32,
}

#[derive(Debug, Clone)]
pub struct LogLine {
    pub id: i64,
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub line: String,
}

#[async_trait]
pub trait TelemetryStore {
    /// Stores a batch unless its sequence is already stored; Ok(false) for a duplicate.
    async fn report(&self, batch: ReportBatch) -> StoreResult<bool>;
    /// A page of a job's metrics in the order they were stored, after row `after_id`.
    async fn metrics(
        &self,
        job_id: i64,
        name: Option<&str>,
        attempt: Option<u32>,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredMetric>>;
    /// The ids of the newest metric and log line of a job (0 where none), where a live view starts.
    async fn last_row_ids(&self, job_id: i64) -> StoreResult<(i64, i64)>;
    /// A page of a job's log lines, after row `after_id`.
    async fn logs(&self, job_id: i64, after_id: i64, limit: u32) -> StoreResult<Vec<LogLine>>;
}
