//! Jobs and experiments as the store keeps them, and what it promises about them.

use async_trait::async_trait;
use camp_proto::{JobResult, JobSpec};
use chrono::{DateTime, Utc};

use super::StoreResult;

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
    pub result: Option<JobResult>,
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

#[async_trait]
pub trait JobStore {
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
    /// Cancels every job of the experiment that has not finished (composed of
    /// the calls above, once for every backend).
    async fn cancel_experiment(&self, id: i64, by: &str) -> StoreResult<Experiment> {
        let experiment = self.get_experiment(id).await?;
        for job in experiment.jobs.iter().filter(|j| !j.state.is_terminal() && !j.cancel_requested) {
            match self.cancel_job(job.id, by).await {
                // Finished meanwhile, or cancelled with its parent: nothing left to do.
                Ok(_) | Err(super::StoreError::FailedPrecondition(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.get_experiment(id).await
    }
}
