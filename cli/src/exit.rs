//! Exit codes that scripts rely on, and the one-line error message.

use tonic::{Code, Status};

pub const SUCCESS: u8 = 0;
/// Any other error; `watch`: the job failed.
pub const FAILURE: u8 = 1;
/// Bad usage or an invalid argument (clap's own usage errors exit 2 too).
pub const USAGE: u8 = 2;
pub const NOT_FOUND: u8 = 3;
/// Permission denied or not authenticated.
pub const DENIED: u8 = 4;
pub const FAILED_PRECONDITION: u8 = 5;
/// The coordinator cannot be reached.
pub const UNREACHABLE: u8 = 6;
/// `watch`: the job was cancelled.
pub const CANCELLED: u8 = 7;

/// An argument the CLI itself finds wrong, before any call.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The coordinator could not be reached (the message says where and why, on one line).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnreachableError(pub String);

/// A state of things the CLI itself finds wrong for the command (e.g. nothing to plot).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PreconditionError(pub String);

/// The exit code for a gRPC status code.
pub fn code_for_status(code: Code) -> u8 {
    match code {
        Code::Ok => SUCCESS,
        Code::InvalidArgument => USAGE,
        Code::NotFound => NOT_FOUND,
        Code::PermissionDenied | Code::Unauthenticated => DENIED,
        Code::FailedPrecondition => FAILED_PRECONDITION,
        Code::Unavailable => UNREACHABLE,
        _ => FAILURE,
    }
}

/// The exit code for an error: decided by the first gRPC status, transport
/// error or usage error in its chain.
pub fn code_for_error(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(status) = cause.downcast_ref::<Status>() {
            // No answer from the coordinator, only a broken connection (e.g. a
            // plaintext call to a TLS port; tonic makes it UNKNOWN or INTERNAL):
            // unreachable. A status the coordinator sent carries no such cause.
            if broke_in_transport(status) {
                return UNREACHABLE;
            }
            return code_for_status(status.code());
        }
        if cause.is::<tonic::transport::Error>() || cause.is::<UnreachableError>() {
            return UNREACHABLE;
        }
        if cause.is::<UsageError>() {
            return USAGE;
        }
        if cause.is::<PreconditionError>() {
            return FAILED_PRECONDITION;
        }
    }
    FAILURE
}

/// Whether a status stands for a transport failure (its causes hold one).
fn broke_in_transport(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        if cause.is::<tonic::transport::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The error as one line: each cause once, a gRPC status by its message only.
pub fn one_line_message(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = match cause.downcast_ref::<Status>() {
            Some(status) if status.message().is_empty() => status.code().description().to_owned(),
            Some(status) => status.message().to_owned(),
            None => cause.to_string(),
        };
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if !text.is_empty() && !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn grpc_codes_map_to_documented_exit_codes() {
        let cases = [
            (Code::InvalidArgument, 2),
            (Code::NotFound, 3),
            (Code::PermissionDenied, 4),
            (Code::Unauthenticated, 4),
            (Code::FailedPrecondition, 5),
            (Code::Unavailable, 6),
            (Code::Internal, 1),
            (Code::Unknown, 1),
            (Code::AlreadyExists, 1),
        ];
        for (code, exit) in cases {
            assert_eq!(code_for_status(code), exit, "{code:?}");
            let err = anyhow::Error::new(Status::new(code, "x")).context("while asking");
            assert_eq!(code_for_error(&err), exit, "{code:?} behind context");
        }
    }

    #[test]
    fn local_errors_map_to_usage_or_failure() {
        assert_eq!(code_for_error(&UsageError("bad".into()).into()), USAGE);
        assert_eq!(code_for_error(&PreconditionError("nothing to plot".into()).into()), FAILED_PRECONDITION);
        assert_eq!(code_for_error(&anyhow::anyhow!("sha256 mismatch")), FAILURE);
        assert_eq!(code_for_error(&UnreachableError("cannot reach".into()).into()), UNREACHABLE);
    }

    #[tokio::test]
    async fn a_call_broken_in_transport_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let transport = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap_err();
        let status = Status::from_error(Box::new(transport));
        let err = anyhow::Error::new(status.clone());
        assert_eq!(code_for_error(&err), UNREACHABLE, "{err:#}");
        let mut internal = Status::internal("h2 protocol error: http2 error");
        internal.set_source(std::sync::Arc::new(status));
        assert_eq!(code_for_error(&anyhow::Error::new(internal)), UNREACHABLE);
        assert_eq!(code_for_error(&anyhow::Error::new(Status::unknown("worker said no"))), FAILURE);
    }

    #[test]
    fn message_is_one_line_without_status_dump() {
        let err = anyhow::Error::new(Status::not_found("job 42 not found"));
        assert_eq!(one_line_message(&err), "job 42 not found");
        let err = Err::<(), _>(Status::invalid_argument("invalid spec: lr:\nmust be positive")).context("submitting").unwrap_err();
        assert_eq!(one_line_message(&err), "submitting: invalid spec: lr: must be positive");
        let err = anyhow::Error::new(Status::new(Code::PermissionDenied, ""));
        assert_eq!(one_line_message(&err), "The caller does not have permission to execute the specified operation");
    }
}
