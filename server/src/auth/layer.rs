//! Authentication as one tower layer in front of both services (tonic's
//! authentication example, made async because credentials live in the store):
//! every call is identified here, once, and refused here if its credential
//! does not fit the service. Handlers never look at headers.
//!
//! - `JobService`: a user or admin token; without --require-auth, the name in
//!   `x-camp-user` (a user, never an admin). A worker token is PERMISSION_DENIED.
//! - `WorkerService`: a worker token (a user's is PERMISSION_DENIED); with
//!   --tls-client-ca, a verified client certificate; and on every call but
//!   `Register`, the session `Register` returned, which must belong to the same
//!   credential.
//! - gRPC health and reflection (`PUBLIC_SERVICES`): anyone, with or without
//!   a token, so that probes and `grpcurl` work on a secured cluster.

use std::sync::Arc;
use std::task::{Context, Poll};

use camp_proto::v1::{job_service_server, worker_service_server};
use futures::future::BoxFuture;
use http::HeaderMap;
use tonic::body::Body;
use tonic::transport::server::TlsConnectInfo;
use tower::{Layer, Service};

use super::{token_sha256, SessionCache, User, WorkerCaller, ANONYMOUS, SESSION_HEADER, USER_HEADER};
use crate::error::{ApiError, ApiResult};
use crate::net::ConnInfo;
use crate::store::{Credential, Role, Store};

/// Services that need no credential, even with --require-auth: gRPC health
/// and reflection (`ops`).
pub const PUBLIC_SERVICES: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Decides who each call comes from.
pub struct Authenticator {
    store: Arc<dyn Store>,
    require_auth: bool,
    require_client_cert: bool,
    sessions: Arc<SessionCache>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, require_auth: bool, require_client_cert: bool, sessions: Arc<SessionCache>) -> Self {
        Authenticator { store, require_auth, require_client_cert, sessions }
    }

    /// Identifies the call and leaves the identity in its extensions, or says why not.
    async fn identify(&self, req: &mut http::Request<Body>) -> ApiResult<()> {
        let path = req.uri().path();
        let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
            return Ok(());
        };
        let is_register = method == "Register";
        let called = match service {
            job_service_server::SERVICE_NAME => Called::Jobs,
            worker_service_server::SERVICE_NAME => Called::Workers,
            // Open to anyone who reaches the listener, as probes and `grpcurl` need:
            // they tell only whether the database answers, and the public contract.
            s if PUBLIC_SERVICES.contains(&s) => return Ok(()),
            // Not ours: the router answers UNIMPLEMENTED.
            _ => return Ok(()),
        };
        match called {
            Called::Jobs => {
                let user = self.user(req.headers()).await?;
                req.extensions_mut().insert(user);
            }
            Called::Workers => {
                let credential = self.presented(req.headers()).await?;
                if let Some(c) = &credential {
                    if c.role != Role::Worker {
                        return Err(ApiError::PermissionDenied(
                            "WorkerService needs a worker credential (camp-server token --worker), not a user's token".into(),
                        ));
                    }
                }
                if self.require_client_cert && !has_client_certificate(req) {
                    return Err(ApiError::Unauthenticated(
                        "this coordinator requires workers to present a client certificate (mutual TLS)".into(),
                    ));
                }
                let worker = if is_register { None } else { Some(self.session(req.headers(), credential.as_ref()).await?) };
                req.extensions_mut().insert(WorkerCaller { credential_id: credential.map(|c| c.id), worker });
            }
        }
        Ok(())
    }

    /// The user a `JobService` call (or a dashboard request) comes from: a
    /// user's or admin's token; without --require-auth, the name in `x-camp-user`.
    pub async fn user(&self, headers: &HeaderMap) -> ApiResult<User> {
        Ok(match self.presented(headers).await? {
            Some(c) if c.role == Role::Worker => {
                return Err(ApiError::PermissionDenied(
                    "a worker credential may call WorkerService only; use a user's token for JobService".into(),
                ))
            }
            Some(c) => User { name: c.name.clone(), admin: c.role == Role::Admin },
            None => User { name: named_user(headers)?, admin: false },
        })
    }

    /// Whether every caller must present a token.
    pub fn requires_auth(&self) -> bool {
        self.require_auth
    }

    /// The credential of the bearer token in `headers`; None where there is
    /// none and the coordinator does not require one.
    async fn presented(&self, headers: &HeaderMap) -> ApiResult<Option<Credential>> {
        match bearer(headers)? {
            Some(token) => Ok(Some(self.credential(token).await?)),
            None if self.require_auth => Err(ApiError::Unauthenticated(
                "this coordinator requires an API token (authorization: Bearer TOKEN; the CLI reads CAMP_TOKEN)".into(),
            )),
            None => Ok(None),
        }
    }

    /// The live credential a bearer token stands for.
    async fn credential(&self, token: &str) -> ApiResult<Credential> {
        let credential = self
            .store
            .credential_for_token(&token_sha256(token))
            .await?
            .ok_or_else(|| ApiError::Unauthenticated("unknown API token".into()))?;
        if let Some(at) = credential.revoked_at {
            return Err(ApiError::Unauthenticated(format!("this API token was revoked at {}", at.format("%Y-%m-%d %H:%M:%S UTC"))));
        }
        if let Some(at) = credential.expires_at {
            if at <= chrono::Utc::now() {
                return Err(ApiError::Unauthenticated(format!("this API token expired at {}", at.format("%Y-%m-%d %H:%M:%S UTC"))));
            }
        }
        Ok(credential)
    }

    /// The registered worker a session names; it must have registered with this credential.
    async fn session(&self, headers: &HeaderMap, credential: Option<&Credential>) -> ApiResult<uuid::Uuid> {
        let secret = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::trim).unwrap_or("");
        if secret.is_empty() {
            return Err(ApiError::Unauthenticated(format!(
                "WorkerService calls need the session that Register returned, in metadata {SESSION_HEADER}"
            )));
        }
        let sha256 = token_sha256(secret);
        let session = match self.sessions.get(&sha256) {
            Some(session) => session,
            None => {
                let session = self
                    .store
                    .worker_for_session(&sha256)
                    .await?
                    .ok_or_else(|| ApiError::Unauthenticated("unknown worker session: register again".into()))?;
                self.sessions.put(sha256, session);
                session
            }
        };
        if let Some(c) = credential {
            if session.credential_id != Some(c.id) {
                return Err(ApiError::PermissionDenied("this worker session belongs to another credential".into()));
            }
        }
        Ok(session.worker)
    }
}

