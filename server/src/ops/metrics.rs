//! The coordinator's Prometheus series: every name is declared here, once,
//! with its help text (`describe`); the code that counts uses these constants
//! through the `metrics` facade, which costs nothing until `install` sets the
//! recorder (only with `--metrics-listen`). `serve` answers `GET /metrics`
//! on its own HTTP listener; `refresh_gauges` keeps the queue's gauges from
//! one store query every few seconds.
//!
//! Worker-side figures (images/s, step time) are not series here: workers
//! report them as the job's metrics, read with `camp metrics` / `camp watch`.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::store::{QueueDepth, Store};

/// Queued jobs by the device they ask for (`device`: cpu, cuda, any) and data set (`dataset`).
pub const QUEUE_JOBS: &str = "camp_queue_jobs";
/// Jobs running now.
pub const RUNNING_JOBS: &str = "camp_running_jobs";
/// Workers heard from within a lease.
pub const LIVE_WORKERS: &str = "camp_live_workers";
/// Jobs handed to workers by `Claim`.
pub const CLAIMS: &str = "camp_claims_total";
/// `Claim` calls that ended with nothing to run (long-poll timeouts).
pub const EMPTY_CLAIMS: &str = "camp_claims_empty_total";
/// Store queries the claim dispatcher ran (each claims for up to a batch of waiting workers).
pub const CLAIM_QUERIES: &str = "camp_claim_queries_total";
/// Heartbeat batches written (each renews the leases of every heartbeat that came within its window).
pub const HEARTBEAT_BATCHES: &str = "camp_heartbeat_batches_total";
/// Finish batches written (each ends every attempt whose `Finish` came while the previous batch was written).
pub const FINISH_BATCHES: &str = "camp_finish_batches_total";
/// Attempts ended by a worker's `Finish`, by `outcome` (succeeded, failed, cancelled, released).
pub const FINISHED: &str = "camp_attempts_finished_total";
/// Leases that expired (the reaper found the worker silent), whatever became of the job.
pub const LEASE_EXPIRIES: &str = "camp_lease_expiries_total";
/// Jobs the reaper put back in the queue after their lease expired.
pub const REQUEUES: &str = "camp_requeues_total";
/// Metric report batches stored (re-sent duplicates are not counted).
pub const REPORT_BATCHES: &str = "camp_report_batches_total";
/// Re-sent report batches recognised and dropped.
pub const REPORT_DUPLICATES: &str = "camp_report_duplicate_batches_total";
/// Metric points stored from report batches.
pub const REPORT_POINTS: &str = "camp_report_points_total";
/// Checkpoint bytes received from workers.
pub const CHECKPOINT_UPLOADED: &str = "camp_checkpoint_uploaded_bytes_total";
/// Checkpoint bytes sent to workers and users.
pub const CHECKPOINT_DOWNLOADED: &str = "camp_checkpoint_downloaded_bytes_total";
/// Time from a call's arrival to its reply's start, by `method` (`package.Service/Method`) and gRPC `code`.
pub const RPC_DURATION: &str = "camp_rpc_duration_seconds";

/// Latency buckets of `RPC_DURATION`, in seconds: from a millisecond to a full long-poll.
const RPC_BUCKETS: [f64; 15] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// How often histograms are compacted (the exporter leaves it to its user).
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the process's Prometheus recorder (once per process) and describes every series.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new().set_buckets_for_metric(Matcher::Full(RPC_DURATION.into()), &RPC_BUCKETS)?.install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_gauge!(QUEUE_JOBS, "Queued jobs by requested device and data set");
    describe_gauge!(RUNNING_JOBS, "Jobs running now");
    describe_gauge!(LIVE_WORKERS, "Workers heard from within a lease");
    describe_counter!(CLAIMS, "Jobs handed to workers by Claim");
    describe_counter!(EMPTY_CLAIMS, "Claim calls that ended with nothing to run");
    describe_counter!(CLAIM_QUERIES, "Store queries the claim dispatcher ran, each for up to a batch of waiting workers");
    describe_counter!(HEARTBEAT_BATCHES, "Heartbeat batches written, each for every heartbeat within its window");
    describe_counter!(FINISH_BATCHES, "Finish batches written, each for every Finish that came while the previous one was written");
    describe_counter!(FINISHED, "Attempts ended by the worker's Finish, by outcome");
    describe_counter!(LEASE_EXPIRIES, "Leases that expired because their worker went silent");
    describe_counter!(REQUEUES, "Jobs put back in the queue after their lease expired");
    describe_counter!(REPORT_BATCHES, "Metric report batches stored");
    describe_counter!(REPORT_DUPLICATES, "Re-sent report batches dropped");
    describe_counter!(REPORT_POINTS, "Metric points stored");
    describe_counter!(CHECKPOINT_UPLOADED, Unit::Bytes, "Checkpoint bytes received from workers");
    describe_counter!(CHECKPOINT_DOWNLOADED, Unit::Bytes, "Checkpoint bytes sent");
    describe_histogram!(RPC_DURATION, Unit::Seconds, "Time from a gRPC call's arrival to the start of its reply");
}

/// Answers `GET /metrics` on `listener` (HTTP/1.1) until aborted, and keeps the histograms compact.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let upkeep = handle.clone();
    let _upkeep = AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP).await;
            upkeep.run_upkeep();
        }
    }));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("metrics listener: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| scrape(req, handle.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = tokio::time::timeout(Duration::from_secs(60), conn).await.unwrap_or(Ok(())) {
                tracing::debug!(%peer, "metrics connection: {e}");
            }
        });
    }
}

async fn scrape(req: Request<hyper::body::Incoming>, handle: PrometheusHandle) -> Result<Response<String>, Infallible> {
    let response = if req.uri().path() != "/metrics" {
        Response::builder().status(StatusCode::NOT_FOUND).body("only /metrics is here\n".to_string())
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        Response::builder().status(StatusCode::METHOD_NOT_ALLOWED).body("GET /metrics\n".to_string())
    } else {
        Response::builder().header(hyper::header::CONTENT_TYPE, "text/plain; version=0.0.4").body(handle.render())
    };
    Ok(response.expect("a response of constant parts"))
}

/// Binds `--metrics-listen`'s address.
pub async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Sets the queue's gauges from `store.queue_depth` every `every` until aborted
/// (a worker counts as live if heard from within `live_within`). A device and
/// data set whose queue emptied is set to 0 rather than left at its last count.
pub async fn refresh_gauges(store: Arc<dyn Store>, every: Duration, live_within: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        tick.tick().await;
        match store.queue_depth(live_within).await {
            Ok(depth) => shown = set_gauges(&depth, shown),
            Err(e) => tracing::warn!("metrics: reading the queue's depth: {e}"),
        }
    }
}

/// Sets the gauges from `depth`; returns the (device, data set) pairs now shown.
fn set_gauges(depth: &QueueDepth, before: BTreeSet<(String, String)>) -> BTreeSet<(String, String)> {
    let mut now = BTreeSet::new();
    for q in &depth.queued {
        gauge!(QUEUE_JOBS, "device" => q.device.clone(), "dataset" => q.dataset.clone()).set(q.jobs as f64);
        now.insert((q.device.clone(), q.dataset.clone()));
    }
    for (device, dataset) in before.difference(&now) {
        gauge!(QUEUE_JOBS, "device" => device.clone(), "dataset" => dataset.clone()).set(0.0);
    }
    gauge!(RUNNING_JOBS).set(depth.running as f64);
    gauge!(LIVE_WORKERS).set(depth.live_workers as f64);
    now.union(&before).cloned().collect()
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
