//! What a running job reports: metrics and log lines, and how much of them a
//! finished job keeps.
//!
//! Reads are pages after a row id (a job may hold millions of points, more
//! than one reply may carry); "the newest N of each series" is composed here
//! once from the job's series names (which `report` keeps beside the points,
//! so that no read scans millions of points for them) and one backward walk
//! per series (`series_tail_start`). Retention: a step-level series (a name that
//! `camp_proto::metric::MetricName` says comes with a step's progress) is
//! kept whole while its job runs and thinned to at most N points once the job
//! has ended (`downsample_metrics`; which points survive is
//! `policy::downsample_keeps`); epoch-level series and names camp does not
//! report are never thinned.

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

/// Which of a job's metrics a read selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricFilter {
    pub job_id: i64,
    /// Only this series.
    pub name: Option<String>,
    /// Only this attempt's points.
    pub attempt: Option<u32>,
    /// Only points at this step or later.
    pub since_step: Option<i64>,
}

impl MetricFilter {
    pub fn job(job_id: i64) -> Self {
        MetricFilter { job_id, ..MetricFilter::default() }
    }
}

/// How many points a step-level series keeps once its job has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricRetention {
    /// At most this many points per step-level series (at least 2: the first
    /// and the last are always kept); None keeps every point.
    pub points_per_series: Option<u32>,
}

impl Default for MetricRetention {
    fn default() -> Self {
        MetricRetention { points_per_series: Some(MetricRetention::DEFAULT_POINTS) }
    }
}

impl MetricRetention {
    pub const DEFAULT_POINTS: u32 = 2_000;

    /// The ranks (0-based, by step then row id) of the points that a series of
    /// `n` points keeps when thinned to `points`: the first, the last, and
    /// evenly spaced ones between (the rule `downsample_metrics` applies).
    pub fn kept_ranks(n: u64, points: u32) -> Vec<u64> {
        super::policy::downsample_keeps(n, points)
    }

    /// The names of the series retention thins: those the contract says come
    /// with a step's progress (`MetricName::is_epoch_summary` is false).
    pub fn step_series() -> Vec<String> {
        camp_proto::metric::MetricName::FIXED.into_iter().filter(|m| !m.is_epoch_summary()).map(|m| m.to_string()).collect()
    }
}

#[async_trait]
pub trait TelemetryStore {
    /// Stores a batch unless its sequence is already stored; Ok(false) for a duplicate.
    async fn report(&self, batch: ReportBatch) -> StoreResult<bool>;
    /// A page of the metrics `filter` selects, in the order they were stored, after row `after_id`.
    async fn metric_page(&self, filter: &MetricFilter, after_id: i64, limit: u32) -> StoreResult<Vec<StoredMetric>>;
    /// A page of a job's metrics in the order they were stored, after row `after_id`.
    async fn metrics(
        &self,
        job_id: i64,
        name: Option<&str>,
        attempt: Option<u32>,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredMetric>> {
        let filter = MetricFilter { job_id, name: name.map(str::to_string), attempt, since_step: None };
        self.metric_page(&filter, after_id, limit).await
    }
    /// The names of a job's metric series, in byte order (kept by `report`;
    /// a series whose points were all dropped may still be named).
    async fn metric_series(&self, job_id: i64) -> StoreResult<Vec<String>>;
    /// The row id of the oldest of the newest `last` points that `filter`
    /// selects of its one series (`filter.name` must be set); None if it selects none.
    async fn series_tail_start(&self, filter: &MetricFilter, last: u32) -> StoreResult<Option<i64>>;
    /// A page (after row `after_id`, at most `limit`, in stored order) of the
    /// newest `last` points of each series `filter` selects (composed of the
    /// calls above, once for every backend: two short reads per series).
    async fn last_metrics_page(&self, filter: &MetricFilter, last: u32, after_id: i64, limit: u32) -> StoreResult<Vec<StoredMetric>> {
        let names = match &filter.name {
            Some(name) => vec![name.clone()],
            None => self.metric_series(filter.job_id).await?,
        };
        let mut page = Vec::new();
        for name in names {
            let series = MetricFilter { name: Some(name), ..filter.clone() };
            let Some(start) = self.series_tail_start(&series, last).await? else { continue };
            page.extend(self.metric_page(&series, after_id.max(start - 1), limit.min(last)).await?);
        }
        page.sort_unstable_by_key(|m| m.id);
        page.truncate(limit as usize);
        Ok(page)
    }
    /// Ended jobs whose metrics retention has not looked at yet and that have
    /// one of `series`, oldest first, at most `limit`. Ended jobs with none of
    /// them have nothing to thin: they are marked looked-at on the way, many
    /// at once (a queue of short jobs ends thousands a minute).
    async fn jobs_to_downsample(&self, series: &[String], limit: u32) -> StoreResult<Vec<i64>>;
    /// Thins each of `series` of an ended job to at most `points` points (at
    /// least 2; `policy::downsample_keeps` says which stay), and records that
    /// retention has looked at the job. Returns the points removed.
    /// FailedPrecondition while the job has not ended (a running job keeps every point).
    async fn downsample_metrics(&self, job_id: i64, series: &[String], points: u32) -> StoreResult<u64>;
    /// At most `points` (at least 2) of the series `name` of a job (of one
    /// attempt if given), ordered by step: all of a series no longer than
    /// that, else the first point at or after each of `points` evenly spaced
    /// steps from its first to its last (for a series of consecutive steps,
    /// exactly the points retention keeps, `policy::downsample_keeps`). Read
    /// by index probes, without changing anything: a chart's view of a long
    /// series in one short reply.
    async fn sample_metrics(&self, job_id: i64, name: &str, attempt: Option<u32>, points: u32) -> StoreResult<Vec<StoredMetric>>;
    /// The ids of the newest metric and log line of a job (0 where none), where a live view starts.
    async fn last_row_ids(&self, job_id: i64) -> StoreResult<(i64, i64)>;
    /// A page of a job's log lines, after row `after_id`.
    async fn logs(&self, job_id: i64, after_id: i64, limit: u32) -> StoreResult<Vec<LogLine>>;
    /// The newest `last` log lines of a job, oldest first.
    async fn log_tail(&self, job_id: i64, last: u32) -> StoreResult<Vec<LogLine>>;
}
