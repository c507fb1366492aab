//! The worker daemon: registers with the coordinator, claims jobs (long-poll),
//! keeps their leases with heartbeats, streams metrics and checkpoints, and
//! reports how each attempt ended. Training runs on its own thread so the
//! daemon keeps talking while it trains; a panic there fails the job, not the
//! worker.
//!
//! Its life fits the schedulers labs run it under (Slurm, Kubernetes): it
//! waits for a coordinator that is not up yet, keeps its identity across
//! restarts, stops when idle (`--exit-when-idle`) or after so many attempts
//! (`--max-jobs`), and on a shutdown signal finishes the step, checkpoints
//! and hands its job back.
//!
//! - `client`: the gRPC client, its one retry policy, checkpoint downloads;
//! - `attempt`: one claimed job from start to `Finish` (heartbeat, training thread);
//! - `reporter`: the engine's observer and the task that reports for it;
//! - `identity`: the id kept across restarts, in a locked file;
//! - here: registration (waiting for the coordinator) and the claim loop.

mod attempt;
mod client;
mod identity;
mod reporter;

pub use attempt::AttemptError;
pub use client::DownloadError;
pub use identity::IdentityError;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use camp_proto::endpoint::{self, ClientTls};
use camp_proto::metadata::{self, CallHeaders};
use camp_proto::v1;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::Instrument;

use attempt::run_attempt;
use client::{client, is_transient, Backoff};
use identity::Identity;

/// How long one claim long-poll waits before asking again.
const CLAIM_WAIT: Duration = Duration::from_secs(20);
/// A failure at start that points at this worker's own configuration (TLS, the
/// address's scheme) stops it after this many in a row; one alone may be a
/// coordinator restarting mid-handshake.
const MISCONFIGURED_STRIKES: u32 = 3;

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
    /// Devices a job may use, from `device` on (`spec.gpus` ranks need as many).
    pub devices: u32,
    pub name: String,
    pub labels: Vec<(String, String)>,
    /// Sent as `authorization: Bearer` when set (a worker credential).
    pub token: Option<String>,
    /// TLS for an `https://` coordinator: its CA, and this worker's certificate for mutual TLS.
    pub tls: ClientTls,
    /// Where the worker's id is kept across restarts (None: a new registration every start).
    pub state_dir: Option<PathBuf>,
    /// Exit (successfully) after this long holding no job and claiming none.
    pub exit_when_idle: Option<Duration>,
    /// Exit (successfully) after this many attempts have finished.
    pub max_jobs: Option<u32>,
    /// How long one call is retried through transient failures before its
    /// caller hears of it (a download then hands the job back).
    pub retry_for: Duration,
}

fn refused(call: &'static str, status: Status) -> DaemonError {
    DaemonError::Refused { call, status: format!("{:?}: {}", status.code(), status.message()) }
}

/// What the shutdown signal handler shares with the daemon.
#[derive(Clone)]
pub struct Shutdown {
    /// Set by SIGTERM, SIGINT, SIGUSR1 or SIGHUP.
    pub flag: Arc<AtomicBool>,
    /// Woken when the flag is set, to cut waits short.
    pub signal: Arc<tokio::sync::Notify>,
}

impl Shutdown {
    fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// The worker's idle clock (`--exit-when-idle`): runs while it holds no job.
struct Idle {
    limit: Option<Duration>,
    since: Instant,
}

impl Idle {
    /// How long the worker may still wait for work; None: for ever.
    fn left(&self) -> Option<Duration> {
        self.limit.map(|limit| limit.saturating_sub(self.since.elapsed()))
    }

