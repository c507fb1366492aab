//! The training thread's side channel to the coordinator: the observer the
//! engine calls (events into a channel, stop requests out of shared flags) and
//! the task that batches metrics and log lines, sends them in order with
//! sequence numbers (a re-sent batch is ignored by the coordinator), and
//! uploads checkpoints after everything reported before them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use camp_proto::limits::{self, CHECKPOINT_CHUNK_BYTES};
use camp_proto::metric::{EpochMetrics, MetricName, StepMetrics};
use camp_proto::v1;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tonic::Code;

use super::client::{is_transient, retry, Client};
use crate::observer::{CheckpointBlob, CheckpointError, Control, Observer, RunInfo};

/// How often pending metrics and log lines are sent.
const REPORT_EVERY: Duration = Duration::from_millis(500);

/// Why the training thread should stop, set by the heartbeat (cancel, lost
/// lease), by the reporter (a refused report: the lease is gone) and read by
/// the observer once per step.
#[derive(Default)]
pub(crate) struct Stops {
    pub(crate) cancel: AtomicBool,
    pub(crate) lost: AtomicBool,
}

pub(crate) enum Event {
    Started(RunInfo),
    Step(StepMetrics),
    Epoch(EpochMetrics),
    Log(String),
    Checkpoint(CheckpointBlob, oneshot::Sender<Result<(), CheckpointError>>),
}

/// The training thread's view of the daemon.
pub(crate) struct ChannelObserver {
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) stops: Arc<Stops>,
    /// Set by SIGTERM: checkpoint and hand the job back.
    pub(crate) shutdown: Arc<AtomicBool>,
}

impl Observer for ChannelObserver {
    fn started(&mut self, info: &RunInfo) {
        let _ = self.events.send(Event::Started(info.clone()));
    }
    fn step(&mut self, metrics: &StepMetrics) {
        let _ = self.events.send(Event::Step(*metrics));
    }
    fn epoch(&mut self, metrics: &EpochMetrics) {
        let _ = self.events.send(Event::Epoch(metrics.clone()));
    }
    fn log(&mut self, line: String) {
        let _ = self.events.send(Event::Log(line));
    }
    fn checkpoint(&mut self, blob: CheckpointBlob) -> Result<(), CheckpointError> {
        let (tx, rx) = oneshot::channel();
        self.events.send(Event::Checkpoint(blob, tx)).map_err(|_| CheckpointError::ReporterStopped)?;
        rx.blocking_recv().map_err(|_| CheckpointError::ReporterStopped)?
    }
    fn control(&mut self) -> Control {
        if self.stops.lost.load(Ordering::SeqCst) {
            Control::Abandon
        } else if self.stops.cancel.load(Ordering::SeqCst) {
            Control::Cancel
        } else if self.shutdown.load(Ordering::SeqCst) {
            Control::Interrupt
        } else {
            Control::Continue
        }
    }
}

/// Forwards the training thread's events until it drops its observer, then
/// sends what is left and returns.
pub(crate) async fn report_loop(
    client: Client,
    job_id: i64,
    attempt: u32,
    mut events: mpsc::UnboundedReceiver<Event>,
    stops: Arc<Stops>,
    retry_for: Duration,
) {
    let mut reporter = Reporter { client, job_id, attempt, sequence: 0, pending: Vec::new(), epoch: 0, progress: None, stops, retry_for };
    let mut tick = tokio::time::interval(REPORT_EVERY);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Started(info)) => reporter.progress = Some(Progress::new(info)),
                Some(Event::Step(metrics)) => reporter.add_step(&metrics),
                Some(Event::Epoch(metrics)) => reporter.add_epoch(&metrics),
                Some(Event::Log(line)) => {
                    tracing::info!("{line}");
                    reporter.current().log_lines.push(limits::truncate_text(&line, limits::MAX_LOG_LINE_BYTES));
                }
                Some(Event::Checkpoint(blob, done)) => {
                    reporter.flush().await;
                    let _ = done.send(reporter.upload(blob).await);
                }
                None => {
                    reporter.flush().await;
                    return;
                }
            },
            _ = tick.tick() => reporter.flush().await,
        }
    }
}

struct Reporter {
    client: Client,
    job_id: i64,
    attempt: u32,
    sequence: u64,
    pending: Vec<v1::ReportBatch>,
    epoch: u32,
    progress: Option<Progress>,
    stops: Arc<Stops>,
    /// The retry policy's `--retry-for`.
    retry_for: Duration,
}

/// Throughput and ETA for the worker's own log.
struct Progress {
    info: RunInfo,
    started: Instant,
    first_step: i64,
}

