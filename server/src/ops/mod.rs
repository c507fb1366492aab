//! What an operator sees of a running coordinator, beside the two services:
//!
//! - `health`: gRPC health (`grpc.health.v1`), SERVING only while the store
//!   answers, for load balancers and Kubernetes' `grpc` probes;
//! - `reflection`: gRPC reflection, so that `grpcurl ADDR list` and other
//!   generic clients work without the .proto files;
//! - `metrics`: the Prometheus series (`camp_*`, all named in one place), the
//!   `/metrics` HTTP listener and the gauges refreshed from the store;
//! - `rpc`: the tower layer that times every call, whichever service it is for.
//!
//! Health and reflection reveal nothing private (whether the database
//! answers; the public contract), so `auth::layer` lets them through without
//! credentials.

pub mod health;
pub mod metrics;
pub mod reflection;
pub mod rpc;
