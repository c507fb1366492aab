//! camp's coordinator: keeps every job, metric and checkpoint in a `Store`
//! (PostgreSQL) and serves `JobService` to users and `WorkerService` to workers.

pub mod api;
pub mod auth;
pub mod queue;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use camp_proto::v1::job_service_server::JobServiceServer;
use camp_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use futures::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::jobs::JobApi;
use crate::api::workers::WorkerApi;
use crate::auth::Auth;
use crate::store::{Retention, Store};

/// Largest gRPC message accepted: a checkpoint chunk plus headroom.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a claim or heartbeat keeps a job leased to a worker.
    pub lease: Duration,
    /// How often expired leases are looked for.
    pub reap_every: Duration,
    pub retention: Retention,
    pub require_auth: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { lease: Duration::from_secs(30), reap_every: Duration::from_secs(1), retention: Retention::default(), require_auth: false }
    }
}

/// Serves both services on `listener` until `shutdown` resolves; runs the lease reaper meanwhile.
pub async fn serve(
    store: Arc<dyn Store>,
    settings: Settings,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let auth = Auth::new(store.clone(), settings.require_auth);
    let reaper = tokio::spawn(queue::run_reaper(store.clone(), settings.reap_every));
    let jobs = JobServiceServer::new(JobApi::new(store.clone(), auth.clone(), settings.lease))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let workers = WorkerServiceServer::new(WorkerApi::new(store, auth, settings.lease, settings.retention))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Small replies (claims, acks) must not wait for Nagle's algorithm.
    let incoming = TcpListenerStream::new(listener).inspect(|conn| {
        if let Ok(stream) = conn {
            let _ = stream.set_nodelay(true);
        }
    });
    let result = tonic::transport::Server::builder()
        .add_service(jobs)
        .add_service(workers)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    reaper.abort();
    result
}
