//! gRPC health checking (`grpc.health.v1.Health`). A coordinator whose
//! database does not answer can serve nothing useful, so the overall status
//! ("") and each of camp's services are SERVING only while the store answers
//! a ping: a task pings it every `every` and flips the status when the answer
//! changes, so probes (Kubernetes' `grpc` probes, load balancers) take a
//! coordinator that lost its database out of rotation without a restart loop.

use std::sync::Arc;
use std::time::Duration;

use camp_proto::v1::{job_service_server, worker_service_server};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::store::Store;

/// The names a health check may ask about: the whole server ("") and each service.
pub const SERVICES: [&str; 3] = ["", job_service_server::SERVICE_NAME, worker_service_server::SERVICE_NAME];

/// The health service, NOT_SERVING until the first ping answers, and the
/// reporter that `watch` drives.
pub async fn service() -> (HealthReporter, HealthServer<impl Health>) {
    let (reporter, server) = tonic_health::server::health_reporter();
    set_all(&reporter, ServingStatus::NotServing).await;
    (reporter, server)
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// Pings the store every `every` (each ping given as long to answer) and
/// reports SERVING or NOT_SERVING accordingly; runs until aborted.
pub async fn watch(store: Arc<dyn Store>, reporter: HealthReporter, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        tick.tick().await;
        let status = match tokio::time::timeout(every.max(Duration::from_secs(1)), store.ping()).await {
            Ok(Ok(())) => ServingStatus::Serving,
            Ok(Err(e)) => {
                if last != Some(ServingStatus::NotServing) {
                    tracing::error!("health: the store does not answer: {e}; NOT_SERVING");
                }
                ServingStatus::NotServing
            }
            Err(_) => {
                if last != Some(ServingStatus::NotServing) {
                    tracing::error!("health: the store did not answer within {:?}; NOT_SERVING", every.max(Duration::from_secs(1)));
                }
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            if last.is_some() && status == ServingStatus::Serving {
                tracing::info!("health: the store answers again; SERVING");
            }
            set_all(&reporter, status).await;
            last = Some(status);
        }
    }
}
