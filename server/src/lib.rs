//! camp's coordinator: keeps every job, metric and checkpoint in a `Store`
//! (PostgreSQL) and serves `JobService` to users and `WorkerService` to workers.
//!
//! The trust boundary, layer by layer: `net` bounds the connections,
//! tonic's rustls (`tls`) encrypts them, `auth::layer` identifies every call
//! once, `api` checks every field against `camp_proto::limits` and applies
//! who may do what, and the store fences every worker write.
//!
//! Beside the two services, `ops` serves what an operator watches: gRPC
//! health (SERVING while the store answers) and reflection, the Prometheus
//! series and the latency of every call.

pub mod api;
pub mod auth;
pub mod batcher;
pub mod dispatch;
pub mod error;
pub mod metric_retention;
pub mod net;
pub mod ops;
pub mod queue;
pub mod store;
pub mod tls;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use camp_proto::limits::{MAX_MESSAGE_BYTES, MAX_METADATA_BYTES};
use camp_proto::v1::job_service_server::JobServiceServer;
use camp_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tonic::transport::ServerTlsConfig;

use crate::api::jobs::JobApi;
use crate::api::transfer::{TransferLimits, Transfers};
use crate::api::workers::WorkerApi;
use crate::auth::layer::{AuthLayer, Authenticator};
use crate::auth::{Access, SessionCache};
use crate::dispatch::Dispatcher;
use crate::net::{ConnectionLimits, KEEPALIVE};
use crate::ops::rpc::RpcMetricsLayer;
use crate::store::{ClaimPolicy, MetricRetention, Retention, Store};
use crate::web::{Dashboard, DashboardListener};

#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a claim or heartbeat keeps a job leased to a worker.
    pub lease: Duration,
    /// How often expired leases are looked for.
    pub reap_every: Duration,
    pub retention: Retention,
    /// How many points an ended job keeps of each step-level metric series.
    pub metric_retention: MetricRetention,
    /// Every call needs an API token of the right role.
    pub require_auth: bool,
    pub access: Access,
    pub claims: ClaimPolicy,
    pub transfers: TransferLimits,
    pub connections: ConnectionLimits,
    /// Concurrent calls (HTTP/2 streams) on one connection.
    pub max_streams_per_connection: u32,
    /// TLS for the listener; None serves plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// `WorkerService` calls need a verified client certificate (set with a client CA).
    pub require_client_cert: bool,
    /// How often gRPC health pings the store.
    pub health_every: Duration,
    /// How often the queue's gauges are read from the store; None: never
    /// (no `/metrics` listener, so no one would read them).
    pub gauges_every: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lease: Duration::from_secs(30),
            reap_every: Duration::from_secs(1),
            retention: Retention::default(),
            metric_retention: MetricRetention::default(),
            require_auth: false,
            access: Access::default(),
            claims: ClaimPolicy::default(),
            transfers: TransferLimits::default(),
            connections: ConnectionLimits::default(),
            max_streams_per_connection: 128,
            tls: None,
            require_client_cert: false,
            health_every: Duration::from_secs(2),
            gauges_every: None,
        }
    }
}

/// Why the server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves both services (and health and reflection) on `listener` until
/// `shutdown` resolves; runs the lease reaper, metric retention, the health
/// pings and (if asked) the queue's gauges meanwhile.
pub async fn serve(
    store: Arc<dyn Store>,
    settings: Settings,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with_dashboard(store, settings, listener, None, shutdown).await
}

/// `serve`, and the dashboard (`web`) on its own listener when one is given.
pub async fn serve_with_dashboard(
    store: Arc<dyn Store>,
    settings: Settings,
    listener: TcpListener,
    dashboard: Option<DashboardListener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health_reporter, health) = ops::health::service().await;
    let (reflection_v1, reflection_v1alpha) = ops::reflection::services()?;
    let mut tasks = vec![
        tokio::spawn(queue::run_reaper(store.clone(), settings.reap_every)),
        tokio::spawn(metric_retention::run(store.clone(), settings.metric_retention, settings.reap_every)),
        tokio::spawn(ops::health::watch(store.clone(), health_reporter, settings.health_every)),
    ];
    if let Some(every) = settings.gauges_every {
        tasks.push(tokio::spawn(ops::metrics::refresh_gauges(store.clone(), every, settings.lease)));
    }
    let transfers = Arc::new(Transfers::new(settings.transfers));
    let sessions = Arc::new(SessionCache::default());
    let authenticator = Arc::new(Authenticator::new(store.clone(), settings.require_auth, settings.require_client_cert, sessions.clone()));
    let auth = AuthLayer::new(authenticator.clone());
    let job_api = Arc::new(JobApi::new(store.clone(), settings.access, settings.lease, settings.claims, transfers.clone()));
    if let Some(d) = dashboard {
        let secure = d.tls.is_some();
        let board = Arc::new(Dashboard::new(job_api.clone(), authenticator, store.clone(), secure));
        tasks.push(web::spawn(d.listener, board, d.tls, settings.connections.for_dashboard()));
    }
    let jobs =
        JobServiceServer::from_arc(job_api).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (dispatcher, dispatching) = Dispatcher::start(store.clone(), settings.lease, settings.claims);
    let workers = WorkerServiceServer::new(WorkerApi::new(store, settings.lease, settings.retention, dispatcher, sessions, transfers))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // A quiet but live client (a claim long-poll, a watch with nothing to say)
    // shows it is there by answering these pings: they must come well within
    // the idle timeout, however short it is set.
    let ping = KEEPALIVE.min(settings.connections.idle / 2);
    let mut server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(ping))
        .http2_keepalive_timeout(Some(ping))
        .max_concurrent_streams(Some(settings.max_streams_per_connection))
        .http2_max_header_list_size(MAX_METADATA_BYTES);
    if let Some(tls) = settings.tls {
        server = server.tls_config(tls)?;
    }
    // The timing layer is the outermost, so a call's time includes its authentication.
    let result = server
        .layer(RpcMetricsLayer::new())
        .layer(auth)
        .add_service(jobs)
        .add_service(workers)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(net::incoming(listener, settings.connections), shutdown)
        .await;
    dispatching.abort();
    for task in tasks {
        task.abort();
    }
    Ok(result?)
}