    /// Sleeps until the idle limit is reached (for ever without one).
    async fn reached(&self) {
        match self.left() {
            Some(left) => tokio::time::sleep(left).await,
            None => std::future::pending().await,
        }
    }
}

/// A registration as the claim loop uses it.
struct Registered {
    channel: Channel,
    worker_id: String,
    session: String,
}

/// Runs until a shutdown signal (finishes the current step, checkpoints, hands
/// the job back, and returns), until idle for `exit_when_idle`, or until
/// `max_jobs` attempts have finished. Waits for a coordinator that cannot be
/// reached yet; returns an error only when the coordinator refuses it.
pub async fn run(config: DaemonConfig, shutdown: Shutdown) -> Result<(), DaemonError> {
    let credential = match &config.token {
        Some(token) => CallHeaders::default().bearer(token).map_err(|_| DaemonError::Token)?,
        None => CallHeaders::default(),
    };
    let mut identity = config.state_dir.as_deref().and_then(|dir| match Identity::take(dir, &config.name) {
        Ok(identity) => {
            tracing::info!(file = %identity.path().display(), id = identity.id().unwrap_or("(none yet)"), "worker id");
            Some(identity)
        }
        Err(e) => {
            tracing::warn!("no id kept across restarts (each start registers a new worker): {e}");
            None
        }
    });
    let mut idle = Idle { limit: config.exit_when_idle, since: Instant::now() };
    let previous = identity.as_ref().and_then(|i| i.id().map(str::to_string));
    let Some(registered) = register(&config, &credential, previous.as_deref(), &shutdown, &idle).await? else {
        tracing::info!("shutting down before registering");
        return Ok(());
    };
    if let Some(identity) = &mut identity {
        if let Err(e) = identity.keep(&registered.worker_id) {
            tracing::warn!("the worker id could not be kept for the next start: {e}");
        }
    }
    let with_session = credential
        .with(metadata::SESSION, &registered.session)
        .map_err(|_| refused("register", Status::internal("the session is not a header value")))?;
    let mut client = client(registered.channel, with_session);

    let mut backoff = Backoff::new();
    let mut finished = 0u32;
    loop {
        if shutdown.requested() {
            tracing::info!("shutting down");
            break;
        }
        if config.max_jobs.is_some_and(|max| finished >= max) {
            tracing::info!("{finished} attempts finished (--max-jobs): exiting");
            break;
        }
        let wait = match idle.left() {
            Some(left) if left.is_zero() => {
                tracing::info!("idle for {:?} (--exit-when-idle): exiting", idle.limit.unwrap_or_default());
                break;
            }
            Some(left) => left.min(CLAIM_WAIT),
            None => CLAIM_WAIT,
        };
        let claim = client.claim(v1::ClaimRequest { worker_id: registered.worker_id.clone(), wait_ms: wait.as_millis().max(1) as u32 });
        let reply = tokio::select! {
            reply = claim => reply,
            _ = shutdown.signal.notified() => continue,
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
                tracing::warn!("claim {kind}: {}; retrying in {:?}", status.message(), backoff.delay());
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = shutdown.signal.notified() => {}
                    _ = idle.reached() => {}
                }
                continue;
            }
        };
        if let Some(a) = assignment {
            let span = tracing::info_span!("job", id = a.job_id, attempt = a.attempt);
            run_attempt(&mut client, &config, &registered.worker_id, a, shutdown.flag.clone()).instrument(span).await;
            finished += 1;
            idle.since = Instant::now();
        }
    }
    Ok(())
}

/// Why one try at registering did not succeed.
enum NotYet {
    /// Worth trying again: the coordinator is not up, restarting or busy.
    Unreachable(String),
    /// Points at this worker's configuration (TLS, scheme): tried a few times, then final.
    Misconfigured(DaemonError),
    /// The coordinator's final word (a refused credential, a bad request).
    Refused(DaemonError),
}

/// Connects and registers, trying again with backoff for as long as the
/// coordinator cannot be reached (a worker may start before its coordinator,
/// or outlive its restart). None: a shutdown signal or the idle limit came first.
async fn register(
    config: &DaemonConfig,
    credential: &CallHeaders,
    previous: Option<&str>,
    shutdown: &Shutdown,
    idle: &Idle,
) -> Result<Option<Registered>, DaemonError> {
    let mut backoff = Backoff::new();
    let mut strikes = 0;
    loop {
        if shutdown.requested() {
            return Ok(None);
        }
        let reason = match try_register(config, credential, previous).await {
            Ok(registered) => return Ok(Some(registered)),
            Err(NotYet::Refused(e)) => return Err(e),
            Err(NotYet::Misconfigured(e)) => {
                strikes += 1;
                if strikes >= MISCONFIGURED_STRIKES {
                    return Err(e);
                }
                e.to_string()
            }
            Err(NotYet::Unreachable(reason)) => {
                strikes = 0;
                reason
            }
        };
        tracing::warn!("{reason}; trying again in {:?}", backoff.delay());
        tokio::select! {
            _ = backoff.wait() => {}
            _ = shutdown.signal.notified() => {}
            _ = idle.reached() => {
                tracing::info!("idle for {:?} (--exit-when-idle) without reaching the coordinator: exiting", idle.limit.unwrap_or_default());
                return Ok(None);
            }
        }
    }
}

