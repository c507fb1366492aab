//! The worker daemon: registers with the coordinator, claims jobs (long-poll),
//! keeps their leases with heartbeats, streams metrics and checkpoints, and
//! reports how each attempt ended. Training runs on its own thread so the
//! daemon keeps talking while it trains; a panic there fails the job, not the
//! worker.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use camp_proto::endpoint::{self, ClientTls};
use camp_proto::limits::{self, CHECKPOINT_CHUNK_BYTES, MAX_MESSAGE_BYTES};
use camp_proto::metadata::{self, CallHeaders};
use camp_proto::metric::{EpochMetrics, MetricName, StepMetrics};
use camp_proto::v1;
use camp_proto::v1::worker_service_client::WorkerServiceClient;
use camp_proto::JobSpec;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::Instrument;

use crate::stage::{self, CheckpointBlob, Control, Observer, RunInfo, StageOutcome};

/// How long one claim long-poll waits before asking again.
const CLAIM_WAIT: Duration = Duration::from_secs(20);
/// How often pending metrics and log lines are sent.
const REPORT_EVERY: Duration = Duration::from_millis(500);
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("coordinator {addr} unreachable: {reason}")]
    Connect { addr: String, reason: String },
    #[error("coordinator refused {call}: {status}")]
    Refused { call: &'static str, status: String },
    #[error(transparent)]
    Endpoint(#[from] endpoint::EndpointError),
    #[error("--token: not usable as a header value")]
    Token,
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub coordinator: String,
    pub data_dir: PathBuf,
    pub device: tch::Device,
    pub name: String,
    pub labels: Vec<(String, String)>,
    /// Sent as `authorization: Bearer` when set (a worker credential).
    pub token: Option<String>,
    /// TLS for an `https://` coordinator: its CA, and this worker's certificate for mutual TLS.
    pub tls: ClientTls,
}

type Client = WorkerServiceClient<InterceptedService<Channel, CallHeaders>>;

fn client(channel: Channel, credentials: CallHeaders) -> Client {
    WorkerServiceClient::with_interceptor(channel, credentials)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn refused(call: &'static str, status: Status) -> DaemonError {
    DaemonError::Refused { call, status: format!("{:?}: {}", status.code(), status.message()) }
}

/// Runs until `shutdown` is set (SIGTERM): finishes the current step, checkpoints,
/// hands the job back to the queue, and returns.
pub async fn run(config: DaemonConfig, shutdown: Arc<AtomicBool>, shutdown_signal: Arc<tokio::sync::Notify>) -> Result<(), DaemonError> {
    let channel = endpoint::endpoint(&config.coordinator, &config.tls)?.connect().await.map_err(|e| {
        let reason = endpoint::describe(&e);
        let hint = endpoint::hint(&config.coordinator, &reason);
        DaemonError::Connect { addr: config.coordinator.clone(), reason: format!("{reason}{hint}") }
    })?;
    let credential = match &config.token {
        Some(token) => CallHeaders::default().bearer(token).map_err(|_| DaemonError::Token)?,
        None => CallHeaders::default(),
    };
    let mut unregistered = client(channel.clone(), credential.clone());

    let datasets = crate::data::available_datasets(&config.data_dir);
    let (device_kind, gpus) = match config.device {
        tch::Device::Cuda(_) => ("cuda", gpu_names()),
        _ => ("cpu", Vec::new()),
    };
    let registered = unregistered
        .register(v1::RegisterRequest {
            name: config.name.clone(),
            hostname: hostname(),
            device_kind: device_kind.into(),
            gpus,
            datasets: datasets.clone(),
            labels: config.labels.iter().cloned().collect(),
        })
        .await
        .map_err(|s| {
            // A transport failure's cause (the HTTP/2 error a TLS listener provokes)
            // is in the status's source, not its message ("transport error").
            let text = match std::error::Error::source(&s).map(endpoint::describe) {
                Some(cause) if cause.starts_with(s.message()) => cause,
                Some(cause) => format!("{}: {cause}", s.message()),
                None => s.message().to_string(),
            };
            let hint = endpoint::hint(&config.coordinator, &text);
            DaemonError::Refused { call: "register", status: format!("{:?}: {text}{hint}", s.code()) }
        })?
        .into_inner();
    tracing::info!(worker = %config.name, id = %registered.worker_id, device = device_kind, ?datasets, "registered");
    let with_session = credential
        .with(metadata::SESSION, &registered.session)
        .map_err(|_| refused("register", Status::internal("the session is not a header value")))?;
    let mut client = client(channel, with_session);

    while !shutdown.load(Ordering::SeqCst) {
        let claim = client.claim(v1::ClaimRequest { worker_id: registered.worker_id.clone(), wait_ms: CLAIM_WAIT.as_millis() as u32 });
        let reply = tokio::select! {
            reply = claim => reply,
            _ = shutdown_signal.notified() => break,
        };
        let assignment = match reply {
            Ok(r) => r.into_inner().assignment,
            Err(status) if matches!(status.code(), Code::NotFound | Code::Unauthenticated | Code::PermissionDenied) => {
                return Err(refused("claim", status))
            }
            Err(status) => {
                tracing::warn!("claim failed: {}; retrying", status.message());
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Some(a) = assignment {
            let span = tracing::info_span!("job", id = a.job_id, attempt = a.attempt);
            run_attempt(&mut client, &config, &registered.worker_id, a, shutdown.clone()).instrument(span).await;
        }
    }
    tracing::info!("shutting down");
    Ok(())
}

/// The GPUs' names as the driver gives them, else their indices.
fn gpu_names() -> Vec<String> {
    let listed = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect::<Vec<_>>())
        .unwrap_or_default();
    if listed.is_empty() {
        (0..crate::device::cuda_device_count()).map(|i| format!("cuda:{i}")).collect()
    } else {
        listed.into_iter().enumerate().map(|(i, name)| format!("cuda:{i} {name}")).collect()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Why the training thread should stop, set by the heartbeat and the signal handler.
#[derive(Default)]
struct Stops {
    cancel: AtomicBool,
    lost: AtomicBool,
}

enum Event {
    Started(RunInfo),
    Step(StepMetrics),
    Epoch(EpochMetrics),
    Log(String),
    Checkpoint(CheckpointBlob, oneshot::Sender<Result<(), String>>),
}

/// The training thread's view of the daemon.
struct ChannelObserver {
    events: mpsc::UnboundedSender<Event>,
    stops: Arc<Stops>,
    shutdown: Arc<AtomicBool>,
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
    fn checkpoint(&mut self, blob: CheckpointBlob) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.events.send(Event::Checkpoint(blob, tx)).map_err(|_| "reporter stopped".to_string())?;
        rx.blocking_recv().map_err(|_| "reporter stopped".to_string())?
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

async fn run_attempt(client: &mut Client, config: &DaemonConfig, worker_id: &str, a: v1::Assignment, shutdown: Arc<AtomicBool>) {
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

    let (outcome, message, result_json) = match outcome {
        Ok(StageOutcome::Completed(summary)) => {
            (v1::Outcome::Succeeded, String::new(), serde_json::to_string(&summary).unwrap_or_default())
        }
        Ok(StageOutcome::Cancelled) => (v1::Outcome::Cancelled, "cancelled at the user's request".into(), String::new()),
        Ok(StageOutcome::Interrupted) => (v1::Outcome::Released, format!("worker {} shut down; re-queued", config.name), String::new()),
        Ok(StageOutcome::Abandoned) => {
            tracing::warn!("lease lost; abandoned without writing");
            return;
        }
        Err(e) => {
            tracing::error!("attempt failed: {e}");
            (v1::Outcome::Failed, limits::truncate_text(&e, limits::MAX_MESSAGE_TEXT_BYTES), String::new())
        }
    };
    let req = v1::FinishRequest { job_id, attempt, outcome: outcome as i32, message, result_json };
    match retry("finish", || {
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
) -> Result<StageOutcome, String> {
    let spec = JobSpec::from_proto(a.spec.as_ref().ok_or("assignment without a spec")?).map_err(|e| e.to_string())?;
    let resume = match &a.resume_from {
        Some(ckpt) => Some(download(client, ckpt).await?),
        None => None,
    };
    let init = match (&a.init_from, spec.init_from) {
        (Some(ckpt), _) => Some(download(client, ckpt).await?),
        (None, 0) => None,
        (None, parent) => return Err(format!("init_from: job {parent} has no checkpoint to start from")),
    };
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let reporter = tokio::spawn(report_loop(client.clone(), a.job_id, a.attempt, events_rx, stops.clone()));
    let observer = ChannelObserver { events: events_tx, stops, shutdown };
    let (data_dir, device) = (config.data_dir.clone(), config.device);
    let trainer = tokio::task::spawn_blocking(move || {
        let mut observer = observer;
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            stage::run_stage(&spec, &data_dir, device, resume.as_deref(), init.as_deref(), &mut observer)
        }));
        drop(observer);
        match run {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(e.to_string()),
            Err(panic) => Err(format!(
                "training panicked: {}",
                panic.downcast_ref::<String>().map(String::as_str).or(panic.downcast_ref::<&str>().copied()).unwrap_or("unknown")
            )),
        }
    });
    let outcome = trainer.await.map_err(|e| format!("training thread: {e}"))?;
    // The observer is dropped: the reporter sends what is left and ends.
    let _ = reporter.await;
    outcome
}

async fn download(client: &mut Client, ckpt: &v1::Checkpoint) -> Result<Vec<u8>, String> {
    let mut stream = client
        .download_checkpoint(v1::DownloadCheckpointRequest { checkpoint_id: ckpt.id, ..Default::default() })
        .await
        .map_err(|s| format!("downloading checkpoint {}: {}", ckpt.id, s.message()))?
        .into_inner();
    let mut bytes = Vec::with_capacity(ckpt.size as usize);
    while let Some(chunk) = stream.message().await.map_err(|s| format!("downloading checkpoint {}: {}", ckpt.id, s.message()))? {
        bytes.extend_from_slice(&chunk.data);
    }
    let digest = hex::encode(Sha256::digest(&bytes));
    if digest != ckpt.sha256 || bytes.len() as u64 != ckpt.size {
        return Err(format!("checkpoint {} arrived corrupted (sha256 {digest}, expected {})", ckpt.id, ckpt.sha256));
    }
    tracing::info!(id = ckpt.id, job = ckpt.job_id, epoch = ckpt.epoch, step = ckpt.step, "checkpoint downloaded");
    Ok(bytes)
}

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
            Err(status) => tracing::warn!("heartbeat failed: {}", status.message()),
        }
    }
}

/// Batches the training thread's metrics and log lines, sends them in order with
/// sequence numbers (a re-sent batch is ignored by the coordinator), and uploads
/// checkpoints after everything reported before them.
async fn report_loop(client: Client, job_id: i64, attempt: u32, mut events: mpsc::UnboundedReceiver<Event>, stops: Arc<Stops>) {
    let mut reporter = Reporter { client, job_id, attempt, sequence: 0, pending: Vec::new(), epoch: 0, progress: None, stops };
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
}

/// Throughput and ETA for the worker's own log.
struct Progress {
    info: RunInfo,
    started: std::time::Instant,
    first_step: i64,
}

impl Progress {
    fn new(info: RunInfo) -> Self {
        let first_step = (info.start_epoch as i64 - 1) * info.steps_per_epoch + info.start_step_in_epoch;
        Progress { info, started: std::time::Instant::now(), first_step }
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

    /// Sends the pending batches; retries a failed send with the same sequence
    /// numbers until the coordinator answers. A stale attempt drops them.
    async fn flush(&mut self) {
        let mut delay = Duration::from_millis(200);
        while !self.pending.is_empty() {
            let batches = self.pending.clone();
            match self.client.report(futures::stream::iter(batches)).await {
                Ok(_) => self.pending.clear(),
                Err(status) if status.code() == Code::FailedPrecondition || status.code() == Code::NotFound => {
                    tracing::warn!("reports refused: {}", status.message());
                    self.stops.lost.store(true, Ordering::SeqCst);
                    self.pending.clear();
                }
                Err(status) if status.code() == Code::InvalidArgument => {
                    // Sending it again would be refused again: a bug here, not a reason to stop training.
                    tracing::error!("reports refused as invalid, dropped: {}", status.message());
                    self.pending.clear();
                }
                Err(status) => {
                    tracing::warn!("report failed: {}; retrying", status.message());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn upload(&mut self, blob: CheckpointBlob) -> Result<(), String> {
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
        let stored = retry("upload checkpoint", || {
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
            format!("checkpoint upload refused: {}", s.message())
        })?
        .into_inner();
        tracing::info!(id = stored.id, epoch = stored.epoch, step = stored.step, size = stored.size, "checkpoint stored");
        Ok(())
    }
}

/// Retries a call while the coordinator is unreachable or busy; answers that
/// are final (refusals) come back at once.
async fn retry<T, F, Fut>(what: &str, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut delay = Duration::from_millis(200);
    for _ in 0..30 {
        match call().await {
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Internal
                ) =>
            {
                tracing::warn!("{what} failed: {}; retrying", s.message());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
    call().await
}
