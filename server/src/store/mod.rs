//! Where all of the coordinator's state lives. `Store` is the seam: PostgreSQL
//! implements it today (`postgres`); an embedded backend can implement it later.
//!
//! Who may do what is decided above the store (the API layer); the store
//! enforces what must hold atomically with a write: the fencing token
//! (`LeaseRef`: this worker, at this attempt) of every worker write, the
//! per-user cap on running jobs at claim time, and idempotency keys.

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

/// What a credential lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Submits jobs, reads, cancels their own.
    User,
    /// A user who may act on every job and use any priority.
    Admin,
    /// A worker daemon: the worker protocol only.
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "user" => Role::User,
            "admin" => Role::Admin,
            "worker" => Role::Worker,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct NewCredential {
    pub role: Role,
    pub name: String,
    pub token_sha256: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// An API token's record (the token itself is never stored, only its sha256).
#[derive(Debug, Clone)]
pub struct Credential {
    pub id: i64,
    pub role: Role,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A registered worker as its session names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSession {
    pub worker: Uuid,
    /// The credential it registered with (None on a coordinator without auth).
    pub credential_id: Option<i64>,
}

/// A client's idempotency key and the digest of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    pub id: String,
    pub sha256: String,
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub name: String,
    pub owner: String,
    pub spec: JobSpec,
    pub priority: i32,
    pub max_attempts: u32,
    /// A retry with the same key (same owner) returns the job made the first time.
    pub request: Option<RequestKey>,
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

/// One job of a new pipeline (the contract's node); `after` and `init_from` name other nodes' keys.
pub use camp_proto::pipeline::Node as NewNode;

#[derive(Debug, Clone)]
pub struct NewPipeline {
    pub name: String,
    pub owner: String,
    pub nodes: Vec<NewNode>,
    pub max_attempts: u32,
    pub request: Option<RequestKey>,
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
    /// Only jobs with a smaller id (a page after an earlier one); 0 = from the newest.
    pub before_id: i64,
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

/// Identifies one attempt of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptRef {
    pub job_id: i64,
    pub attempt: u32,
}

/// The fencing token every worker write carries: the worker that holds the
/// job's lease, at the job's current attempt. A write whose token is not the
/// job's current one changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRef {
    pub worker: Uuid,
    pub job_id: i64,
    pub attempt: u32,
}

/// How claims share the queue out.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClaimPolicy {
    /// At most this many running jobs per owner (None = no cap).
    pub max_running_per_user: Option<u32>,
}

/// What decides whether a queued job can start, for telling its owner why it waits.
#[derive(Debug, Clone, Default)]
pub struct QueueFacts {
    /// Parents that have not succeeded yet, with their states.
    pub unfinished_parents: Vec<(i64, JobState)>,
    /// The owner's running jobs.
    pub owner_running: u32,
    /// Workers heard from recently that offer the job's device and data set.
    pub live_matching_workers: u32,
    /// Claimable jobs that come before this one (higher priority, or older at equal priority).
    pub ahead: u32,
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

/// A checkpoint being uploaded: its header. `sha256` and `size` are what the
/// worker declared; the API layer checks the bytes against them before commit.
#[derive(Debug, Clone)]
pub struct NewCheckpoint {
    pub at: LeaseRef,
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

    /// Stores a job, or, for a request key seen before from the same owner,
    /// returns the job made then (FailedPrecondition if the request differs).
    async fn submit_job(&self, job: NewJob) -> StoreResult<Job>;
    async fn get_job(&self, id: i64) -> StoreResult<Job>;
    async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>>;
    /// Cancels a queued job at once; asks the worker of a running one to stop.
    /// `by` names who asked (for the job's message); permission is the caller's to check.
    async fn cancel_job(&self, id: i64, by: &str) -> StoreResult<Job>;
    /// Sets the priority of a queued or running job.
    async fn set_priority(&self, id: i64, priority: i32) -> StoreResult<Job>;
    /// Why a queued job has not started: the facts the queue decides on.
    async fn queue_facts(&self, id: i64, live_within: std::time::Duration) -> StoreResult<QueueFacts>;

