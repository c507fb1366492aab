//! Workers and the leases they hold: who runs what, under which fencing token, until when.

use async_trait::async_trait;
use camp_proto::JobResult;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Checkpoint, Job, JobState, StoreResult};

#[derive(Debug, Clone)]
pub struct NewWorker {
    pub name: String,
    pub hostname: String,
    pub device_kind: String,
    pub gpus: Vec<String>,
    pub datasets: Vec<String>,
    pub labels: serde_json::Value,
    /// Devices it trains one job on: it runs jobs of at most this many ranks (`spec.gpus`).
    pub devices: u32,
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub id: Uuid,
    pub new: NewWorker,
    pub last_heartbeat: DateTime<Utc>,
    pub running_jobs: Vec<i64>,
}

/// A registered worker as its session names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSession {
    pub worker: Uuid,
    /// The credential it registered with (None on a coordinator without auth).
    pub credential_id: Option<i64>,
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

/// What a worker offers, as claims match it against jobs: its device kind,
/// data sets, labels and number of devices. Workers of one class can be served by one query.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkerClass {
    pub device_kind: String,
    /// Sorted, without repeats.
    pub datasets: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub devices: u32,
}

impl WorkerClass {
    pub fn new(device_kind: String, mut datasets: Vec<String>, labels: &serde_json::Value, devices: u32) -> Self {
        datasets.sort();
        datasets.dedup();
        let labels = labels
            .as_object()
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        WorkerClass { device_kind, datasets, labels, devices }
    }
}

/// How claims share the queue out.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClaimPolicy {
    /// At most this many running jobs per owner (None = no cap).
    pub max_running_per_user: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct HeartbeatReply {
    pub cancel: Vec<i64>,
    pub lost: Vec<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
    /// The worker gave the job back (shutting down): queued again, not a lost attempt.
    Released,
    /// The attempt failed for a reason outside the job (a checkpoint it could not
    /// download): queued again as a lost attempt, so it fails after `max_attempts`
    /// (`policy::finished`).
    Retry,
}

/// One worker's `Finish`: how its attempt ended, as `LeaseStore::finish` takes it.
#[derive(Debug, Clone)]
pub struct Finish {
    pub at: LeaseRef,
    pub outcome: Outcome,
    pub message: String,
    pub result: Option<JobResult>,
}

/// A registration that named the worker's earlier id (`reregister_worker`).
#[derive(Debug, Clone)]
pub struct Rejoined {
    /// The id to use from now on: the earlier one if its row was taken over, else a new one.
    pub id: Uuid,
    /// Whether the earlier row was taken over.
    pub reused: bool,
    /// The jobs the earlier row still leased, now lost attempts (`policy::lost_attempt`).
    pub requeued: Vec<Reaped>,
}

/// What the lease reaper did to one job.
#[derive(Debug, Clone)]
pub struct Reaped {
    pub job_id: i64,
    pub attempt: u32,
    pub new_state: JobState,
}

#[async_trait]
pub trait LeaseStore {
    /// Registers a worker under a session secret (its sha256) and the credential it came with.
    async fn register_worker(&self, worker: NewWorker, session_sha256: &str, credential_id: Option<i64>) -> StoreResult<Uuid>;
    /// Registers a worker that was registered before as `previous` (the id it kept
    /// across a restart). The row is taken over (new resources, labels and session;
    /// the old session stops working) only if `policy::may_take_over` allows it; the
    /// jobs it still leases are lost attempts at once (re-queued, or failed after
    /// `max_attempts`, with their children cancelled), since the worker that ran them
    /// restarted. Otherwise (an unknown id, another credential's worker) a new row, as
    /// `register_worker`.
    async fn reregister_worker(
        &self,
        previous: Uuid,
        worker: NewWorker,
        session_sha256: &str,
        credential_id: Option<i64>,
    ) -> StoreResult<Rejoined>;
    async fn worker_for_session(&self, session_sha256: &str) -> StoreResult<Option<WorkerSession>>;
    /// The 1,000 workers heard from most recently.
    async fn list_workers(&self) -> StoreResult<Vec<Worker>>;
    /// Takes the next job this worker can run, if any, with a lease of `lease`:
    /// highest priority first, then the owner with the fewest running jobs, then the oldest;
    /// only a queued job whose parents all succeeded, on the worker's device kind (or `any`)
    /// and one of its data sets, and not an owner's beyond `policy`'s cap. The attempt
    /// counter goes up by one (the new fencing token); the claim carries the job's latest
    /// checkpoint to resume from and, for `init_from`, the parent's best one; metrics that
    /// earlier attempts reported past the resumed step are dropped (they will be redone).
    async fn claim(&self, worker: Uuid, lease: std::time::Duration, policy: ClaimPolicy) -> StoreResult<Option<Claimed>>;
    /// What `worker` offers (NotFound for an unknown worker).
    async fn worker_class(&self, worker: Uuid) -> StoreResult<WorkerClass>;
    /// Claims for several workers of one `class` at once, in `claim`'s order:
    /// the first job goes to the first worker, and so on, until the queue has
    /// nothing more for them. A backend with a cheaper way than one claim
    /// after another overrides it.
    async fn claim_batch(
        &self,
        class: &WorkerClass,
        workers: &[Uuid],
        lease: std::time::Duration,
        policy: ClaimPolicy,
    ) -> StoreResult<Vec<(Uuid, Claimed)>> {
        let _ = class;
        let mut claimed = Vec::new();
        for &worker in workers {
            match self.claim(worker, lease, policy).await? {
                Some(c) => claimed.push((worker, c)),
                None => break,
            }
        }
        Ok(claimed)
    }
    async fn heartbeat(&self, worker: Uuid, running: &[AttemptRef], lease: std::time::Duration) -> StoreResult<HeartbeatReply>;
    /// Several workers' heartbeats at once, each answered as `heartbeat` would.
    async fn heartbeat_batch(
        &self,
        beats: &[(Uuid, Vec<AttemptRef>)],
        lease: std::time::Duration,
    ) -> StoreResult<Vec<StoreResult<HeartbeatReply>>> {
        let mut replies = Vec::with_capacity(beats.len());
        for (worker, running) in beats {
            replies.push(self.heartbeat(*worker, running, lease).await);
        }
        Ok(replies)
    }
    async fn finish(&self, at: LeaseRef, outcome: Outcome, message: &str, result: Option<&JobResult>) -> StoreResult<()>;
    /// Several finishes at once, each answered as `finish` would answer it
    /// (one job finished twice: the second is stale).
    async fn finish_batch(&self, finishes: &[Finish]) -> StoreResult<Vec<StoreResult<()>>> {
        let mut answers = Vec::with_capacity(finishes.len());
        for f in finishes {
            answers.push(self.finish(f.at, f.outcome, &f.message, f.result.as_ref()).await);
        }
        Ok(answers)
    }
    /// Gives each running job whose lease expired `policy::reap`'s verdict (back to the
    /// queue, failed after `max_attempts` lost leases, or cancelled if asked) and cascades
    /// a failure or cancel to the jobs waiting on it; drops uploads that were abandoned and
    /// workers silent for a week.
    async fn reap_expired_leases(&self) -> StoreResult<Vec<Reaped>>;
    /// Whether `worker` holds the lease of job `job_id` or of a job that starts from it.
    async fn worker_may_read(&self, worker: Uuid, job_id: i64) -> StoreResult<bool>;
}
