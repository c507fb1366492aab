//! Connecting to the coordinator, with the caller's identity on every call.

use std::time::Duration;

use anyhow::Context;
use camp_proto::v1::job_service_client::JobServiceClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::args::GlobalOpts;
use crate::exit::UsageError;

pub type JobClient = JobServiceClient<InterceptedService<Channel, CallMetadata>>;

/// Checkpoint chunks and long metric lists may exceed tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Adds `x-camp-user` and `authorization: Bearer <token>` to each request.
#[derive(Debug, Clone)]
pub struct CallMetadata {
    user: Option<AsciiMetadataValue>,
    authorization: Option<AsciiMetadataValue>,
}

impl CallMetadata {
    pub fn new(user: Option<&str>, token: Option<&str>) -> Result<Self, UsageError> {
        let user = user
            .map(|user| {
                user.parse()
                    .map_err(|_| UsageError(format!("invalid --user '{user}': not a header value")))
            })
            .transpose()?;
        let authorization = token
            .filter(|token| !token.is_empty())
            .map(|token| {
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| UsageError("invalid --token: not a header value".into()))
            })
            .transpose()?;
        Ok(CallMetadata {
            user,
            authorization,
        })
    }
}

impl Interceptor for CallMetadata {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(user) = &self.user {
            request.metadata_mut().insert("x-camp-user", user.clone());
        }
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        Ok(request)
    }
}

/// The address with `http://` added when it has no scheme.
fn endpoint_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// Connects now, so that an unreachable coordinator fails here (exit 6).
pub async fn connect(opts: &GlobalOpts) -> anyhow::Result<JobClient> {
    let metadata = CallMetadata::new(opts.user_name().as_deref(), opts.token.as_deref())?;
    let endpoint = Endpoint::from_shared(endpoint_uri(&opts.addr))
        .map_err(|err| UsageError(format!("invalid --addr '{}': {err}", opts.addr)))?
        .connect_timeout(CONNECT_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {}", opts.addr))?;
    Ok(JobServiceClient::with_interceptor(channel, metadata)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_carries_user_and_bearer_token() {
        let mut metadata = CallMetadata::new(Some("ada"), Some("s3cret")).unwrap();
        let request = metadata.call(Request::new(())).unwrap();
        assert_eq!(request.metadata().get("x-camp-user").unwrap(), "ada");
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );

        let mut anonymous = CallMetadata::new(None, Some("")).unwrap();
        let request = anonymous.call(Request::new(())).unwrap();
        assert!(request.metadata().get("x-camp-user").is_none());
        assert!(request.metadata().get("authorization").is_none());
    }

    #[test]
    fn unusable_header_values_are_usage_errors() {
        assert!(CallMetadata::new(Some("a\nb"), None).is_err());
        assert!(CallMetadata::new(None, Some("tok\nen")).is_err());
    }

    #[test]
    fn scheme_is_optional() {
        assert_eq!(endpoint_uri("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(endpoint_uri("https://coord:443"), "https://coord:443");
    }
}
