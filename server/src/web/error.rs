//! The dashboard's one error type and its one mapping to HTTP: a status code
//! and `{"error": "..."}`. What comes from `JobApi` is a gRPC status whose
//! message is already fit for clients (no database text); its code picks the
//! HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tonic::Code;

use crate::error::ApiError;

pub type WebResult<T> = Result<T, WebError>;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// What `JobApi` or the authenticator refused or failed at.
    #[error("{}", .0.message())]
    Api(tonic::Status),
    /// A query parameter or body field is wrong: `field: reason`.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A write without the header only the dashboard's own script sends.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A bound on open streams was reached.
    #[error("{0}")]
    Busy(&'static str),
    /// Nothing to draw (no finished point, no such series).
    #[error("{0}")]
    NothingToDraw(String),
    #[error("drawing a figure: {0}")]
    Figure(camp_figures::FigureError),
}

impl WebError {
    pub fn invalid(field: &'static str, reason: impl std::fmt::Display) -> Self {
        WebError::Invalid { field, reason: reason.to_string() }
    }
}

impl From<tonic::Status> for WebError {
    fn from(status: tonic::Status) -> Self {
        WebError::Api(status)
    }
}

impl From<ApiError> for WebError {
    fn from(e: ApiError) -> Self {
        WebError::Api(e.into())
    }
}

impl From<camp_figures::FigureError> for WebError {
    fn from(e: camp_figures::FigureError) -> Self {
        match e {
            camp_figures::FigureError::Empty => WebError::NothingToDraw("nothing to plot yet".into()),
            other => WebError::Figure(other),
        }
    }
}

fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = match &self {
            WebError::Api(s) => http_status(s.code()),
            WebError::Invalid { .. } => StatusCode::BAD_REQUEST,
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            WebError::NothingToDraw(_) => StatusCode::NOT_FOUND,
            WebError::Figure(e) => {
                tracing::error!("dashboard figure: {e}");
                return (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({ "error": "internal error" }))).into_response();
            }
        };
        (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}
