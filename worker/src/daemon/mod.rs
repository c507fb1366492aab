//! The worker daemon: registers with the coordinator, claims jobs (long-poll),
//! keeps their leases with heartbeats, streams metrics and checkpoints, and
//! reports how each attempt ended. Training runs on its own thread so the
//! daemon keeps talking while it trains; a panic there fails the job, not the
//! worker.
//!
//! - `client`: the gRPC client, its one retry policy, checkpoint downloads;
//! - `attempt`: one claimed job from start to `Finish` (heartbeat, training thread);
//! - `reporter`: the engine's observer and the task that reports for it;
//! - here: registration and the claim loop.

mod attempt;
mod client;
mod reporter;

pub use attempt::AttemptError;
pub use client::DownloadError;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use camp_proto::endpoint::{self, ClientTls};
use camp_proto::metadata::{self, CallHeaders};
use camp_proto::v1;
use tonic::{Code, Status};
use tracing::Instrument;

use attempt::run_attempt;
use client::{client, is_transient, Backoff};

/// How long one claim long-poll waits before asking again.
const CLAIM_WAIT: Duration = Duration::from_secs(20);

/// Why the daemon stops (it cannot go on without the coordinator's consent).
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

    let mut backoff = Backoff::new();
    while !shutdown.load(Ordering::SeqCst) {
        let claim = client.claim(v1::ClaimRequest { worker_id: registered.worker_id.clone(), wait_ms: CLAIM_WAIT.as_millis() as u32 });
        let reply = tokio::select! {
            reply = claim => reply,
            _ = shutdown_signal.notified() => break,
        };
        let assignment = match reply {
            Ok(r) => {
                backoff.reset();
                r.into_inner().assignment
            }
            Err(status) if matches!(status.code(), Code::NotFound | Code::Unauthenticated | Code::PermissionDenied) => {
                return Err(refused("claim", status))
            }
            Err(status) => {
                let kind = if is_transient(status.code()) { "failed" } else { "refused" };
                tracing::warn!("claim {kind}: {}; retrying", status.message());
                backoff.wait().await;
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
