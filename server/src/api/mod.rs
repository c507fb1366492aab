//! The gRPC faces of the coordinator: `jobs` for users, `workers` for worker
//! daemons, `transfer` for checkpoint bytes both ways, `validate` for the
//! bounds every request is held to. This module holds what they share:
//! conversions to the wire and the choice of a checkpoint to download.

pub mod jobs;
pub mod transfer;
pub mod validate;
pub mod workers;

use camp_proto::v1;
use chrono::{DateTime, Utc};

use crate::error::{ApiError, ApiResult};
use crate::store::{Checkpoint, Experiment, Job, JobState, LogLine, Store, StoredMetric};

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
        result: j.result.clone(),
        epoch: j.epoch,
        experiment_id: j.experiment_id.unwrap_or(0),
        node: j.node.clone(),
        parents: j.parents.clone(),
        waiting_reason: String::new(),
    }
}

pub fn experiment_to_proto(e: &Experiment) -> v1::Experiment {
    v1::Experiment {
        id: e.id,
        name: e.name.clone(),
        owner: e.owner.clone(),
        created_at_ms: ms(e.created_at),
        jobs: e.jobs.iter().map(job_to_proto).collect(),
    }
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

pub fn metric_to_proto(m: StoredMetric) -> v1::Metric {
    v1::Metric {
        name: m.point.name,
        value: m.point.value,
        step: m.point.step,
        epoch: m.point.epoch,
        attempt: m.attempt,
        at_ms: ms(m.at),
        id: m.id,
    }
}

pub fn log_to_proto(l: LogLine) -> v1::LogLine {
    v1::LogLine { attempt: l.attempt, at_ms: ms(l.at), line: l.line, id: l.id }
}

/// The checkpoint a download request names: by id (which must be `job_id`'s,
/// when that is given too), or the job's best or latest.
pub async fn requested_checkpoint(store: &dyn Store, req: &v1::DownloadCheckpointRequest) -> ApiResult<Checkpoint> {
    if req.checkpoint_id != 0 {
        let ckpt = store.checkpoint(req.checkpoint_id).await?;
        if req.job_id != 0 && ckpt.job_id != req.job_id {
            // Not naming the job it belongs to: that may be someone else's.
            return Err(ApiError::invalid("checkpoint_id", format!("checkpoint {} is not a checkpoint of job {}", ckpt.id, req.job_id)));
        }
        return Ok(ckpt);
    }
    let all = store.checkpoints(req.job_id).await?;
    let picked = match req.which.as_str() {
        "" | "latest" => all.last(),
        "best" => all.iter().find(|c| c.best).or(all.last()),
        other => return Err(ApiError::invalid("which", format!("expected best or latest, got '{}'", camp_proto::limits::excerpt(other)))),
    };
    picked.cloned().ok_or_else(|| ApiError::NotFound(format!("a checkpoint of job {} (it has none yet)", req.job_id)))
}
