//! One attempt at a claimed job, from start to `Finish`: fetch the checkpoint
//! to resume or start from, train on a thread of its own (a panic there fails
//! the job, not the worker) while a heartbeat keeps the lease and the reporter
//! forwards what the run observes, then report how it ended.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use camp_proto::limits;
use camp_proto::v1;
use camp_proto::{SpecError, ValidSpec};
use tokio::sync::mpsc;

use super::client::{download, retry, Client, DownloadError};
use super::reporter::{report_loop, ChannelObserver, Stops};
use super::DaemonConfig;
use crate::error::EngineError;
use crate::observer::StageOutcome;
use crate::parallel;
use crate::stage::StageInput;

/// Why an attempt failed (its text becomes the job's message).
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("assignment without a spec")]
    NoSpec,
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Handed back as `Outcome::Retry`: the job is not at fault.
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error("init_from: job {0} has no checkpoint to start from")]
    NoInitCheckpoint(i64),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("spec.gpus: the job needs {wanted} devices, this worker has {have}")]
    TooFewDevices { wanted: u32, have: u32 },
    #[error("training panicked: {0}")]
    Panicked(String),
    #[error("training thread: {0}")]
    Thread(#[from] tokio::task::JoinError),
}

pub(crate) async fn run_attempt(client: &mut Client, config: &DaemonConfig, worker_id: &str, a: v1::Assignment, shutdown: Arc<AtomicBool>) {
    let (job_id, attempt) = (a.job_id, a.attempt);
    tracing::info!(name = %a.name, resume = a.resume_from.as_ref().map(|c| c.epoch), "starting");
    let stops = Arc::new(Stops::default());
    let heartbeat = tokio::spawn(heartbeat_loop(
        client.clone(),
        worker_id.to_string(),
        v1::RunningJob { job_id, attempt },
        Duration::from_millis(a.lease_ms as u64 / 3).max(Duration::from_millis(100)),
        stops.clone(),
    ));

    let outcome = prepare_and_train(client, config, &a, stops.clone(), shutdown).await;
    heartbeat.abort();

    let (outcome, message, result) = match outcome {
        Ok(StageOutcome::Completed(result)) => (v1::Outcome::Succeeded, String::new(), Some(result)),
        Ok(StageOutcome::Cancelled) => (v1::Outcome::Cancelled, "cancelled at the user's request".into(), None),
        Ok(StageOutcome::Interrupted) => (v1::Outcome::Released, format!("worker {} shut down; re-queued", config.name), None),
        Ok(StageOutcome::Abandoned) => {
            tracing::warn!("lease lost; abandoned without writing");
            return;
        }
        // Not the job's fault (a download that failed, a data-parallel rank
        // that died): back to the queue, to resume from its last checkpoint
        // (counted against max_attempts, so a fault for good ends the job).
        Err(e @ (AttemptError::Download(_) | AttemptError::Engine(EngineError::Parallel(_)))) => {
            tracing::error!("attempt given up: {e}");
            (v1::Outcome::Retry, limits::truncate_text(&e.to_string(), limits::MAX_MESSAGE_TEXT_BYTES), None)
        }
        Err(e) => {
            tracing::error!("attempt failed: {e}");
            (v1::Outcome::Failed, limits::truncate_text(&e.to_string(), limits::MAX_MESSAGE_TEXT_BYTES), None)
        }
    };
    let req = v1::FinishRequest { job_id, attempt, outcome: outcome as i32, message, result };
    match retry("finish", config.retry_for, || {
        let mut c = client.clone();
        let req = req.clone();
        async move { c.finish(req).await }
    })
    .await
    {
        Ok(_) => tracing::info!(outcome = ?outcome, "finished"),
        Err(status) => tracing::error!("finish refused: {}", status.message()),
    }
}

/// Downloads the checkpoint to resume from (if any), then trains on a thread of
/// its own while this task forwards its events to the coordinator.
async fn prepare_and_train(
    client: &mut Client,
    config: &DaemonConfig,
    a: &v1::Assignment,
    stops: Arc<Stops>,
    shutdown: Arc<AtomicBool>,
) -> Result<StageOutcome, AttemptError> {
    // The coordinator checked it at submit; the worker checks what it is handed once, here.
    let spec = ValidSpec::from_proto(a.spec.as_ref().ok_or(AttemptError::NoSpec)?)?;
    if spec.gpus > config.devices {
        return Err(AttemptError::TooFewDevices { wanted: spec.gpus, have: config.devices });
    }
    let resume = match &a.resume_from {
        Some(ckpt) => Some(download(client, ckpt, config.retry_for).await?),
        None => None,
    };
    let init = match (&a.init_from, spec.init_from) {
        (Some(ckpt), _) => Some(download(client, ckpt, config.retry_for).await?),
        (None, 0) => None,
        (None, parent) => return Err(AttemptError::NoInitCheckpoint(parent)),
    };
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let reporter = tokio::spawn(report_loop(client.clone(), a.job_id, a.attempt, events_rx, stops.clone(), config.retry_for));
    let observer = ChannelObserver { events: events_tx, stops, shutdown };
    let (data_dir, device) = (config.data_dir.clone(), config.device);
    let trainer = tokio::task::spawn_blocking(move || {
        let mut observer = observer;
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let input = StageInput { spec: &spec, data_dir: &data_dir, device, resume: resume.as_deref(), init: init.as_deref() };
            parallel::run_lead(&input, &mut observer, None)
        }));
        drop(observer);
        match run {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(AttemptError::Engine(e)),
            Err(panic) => Err(AttemptError::Panicked(
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or(panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown")
                    .to_string(),
            )),
        }
    });
    let outcome = trainer.await?;
    // The observer is dropped: the reporter sends what is left and ends.
    let _ = reporter.await;
    outcome
}

/// Renews the lease every `every` (a third of the lease); raises the stop
/// flags when the coordinator says the job was cancelled or the lease lost.
async fn heartbeat_loop(mut client: Client, worker_id: String, job: v1::RunningJob, every: Duration, stops: Arc<Stops>) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match client.heartbeat(v1::HeartbeatRequest { worker_id: worker_id.clone(), jobs: vec![job] }).await {
            Ok(r) => {
                let r = r.into_inner();
                if r.lost.contains(&job.job_id) {
                    stops.lost.store(true, Ordering::SeqCst);
                    return;
                }
                if r.cancel.contains(&job.job_id) {
                    stops.cancel.store(true, Ordering::SeqCst);
                }
            }
            // The next tick is the retry: a lease lasts three of them.
            Err(status) => tracing::warn!("heartbeat failed: {}", status.message()),
        }
    }
}