async fn try_register(config: &DaemonConfig, credential: &CallHeaders, previous: Option<&str>) -> Result<Registered, NotYet> {
    let addr = &config.coordinator;
    let channel = endpoint::endpoint(addr, &config.tls).map_err(|e| NotYet::Refused(e.into()))?.connect().await.map_err(|e| {
        let reason = endpoint::describe(&e);
        // No TCP connection (refused, no route, no such host): nothing is listening
        // yet, whatever the scheme; the hint is for a connection that was made.
        let hint = if not_connected(&reason) { "" } else { endpoint::hint(addr, &reason) };
        let error = DaemonError::Connect { addr: addr.clone(), reason: format!("{reason}{hint}") };
        if hint.is_empty() {
            NotYet::Unreachable(error.to_string())
        } else {
            NotYet::Misconfigured(error)
        }
    })?;
    let datasets = crate::data::available_datasets(&config.data_dir);
    let (device_kind, gpus) = match config.device {
        tch::Device::Cuda(_) => ("cuda", gpu_names()),
        _ => ("cpu", Vec::new()),
    };
    let request = v1::RegisterRequest {
        name: config.name.clone(),
        hostname: hostname(),
        device_kind: device_kind.into(),
        gpus,
        devices: config.devices,
        datasets: datasets.clone(),
        labels: config.labels.iter().cloned().collect(),
        worker_id: previous.unwrap_or_default().to_string(),
    };
    let registered = client(channel.clone(), credential.clone()).register(request).await.map_err(|s| {
        // A transport failure's cause (the HTTP/2 error a TLS listener provokes)
        // is in the status's source, not its message ("transport error").
        let text = match std::error::Error::source(&s).map(endpoint::describe) {
            Some(cause) if cause.starts_with(s.message()) => cause,
            Some(cause) => format!("{}: {cause}", s.message()),
            None => s.message().to_string(),
        };
        let mut hint = endpoint::hint(addr, &text);
        if hint.is_empty() && config.tls.cert.is_some() && closed_after_handshake(&text) {
            // TLS 1.3: the client's handshake is over before the server checks its
            // certificate, so a refused certificate often shows as a connection cut
            // under the first call rather than as the server's alert.
            hint = " (the coordinator closed the connection after the TLS handshake: is --tls-cert signed by the coordinator's --tls-client-ca?)";
        }
        let error = DaemonError::Refused { call: "register", status: format!("{:?}: {text}{hint}", s.code()) };
        match s.code() {
            code if !is_transient(code) => NotYet::Refused(error),
            _ if !hint.is_empty() => NotYet::Misconfigured(error),
            code => NotYet::Unreachable(format!("coordinator {addr} unreachable: register: {code:?}: {text}")),
        }
    })?;
    let r = registered.into_inner();
    let kept = previous == Some(r.worker_id.as_str());
    tracing::info!(worker = %config.name, id = %r.worker_id, kept, device = device_kind, ?datasets, "registered");
    Ok(Registered { channel, worker_id: r.worker_id, session: r.session })
}

/// Whether a connection failure happened before any byte was exchanged.
fn not_connected(reason: &str) -> bool {
    ["tcp connect error", "dns error", "Connection refused", "No route to host", "Network is unreachable", "timed out"]
        .iter()
        .any(|e| reason.contains(e))
}

/// Whether a call failed because the peer closed a connection that had been made.
fn closed_after_handshake(reason: &str) -> bool {
    ["broken pipe", "connection closed", "connection reset"].iter().any(|e| reason.contains(e))
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
