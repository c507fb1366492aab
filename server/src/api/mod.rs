//! The gRPC faces of the coordinator: `jobs` for users, `workers` for worker
//! daemons. This module holds what both share: status mapping and conversions.

pub mod jobs;
pub mod workers;

use camp_proto::v1;
use chrono::{DateTime, Utc};
use tonic::Status;

use crate::store::{Checkpoint, Experiment, Job, JobState, StoreError};

/// Maps store errors to precise gRPC codes; database details stay in our logs.
impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        match e {
            StoreError::NotFound(what) => Status::not_found(format!("{what} not found")),
            StoreError::Stale(msg) => Status::failed_precondition(msg),
            StoreError::PermissionDenied(msg) => Status::permission_denied(msg),
            StoreError::FailedPrecondition(msg) => Status::failed_precondition(msg),
            StoreError::Invalid { field, reason } => Status::invalid_argument(format!("{field}: {reason}")),
            StoreError::Database(e) => {
                tracing::error!("database error: {e}");
                Status::internal("internal error")
            }
            StoreError::Migrate(e) => {
                tracing::error!("migration error: {e}");
                Status::internal("internal error")
            }
        }
    }
}

pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn opt_ms(t: Option<DateTime<Utc>>) -> i64 {
    t.map_or(0, ms)
}

pub fn state_to_proto(s: JobState) -> v1::JobState {
    match s {
        JobState::Queued => v1::JobState::Queued,
        JobState::Running => v1::JobState::Running,
        JobState::Succeeded => v1::JobState::Succeeded,
        JobState::Failed => v1::JobState::Failed,
        JobState::Cancelled => v1::JobState::Cancelled,
    }
}

pub fn state_from_proto(s: v1::JobState) -> Option<JobState> {
    match s {
        v1::JobState::Unspecified => None,
        v1::JobState::Queued => Some(JobState::Queued),
        v1::JobState::Running => Some(JobState::Running),
        v1::JobState::Succeeded => Some(JobState::Succeeded),
        v1::JobState::Failed => Some(JobState::Failed),
        v1::JobState::Cancelled => Some(JobState::Cancelled),
    }
}

pub fn job_to_proto(j: &Job) -> v1::Job {
    v1::Job {
        id: j.id,
        name: j.name.clone(),
        owner: j.owner.clone(),
        spec: Some(j.spec.to_proto()),
        state: state_to_proto(j.state) as i32,
        priority: j.priority,
        attempt: j.attempt,
        max_attempts: j.max_attempts,
        lease_losses: j.lease_losses,
        cancel_requested: j.cancel_requested,
        worker: j.worker.clone().unwrap_or_default(),
        message: j.message.clone(),
        created_at_ms: ms(j.created_at),
        started_at_ms: opt_ms(j.started_at),
        finished_at_ms: opt_ms(j.finished_at),
        result_json: j.result.as_ref().map(|r| r.to_string()).unwrap_or_default(),
        epoch: j.epoch,
        experiment_id: j.experiment_id.unwrap_or(0),
        node: j.node.clone(),
        parents: j.parents.clone(),
    }
}

pub fn experiment_to_proto(e: &Experiment) -> v1::Experiment {
    v1::Experiment { id: e.id, name: e.name.clone(), owner: e.owner.clone(), created_at_ms: ms(e.created_at), jobs: e.jobs.iter().map(job_to_proto).collect() }
}

pub fn checkpoint_to_proto(c: &Checkpoint) -> v1::Checkpoint {
    v1::Checkpoint {
        id: c.id,
        job_id: c.job_id,
        attempt: c.attempt,
        epoch: c.epoch,
        step: c.step,
        sha256: c.sha256.clone(),
        size: c.size,
        top1: c.top1.unwrap_or(f64::NAN),
        best: c.best,
        metadata_json: c.metadata.to_string(),
        created_at_ms: ms(c.created_at),
    }
}

/// Size of the pieces checkpoints are stored and streamed in.
pub const CHUNK_BYTES: usize = 1 << 20;
