//! Table rows as the store's records: the SELECTs that read them and their
//! conversions (a row the records cannot hold is FailedPrecondition, never a panic).

use super::*;

/// The columns of a `JobRecord` but its worker's name, of table `jobs` as `j`
/// (a SELECT joins the worker's name; a claim's RETURNING reads it itself).
macro_rules! job_columns {
    () => {
        "j.id, j.name, j.owner, j.spec, j.state, j.priority, j.attempt, j.max_attempts, \
         j.lease_losses, j.cancel_requested, j.message, j.result, j.epoch, j.created_at, \
         j.started_at, j.finished_at, j.experiment_id, j.node, \
         ARRAY(SELECT d.parent_id FROM job_dependencies d WHERE d.child_id = j.id ORDER BY d.parent_id) AS parents"
    };
}
pub(super) use job_columns;

pub(super) const JOB_SELECT: &str =
    concat!("SELECT ", job_columns!(), ", w.name AS worker FROM jobs j LEFT JOIN workers w ON w.id = j.lease_worker");

#[derive(FromRow)]
pub(super) struct JobRecord {
    id: i64,
    name: String,
    owner: String,
    spec: serde_json::Value,
    state: String,
    priority: i32,
    attempt: i32,
    max_attempts: i32,
    lease_losses: i32,
    cancel_requested: bool,
    worker: Option<String>,
    message: String,
    result: Option<serde_json::Value>,
    epoch: i32,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    experiment_id: Option<i64>,
    node: String,
    parents: Vec<i64>,
}

impl TryFrom<JobRecord> for Job {
    type Error = StoreError;
    fn try_from(r: JobRecord) -> StoreResult<Job> {
        let spec: JobSpec = serde_json::from_value(r.spec)
            .map_err(|e| StoreError::FailedPrecondition(format!("job {} has an unreadable spec: {e}", r.id)))?;
        let state = JobState::parse(&r.state)
            .ok_or_else(|| StoreError::FailedPrecondition(format!("job {} has unknown state {}", r.id, r.state)))?;
        Ok(Job {
            id: r.id,
            name: r.name,
            owner: r.owner,
            spec,
            state,
            priority: r.priority,
            attempt: r.attempt as u32,
            max_attempts: r.max_attempts as u32,
            lease_losses: r.lease_losses as u32,
            cancel_requested: r.cancel_requested,
            worker: if state == JobState::Running { r.worker } else { None },
            message: r.message,
            // A row stored before results were typed, in a shape the type does not read, shows no result.
            result: r.result.and_then(|v| serde_json::from_value(v).ok()),
            epoch: r.epoch as u32,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            experiment_id: r.experiment_id,
            node: r.node,
            parents: r.parents,
        })
    }
}

/// Complete checkpoints only: an upload in progress is invisible. Callers add `AND ...`.
pub(super) const CHECKPOINT_SELECT: &str = "SELECT c.id, c.job_id, c.attempt, c.epoch, c.step, c.sha256, c.size, c.top1, \
     c.metadata, c.created_at, c.id = COALESCE((SELECT b.id FROM checkpoints b WHERE b.job_id = c.job_id \
     AND b.complete AND b.top1 IS NOT NULL ORDER BY b.top1 DESC, b.id LIMIT 1), -1) AS best \
     FROM checkpoints c WHERE c.complete";

#[derive(FromRow)]
pub(super) struct CheckpointRecord {
    id: i64,
    job_id: i64,
    attempt: i32,
    epoch: i32,
    step: i64,
    sha256: String,
    size: i64,
    top1: Option<f64>,
    metadata: serde_json::Value,
    created_at: DateTime<Utc>,
    best: Option<bool>,
}

impl From<CheckpointRecord> for Checkpoint {
    fn from(r: CheckpointRecord) -> Self {
        Checkpoint {
            id: r.id,
            job_id: r.job_id,
            attempt: r.attempt as u32,
            epoch: r.epoch as u32,
            step: r.step,
            sha256: r.sha256,
            size: r.size as u64,
            top1: r.top1,
            metadata: r.metadata,
            created_at: r.created_at,
            best: r.best.unwrap_or(false),
        }
    }
}

#[derive(FromRow)]
pub(super) struct CredentialRecord {
    id: i64,
    role: String,
    name: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<CredentialRecord> for Credential {
    type Error = StoreError;
    fn try_from(r: CredentialRecord) -> StoreResult<Credential> {
        let role = Role::parse(&r.role)
            .ok_or_else(|| StoreError::FailedPrecondition(format!("credential {} has unknown role {}", r.id, r.role)))?;
        Ok(Credential { id: r.id, role, name: r.name, created_at: r.created_at, expires_at: r.expires_at, revoked_at: r.revoked_at })
    }
}
