//! The coordinator's one error type above the store, and its one mapping to
//! gRPC status codes. Database and internal details stay in our logs: clients
//! see "internal error".

use tonic::Status;

use crate::store::StoreError;

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is wrong: INVALID_ARGUMENT, message `field: reason`.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// No credential, or one that is unknown, expired or revoked.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known caller acting beyond its role or on what is not theirs.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0} not found")]
    NotFound(String),
    /// Well-formed, but the state of things does not allow it (a stale attempt, a finished job).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A bound on concurrent work was reached; retry later.
    #[error("{0}")]
    Busy(String),
    /// A stream that stopped moving.
    #[error("{0}")]
    Idle(String),
    #[error(transparent)]
    Store(StoreError),
    /// A status that arrived from the transport (a stream that broke, a message that did not decode).
    #[error("{}", .0.message())]
    Status(Status),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        ApiError::Invalid { field: field.into(), reason: reason.to_string() }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(what),
            StoreError::Stale(msg) => ApiError::FailedPrecondition(format!("stale attempt: {msg}")),
            StoreError::PermissionDenied(msg) => ApiError::PermissionDenied(msg),
            StoreError::FailedPrecondition(msg) => ApiError::FailedPrecondition(msg),
            StoreError::Invalid { field, reason } => ApiError::Invalid { field, reason },
            other => ApiError::Store(other),
        }
    }
}

impl From<camp_proto::SpecError> for ApiError {
    fn from(e: camp_proto::SpecError) -> Self {
        ApiError::Invalid { field: e.field.to_string(), reason: e.reason }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            ApiError::Unauthenticated(msg) => Status::unauthenticated(msg),
            ApiError::PermissionDenied(msg) => Status::permission_denied(msg),
            ApiError::NotFound(_) => Status::not_found(e.to_string()),
            ApiError::FailedPrecondition(msg) => Status::failed_precondition(msg),
            ApiError::Busy(msg) => Status::resource_exhausted(msg),
            ApiError::Idle(msg) => Status::deadline_exceeded(msg),
            ApiError::Status(status) => status,
            ApiError::Store(e) => {
                tracing::error!("store error: {e}");
                Status::internal("internal error")
            }
        }
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        ApiError::Status(status)
    }
}

/// Handlers use `?` on store results directly: through `ApiError`, the one mapping.
impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        ApiError::from(e).into()
    }
}
