//! The dashboard: the pages a researcher keeps open in a browser tab, served
//! by the coordinator on its own HTTP listener (`--http-listen`).
//!
//! It is one more client of `JobService`, in-process: every read and the one
//! write (cancel) go through `JobApi` with the caller the `Authenticator`
//! identified, so who may see and change what is the gRPC API's rule, written
//! once (`auth::Access`). The JSON it answers is `camp_proto::wire`'s, the
//! shape `camp --json` prints; its figures are `camp_figures`', the ones
//! `camp plot` draws, rendered to SVG here (no chart library in the browser,
//! and nothing fetched from elsewhere: every asset is embedded in the binary).
//! Live pages follow the store's change feed by server-sent events.
//!
//! - `session`: the token (or, without --require-auth, the name) entered once
//!   and kept in an HttpOnly, SameSite=Strict cookie; writes need a header a
//!   cross-site form cannot send.
//! - `api`: the JSON endpoints; `figures`: the SVG ones; `events`: SSE.
//! - `assets`: the page shell, script and style, and the security headers.

mod api;
mod assets;
mod error;
mod events;
mod figures;
mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::api::jobs::JobApi;
use crate::auth::layer::Authenticator;
use crate::net::{self, ConnectionLimits};
use crate::store::Store;

pub use error::WebError;

/// Live-update streams open at once, at most (each holds a change-feed receiver).
const MAX_EVENT_STREAMS: usize = 512;
/// A request's headers must arrive within this (a client that trickles them is dropped).
const HEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the dashboard's handlers share.
pub struct Dashboard {
    jobs: Arc<JobApi>,
    auth: Arc<Authenticator>,
    store: Arc<dyn Store>,
    /// Cookies are marked Secure (the dashboard is served over TLS).
    secure: bool,
    streams: Arc<Semaphore>,
}

impl Dashboard {
    pub fn new(jobs: Arc<JobApi>, auth: Arc<Authenticator>, store: Arc<dyn Store>, secure: bool) -> Self {
        Dashboard { jobs, auth, store, secure, streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)) }
    }
}

/// Every route of the dashboard.
pub fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .merge(assets::routes())
        .merge(session::routes())
        .merge(api::routes())
        .merge(figures::routes())
        .merge(events::routes())
        .layer(axum::middleware::from_fn(session::require_csrf_header))
        .layer(axum::middleware::map_response(assets::security_headers))
        .with_state(dashboard)
}

/// Serves the dashboard on `listener` (TLS with `tls`), within `limits`, until the task is aborted.
pub fn spawn(
    listener: TcpListener,
    dashboard: Arc<Dashboard>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(serve(listener, dashboard, tls, limits))
}

async fn serve(listener: TcpListener, dashboard: Arc<Dashboard>, tls: Option<Arc<rustls::ServerConfig>>, limits: ConnectionLimits) {
    use futures::StreamExt;
    let router = router(dashboard);
    let tls = tls.map(TlsAcceptor::from);
    let incoming = net::incoming(listener, limits);
    futures::pin_mut!(incoming);
    while let Some(conn) = incoming.next().await {
        let Ok(conn) = conn else { continue };
        let service = TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let served = match tls {
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                    Ok(Ok(stream)) => http.serve_connection(TokioIo::new(stream), service).await,
                    _ => return,
                },
                None => http.serve_connection(TokioIo::new(conn), service).await,
            };
            if let Err(e) = served {
                tracing::debug!("dashboard connection: {e}");
            }
        });
    }
}

/// The dashboard's listener and its TLS, as `serve_with_dashboard` takes them.
pub struct DashboardListener {
    pub listener: TcpListener,
    /// Serve HTTPS with this configuration (the coordinator's certificate).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}
