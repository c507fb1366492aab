//! Table rows as the store's records: the SELECTs that read them and their
//! conversions (a row the records cannot hold is FailedPrecondition, never a panic).

use super::*;

pub(super) const JOB_SELECT: &str = "SELECT j.id, j.name, j.owner, j.spec, j.state, j.priority, j.attempt, j.max_attempts, \
     j.lease_losses, j.cancel_requested, w.name AS worker, j.message, j.result, j.epoch, j.created_at, \
     j.started_at, j.finished_at, j.experiment_id, j.node, \
     (SELECT json_group_array(parent_id) FROM (SELECT d.parent_id FROM job_dependencies d WHERE d.child_id = j.id ORDER BY d.parent_id)) \
     AS parents FROM jobs j LEFT JOIN workers w ON w.id = j.lease_worker";

#[derive(FromRow)]
pub(super) struct JobRecord {
    id: i64,
    name: String,
    owner: String,
    spec: String,
    state: String,
    priority: i32,
    attempt: i64,
    max_attempts: i64,
    lease_losses: i64,
    cancel_requested: bool,
    worker: Option<String>,
    message: String,
    result: Option<String>,
    epoch: i64,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    experiment_id: Option<i64>,
    node: String,
    parents: Json<Vec<i64>>,
}

impl TryFrom<JobRecord> for Job {
    type Error = StoreError;
    fn try_from(r: JobRecord) -> StoreResult<Job> {
        let spec: JobSpec = serde_json::from_str(&r.spec)
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
            result: r.result.and_then(|text| serde_json::from_str::<JobResult>(&text).ok()),
            epoch: r.epoch as u32,
            created_at: time(r.created_at),
            started_at: r.started_at.map(time),
            finished_at: r.finished_at.map(time),
            experiment_id: r.experiment_id,
            node: r.node,
            parents: r.parents.0,
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
    attempt: i64,
    epoch: i64,
    step: i64,
    sha256: String,
    size: i64,
    top1: Option<f64>,
    metadata: Json<serde_json::Value>,
    created_at: i64,
    best: bool,
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
            metadata: r.metadata.0,
            created_at: time(r.created_at),
            best: r.best,
        }
    }
}

pub(super) const CREDENTIAL_COLUMNS: &str = "id, role, name, created_at, expires_at, revoked_at";

#[derive(FromRow)]
pub(super) struct CredentialRecord {
    id: i64,
    role: String,
    name: String,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl TryFrom<CredentialRecord> for Credential {
    type Error = StoreError;
    fn try_from(r: CredentialRecord) -> StoreResult<Credential> {
        let role = Role::parse(&r.role)
            .ok_or_else(|| StoreError::FailedPrecondition(format!("credential {} has unknown role {}", r.id, r.role)))?;
        Ok(Credential {
            id: r.id,
            role,
            name: r.name,
            created_at: time(r.created_at),
            expires_at: r.expires_at.map(time),
            revoked_at: r.revoked_at.map(time),
        })
    }
}