    /// Stores a whole DAG of jobs as one experiment, or nothing (idempotent as `submit_job`).
    async fn submit_pipeline(&self, pipeline: NewPipeline) -> StoreResult<Experiment>;
    async fn get_experiment(&self, id: i64) -> StoreResult<Experiment>;
    /// Newest first, with ids below `before_id` (0: from the newest); only `owner`'s when given.
    async fn list_experiments(&self, limit: u32, before_id: i64, owner: Option<&str>) -> StoreResult<Vec<Experiment>>;
    /// Cancels every job of the experiment that has not finished.
    async fn cancel_experiment(&self, id: i64, by: &str) -> StoreResult<Experiment>;

    /// Registers a worker under a session secret (its sha256) and the credential it came with.
    async fn register_worker(&self, worker: NewWorker, session_sha256: &str, credential_id: Option<i64>) -> StoreResult<Uuid>;
    async fn worker_for_session(&self, session_sha256: &str) -> StoreResult<Option<WorkerSession>>;
    /// The 1,000 workers heard from most recently.
    async fn list_workers(&self) -> StoreResult<Vec<Worker>>;
    /// Takes the next job this worker can run, if any, with a lease of `lease`:
    /// highest priority first, then the owner with the fewest running jobs, then the oldest.
    async fn claim(&self, worker: Uuid, lease: std::time::Duration, policy: ClaimPolicy) -> StoreResult<Option<Claimed>>;
    async fn heartbeat(&self, worker: Uuid, running: &[AttemptRef], lease: std::time::Duration) -> StoreResult<HeartbeatReply>;
    /// Stores a batch unless its sequence is already stored; Ok(false) for a duplicate.
    async fn report(&self, batch: ReportBatch) -> StoreResult<bool>;
    /// Starts an upload (fenced); its chunks follow, and it is invisible until committed.
    async fn begin_checkpoint(&self, ckpt: NewCheckpoint) -> StoreResult<i64>;
    async fn put_checkpoint_chunk(&self, upload: i64, idx: u32, data: &[u8]) -> StoreResult<()>;
    /// Makes the upload a checkpoint of the job (fenced again) and applies retention.
    async fn commit_checkpoint(&self, at: LeaseRef, upload: i64, retention: Retention) -> StoreResult<Checkpoint>;
    /// Drops an upload that will not be committed.
    async fn abort_checkpoint(&self, upload: i64) -> StoreResult<()>;
    async fn finish(&self, at: LeaseRef, outcome: Outcome, message: &str, result: Option<serde_json::Value>) -> StoreResult<()>;
    /// Returns running jobs whose lease expired to the queue, or fails them after
    /// max attempts; drops uploads that were abandoned and workers silent for a week.
    async fn reap_expired_leases(&self) -> StoreResult<Vec<Reaped>>;

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
    async fn checkpoints(&self, job_id: i64) -> StoreResult<Vec<Checkpoint>>;
    async fn checkpoint(&self, id: i64) -> StoreResult<Checkpoint>;
    /// The sizes of a checkpoint's stored chunks, in order.
    async fn checkpoint_chunk_sizes(&self, id: i64) -> StoreResult<Vec<u32>>;
    /// `len` bytes of chunk `idx` from `offset` (fewer at its end).
    async fn checkpoint_slice(&self, id: i64, idx: u32, offset: u32, len: u32) -> StoreResult<Vec<u8>>;
    /// Whether `worker` holds the lease of job `job_id` or of a job that starts from it.
    async fn worker_may_read(&self, worker: Uuid, job_id: i64) -> StoreResult<bool>;

    async fn create_credential(&self, credential: NewCredential) -> StoreResult<Credential>;
    async fn credential_for_token(&self, token_sha256: &str) -> StoreResult<Option<Credential>>;
    async fn list_credentials(&self) -> StoreResult<Vec<Credential>>;
    /// Revokes a credential from now on (again: no change).
    async fn revoke_credential(&self, id: i64) -> StoreResult<Credential>;
}
