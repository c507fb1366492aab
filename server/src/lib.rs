//! camp's coordinator: keeps every job, metric and checkpoint in a `Store`
//! (PostgreSQL) and serves `JobService` to users and `WorkerService` to workers.
//!
//! The trust boundary, layer by layer: `net` bounds the connections,
//! tonic's rustls (`tls`) encrypts them, `auth::layer` identifies every call
//! once, `api` checks every field against `camp_proto::limits` and applies
//! who may do what, and the store fences every worker write.

pub mod api;
pub mod auth;
pub mod error;
pub mod metric_retention;
pub mod net;
pub mod queue;
pub mod store;
pub mod tls;

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
use crate::auth::Access;
use crate::net::{ConnectionLimits, KEEPALIVE};
use crate::store::{ClaimPolicy, MetricRetention, Retention, Store};

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
        }
    }
}

/// Serves both services on `listener` until `shutdown` resolves; runs the lease reaper and metric retention meanwhile.
pub async fn serve(
    store: Arc<dyn Store>,
    settings: Settings,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let reaper = tokio::spawn(queue::run_reaper(store.clone(), settings.reap_every));
    let thinner = tokio::spawn(metric_retention::run(store.clone(), settings.metric_retention, settings.reap_every));
    let transfers = Arc::new(Transfers::new(settings.transfers));
    let auth = AuthLayer::new(Authenticator::new(store.clone(), settings.require_auth, settings.require_client_cert));
    let jobs = JobServiceServer::new(JobApi::new(store.clone(), settings.access, settings.lease, settings.claims, transfers.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let workers = WorkerServiceServer::new(WorkerApi::new(store, settings.lease, settings.retention, settings.claims, transfers))
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
    let result = server
        .layer(auth)
        .add_service(jobs)
        .add_service(workers)
        .serve_with_incoming_shutdown(net::incoming(listener, settings.connections), shutdown)
        .await;
    reaper.abort();
    thinner.abort();
    result
}
