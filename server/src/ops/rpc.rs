//! One tower layer around the whole gRPC server that times every call into
//! `RPC_DURATION`, labelled with its method and gRPC code, so that no handler
//! has to. The time runs from the request's arrival (before authentication)
//! to the start of the reply: a unary call's whole cost, a client-streaming
//! call's whole upload, a server-streaming call's time to open its stream.
//!
//! Methods are labelled only if the server serves them (camp's, health's and
//! reflection's, from their descriptors); any other path counts as
//! `unknown`, so a stranger's made-up paths cannot grow the series without bound.

use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use prost::Message;
use tonic::body::Body;
use tower::{Layer, Service};

use super::metrics::RPC_DURATION;

/// The label of a path the server does not serve.
pub const UNKNOWN_METHOD: &str = "unknown";

/// Every `package.Service/Method` in the encoded descriptor sets.
fn methods(sets: &[&[u8]]) -> HashSet<String> {
    let mut all = HashSet::new();
    for bytes in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*bytes) else { continue };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    all.insert(format!("{package}.{service_name}/{}", method.name.unwrap_or_default()));
                }
            }
        }
    }
    all
}

#[derive(Clone)]
pub struct RpcMetricsLayer {
    known: Arc<HashSet<String>>,
}

impl RpcMetricsLayer {
    /// Knows the methods of camp's services, of health and of reflection.
    pub fn new() -> Self {
        let known = methods(&[
            camp_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]);
        RpcMetricsLayer { known: Arc::new(known) }
    }

    fn label(&self, path: &str) -> String {
        let method = path.trim_start_matches('/');
        if self.known.contains(method) {
            method.to_string()
        } else {
            UNKNOWN_METHOD.to_string()
        }
    }
}

impl Default for RpcMetricsLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

impl<S> Service<http::Request<Body>> for RpcMetrics<S>
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

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let started = Instant::now();
        let method = self.layer.label(req.uri().path());
        let reply = self.inner.call(req);
        Box::pin(async move {
            let result = reply.await;
            let code = match &result {
                Ok(response) => code_of(response),
                Err(_) => "Unknown",
            };
            metrics::histogram!(RPC_DURATION, "method" => method, "code" => code).record(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// The gRPC code of a reply whose status came with its headers (an error
/// answered at once); a reply that started normally counts as OK.
fn code_of(response: &http::Response<Body>) -> &'static str {
    let Some(status) = response.headers().get("grpc-status") else {
        return "Ok";
    };
    let code = status.to_str().ok().and_then(|s| s.parse::<i32>().ok()).map(tonic::Code::from_i32).unwrap_or(tonic::Code::Unknown);
    code_name(code)
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "Ok",
        C::Cancelled => "Cancelled",
        C::Unknown => "Unknown",
        C::InvalidArgument => "InvalidArgument",
        C::DeadlineExceeded => "DeadlineExceeded",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::ResourceExhausted => "ResourceExhausted",
        C::FailedPrecondition => "FailedPrecondition",
        C::Aborted => "Aborted",
        C::OutOfRange => "OutOfRange",
        C::Unimplemented => "Unimplemented",
        C::Internal => "Internal",
        C::Unavailable => "Unavailable",
        C::DataLoss => "DataLoss",
        C::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_get_their_own_label() {
        let layer = RpcMetricsLayer::new();
        assert_eq!(layer.label("/camp.v1.WorkerService/Claim"), "camp.v1.WorkerService/Claim");
        assert_eq!(layer.label("/camp.v1.JobService/SubmitJob"), "camp.v1.JobService/SubmitJob");
        assert_eq!(layer.label("/grpc.health.v1.Health/Check"), "grpc.health.v1.Health/Check");
        assert_eq!(layer.label("/camp.v1.JobService/Nonsense"), UNKNOWN_METHOD);
        assert_eq!(layer.label("/x.Y/Z"), UNKNOWN_METHOD);
    }
}
