//! Where all of the coordinator's state lives. `Store` is the seam: PostgreSQL
//! implements it today (`postgres`); an embedded backend can implement it later.

pub mod postgres;

use async_trait::async_trait;
use camp_proto::JobSpec;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use uuid::Uuid;

pub use postgres::PgStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    /// A write from an attempt that no longer holds the job's lease.
    #[error("stale attempt: {0}")]
    Stale(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is well-formed but the job's state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub name: String,
    pub owner: String,
    pub spec: JobSpec,
    pub priority: i32,
    pub max_attempts: u32,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub name: String,
    pub owner: String,
    pub spec: JobSpec,
    pub state: JobState,
    pub priority: i32,
    pub attempt: u32,
    pub max_attempts: u32,
    pub lease_losses: u32,
    pub cancel_requested: bool,
    pub worker: Option<String>,
    pub message: String,
    pub result: Option<serde_json::Value>,
    pub epoch: u32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub experiment_id: Option<i64>,
    /// Its key in the pipeline ("" outside one).
    pub node: String,
    /// Jobs that must succeed before this one may start.
    pub parents: Vec<i64>,
}

/// One job of a new pipeline; `after` and `init_from` name other nodes' keys.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub key: String,
    pub name: String,
    pub spec: JobSpec,
    pub after: Vec<String>,
    pub init_from: Option<String>,
    pub priority: i32,
}

#[derive(Debug, Clone)]
pub struct NewPipeline {
    pub name: String,
    pub owner: String,
    pub nodes: Vec<NewNode>,
    pub max_attempts: u32,
}

#[derive(Debug, Clone)]
pub struct Experiment {
    pub id: i64,
    pub name: String,
    pub owner: String,
    pub created_at: DateTime<Utc>,
    /// In submission (topological) order; empty in listings.
    pub jobs: Vec<Job>,
}

#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub stage: Option<String>,
    pub owner: Option<String>,
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub struct NewWorker {
    pub name: String,
    pub hostname: String,
    pub device_kind: String,
    pub gpus: Vec<String>,
    pub datasets: Vec<String>,
    pub labels: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub id: Uuid,
    pub new: NewWorker,
    pub last_heartbeat: DateTime<Utc>,
    pub running_jobs: Vec<i64>,
}

/// A job handed to a worker, with the checkpoint to resume from and, for a job
/// that starts from another's weights, that job's best checkpoint.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job: Job,
    pub resume_from: Option<Checkpoint>,
    pub init_from: Option<Checkpoint>,
}

/// Identifies one attempt of one job: the fencing token every worker write carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptRef {
    pub job_id: i64,
    pub attempt: u32,
}

#[derive(Debug, Clone, Default)]
pub struct HeartbeatReply {
    pub cancel: Vec<i64>,
    pub lost: Vec<i64>,
}

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
    pub at: AttemptRef,
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

#[derive(Debug, Clone)]
pub struct NewCheckpoint {
    pub at: AttemptRef,
    pub epoch: u32,
    pub step: i64,
    pub sha256: String,
    pub size: u64,
    pub top1: Option<f64>,
    pub metadata: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub id: i64,
    pub job_id: i64,
    pub attempt: u32,
    pub epoch: u32,
    pub step: i64,
    pub sha256: String,
    pub size: u64,
    pub top1: Option<f64>,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub best: bool,
}

/// Which checkpoints of a job survive a new one.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep_latest: u32,
    pub keep_best: bool,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { keep_latest: 2, keep_best: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
    /// The worker gave the job back (shutting down): queued again, not a lost attempt.
    Released,
}

/// What the lease reaper did to one job.
#[derive(Debug, Clone)]
pub struct Reaped {
    pub job_id: i64,
    pub attempt: u32,
    pub new_state: JobState,
}

/// A change notification: something about this job changed (state, metrics, logs),
/// or, with `job_id == None`, the queue gained a claimable job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Queue,
    Job(i64),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Notifications from every coordinator sharing this store.
    fn subscribe(&self) -> broadcast::Receiver<Change>;

    async fn submit_job(&self, job: NewJob) -> StoreResult<Job>;
    async fn get_job(&self, id: i64) -> StoreResult<Job>;
    async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>>;
    /// Cancels a queued job at once; asks the worker of a running one to stop.
    async fn cancel_job(&self, id: i64, user: &str) -> StoreResult<Job>;

    /// Stores a whole DAG of jobs as one experiment, or nothing.
    async fn submit_pipeline(&self, pipeline: NewPipeline) -> StoreResult<Experiment>;
    async fn get_experiment(&self, id: i64) -> StoreResult<Experiment>;
    async fn list_experiments(&self, limit: u32) -> StoreResult<Vec<Experiment>>;
    /// Cancels every job of the experiment that has not finished.
    async fn cancel_experiment(&self, id: i64, user: &str) -> StoreResult<Experiment>;

    async fn register_worker(&self, worker: NewWorker) -> StoreResult<Uuid>;
    async fn list_workers(&self) -> StoreResult<Vec<Worker>>;
    /// Takes the next job this worker can run, if any, with a lease of `lease`.
    async fn claim(&self, worker: Uuid, lease: std::time::Duration) -> StoreResult<Option<Claimed>>;
    async fn heartbeat(&self, worker: Uuid, running: &[AttemptRef], lease: std::time::Duration) -> StoreResult<HeartbeatReply>;
    /// Stores a batch unless its sequence is already stored; Ok(false) for a duplicate.
    async fn report(&self, batch: ReportBatch) -> StoreResult<bool>;
    /// Stores a verified checkpoint's bytes (in chunks) and applies retention.
    async fn put_checkpoint(&self, ckpt: NewCheckpoint, chunks: Vec<Vec<u8>>, retention: Retention) -> StoreResult<Checkpoint>;
    async fn finish(&self, at: AttemptRef, outcome: Outcome, message: &str, result: Option<serde_json::Value>) -> StoreResult<()>;
    /// Returns running jobs whose lease expired to the queue, or fails them after max attempts.
    async fn reap_expired_leases(&self) -> StoreResult<Vec<Reaped>>;

    async fn metrics(&self, job_id: i64, name: Option<&str>, attempt: Option<u32>, after_id: i64) -> StoreResult<Vec<StoredMetric>>;
    async fn logs(&self, job_id: i64, after_id: i64) -> StoreResult<Vec<LogLine>>;
    async fn checkpoints(&self, job_id: i64) -> StoreResult<Vec<Checkpoint>>;
    async fn checkpoint(&self, id: i64) -> StoreResult<Checkpoint>;
    async fn checkpoint_chunk_count(&self, id: i64) -> StoreResult<u32>;
    async fn checkpoint_chunk(&self, id: i64, idx: u32) -> StoreResult<Vec<u8>>;

    async fn create_token(&self, user: &str, token_sha256: &str) -> StoreResult<()>;
    async fn user_for_token(&self, token_sha256: &str) -> StoreResult<Option<String>>;
}