/// Which of our services a call is for.
enum Called {
    Jobs,
    Workers,
}

/// The token of `authorization: Bearer TOKEN`, if the header is there.
fn bearer(headers: &HeaderMap) -> ApiResult<Option<&str>> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthenticated("authorization: expected 'Bearer TOKEN'".into()))?;
    Ok(Some(token))
}

/// The self-declared user of a coordinator without --require-auth.
fn named_user(headers: &HeaderMap) -> ApiResult<String> {
    let Some(value) = headers.get(USER_HEADER) else {
        return Ok(ANONYMOUS.to_string());
    };
    let name = value.to_str().map(str::trim).unwrap_or("\u{0}");
    if name.is_empty() {
        return Ok(ANONYMOUS.to_string());
    }
    camp_proto::limits::check_principal(name).map_err(|e| ApiError::invalid(USER_HEADER, e))?;
    Ok(name.to_string())
}

fn has_client_certificate(req: &http::Request<Body>) -> bool {
    req.extensions().get::<TlsConnectInfo<ConnInfo>>().and_then(|info| info.peer_certs()).is_some_and(|certs| !certs.is_empty())
}

/// The tower layer that runs `Authenticator` before the services.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// The layer, sharing `auth` with the dashboard (which identifies its requests alike).
    pub fn new(auth: Arc<Authenticator>) -> Self {
        AuthLayer { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, auth: self.auth.clone() }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S> Service<http::Request<Body>> for AuthService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The service that was polled ready serves this call; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            match auth.identify(&mut req).await {
                Ok(()) => inner.call(req).await,
                Err(e) => Ok(tonic::Status::from(e).into_http()),
            }
        })
    }
}