impl Progress {
    fn new(info: RunInfo) -> Self {
        let first_step = (info.start_epoch as i64 - 1) * info.steps_per_epoch + info.start_step_in_epoch;
        Progress { info, started: Instant::now(), first_step }
    }
    fn eta(&self, step: i64) -> Option<Duration> {
        let done = step - self.first_step;
        let total = self.info.steps_per_epoch * self.info.epochs as i64;
        (done > 0).then(|| self.started.elapsed().mul_f64((total - step).max(0) as f64 / done as f64))
    }
}

impl Reporter {
    /// The batch being filled: a new one when there is none, or when the last is
    /// full (the coordinator takes at most so many metrics and lines per batch).
    fn current(&mut self) -> &mut v1::ReportBatch {
        let full = self
            .pending
            .last()
            .is_none_or(|b| b.metrics.len() + 16 > limits::MAX_METRICS_PER_BATCH || b.log_lines.len() >= limits::MAX_LOG_LINES_PER_BATCH);
        if full {
            self.pending.push(v1::ReportBatch {
                job_id: self.job_id,
                attempt: self.attempt,
                sequence: self.sequence,
                ..Default::default()
            });
            self.sequence += 1;
        }
        self.pending.last_mut().expect("just pushed")
    }

    fn add_step(&mut self, m: &StepMetrics) {
        let eta = self.progress.as_ref().and_then(|p| p.eta(m.step)).map(|d| format!("{:.0}s", d.as_secs_f64())).unwrap_or_default();
        tracing::info!(epoch = m.epoch, step = m.step, loss = m.loss, top1 = m.top1, images_per_s = m.images_per_s, eta = %eta, "progress");
        self.add_points(m.step, m.epoch, m.points());
    }

    /// An epoch's summary also marks the epoch finished (the job's `epoch`).
    fn add_epoch(&mut self, m: &EpochMetrics) {
        self.epoch = self.epoch.max(m.epoch);
        self.add_points(m.step, m.epoch, m.points());
    }

    fn add_points(&mut self, step: i64, epoch: u32, points: Vec<(MetricName, f64)>) {
        let epoch_done = self.epoch;
        let batch = self.current();
        batch.epoch = epoch_done;
        batch.metrics.extend(points.into_iter().map(|(name, value)| v1::Metric {
            name: name.to_string(),
            value,
            step,
            epoch,
            ..Default::default()
        }));
    }

    /// Sends the pending batches, under the retry policy, again and again with
    /// the same sequence numbers until the coordinator answers: nothing
    /// reported is lost to an outage. A stale attempt drops them.
    async fn flush(&mut self) {
        while !self.pending.is_empty() {
            let batches = self.pending.clone();
            let sent = retry("report", self.retry_for, || {
                let mut c = self.client.clone();
                let batches = batches.clone();
                async move { c.report(futures::stream::iter(batches)).await }
            })
            .await;
            match sent {
                Ok(_) => self.pending.clear(),
                Err(status) if status.code() == Code::FailedPrecondition || status.code() == Code::NotFound => {
                    tracing::warn!("reports refused: {}", status.message());
                    self.stops.lost.store(true, Ordering::SeqCst);
                    self.pending.clear();
                }
                Err(status) if is_transient(status.code()) => tracing::warn!("reports still pending: {}", status.message()),
                Err(status) => {
                    // Sending it again would be refused again: a bug here, not a reason to stop training.
                    tracing::error!("reports refused ({:?}), dropped: {}", status.code(), status.message());
                    self.pending.clear();
                }
            }
        }
    }

    async fn upload(&mut self, blob: CheckpointBlob) -> Result<(), CheckpointError> {
        let header = v1::CheckpointHeader {
            job_id: self.job_id,
            attempt: self.attempt,
            epoch: blob.epoch,
            step: blob.step,
            sha256: hex::encode(Sha256::digest(&blob.bytes)),
            size: blob.bytes.len() as u64,
            top1: blob.top1,
            metadata_json: blob.metadata_json,
        };
        let bytes = Arc::new(blob.bytes);
        let stored = retry("upload checkpoint", self.retry_for, || {
            let mut c = self.client.clone();
            let (header, bytes) = (header.clone(), bytes.clone());
            async move {
                let mut msgs = vec![v1::UploadChunk { header: Some(header), data: Vec::new() }];
                msgs.extend(bytes.chunks(CHECKPOINT_CHUNK_BYTES).map(|c| v1::UploadChunk { header: None, data: c.to_vec() }));
                c.upload_checkpoint(futures::stream::iter(msgs)).await
            }
        })
        .await
        .map_err(|s| {
            if s.code() == Code::FailedPrecondition {
                self.stops.lost.store(true, Ordering::SeqCst);
            }
            CheckpointError::Refused(s.message().to_string())
        })?
        .into_inner();
        tracing::info!(id = stored.id, epoch = stored.epoch, step = stored.step, size = stored.size, "checkpoint stored");
        Ok(())
    }
}
