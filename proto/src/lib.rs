//! camp's contract: the generated gRPC code of `camp.v1` and the job spec,
//! whose validation the coordinator, the worker and the CLI share.

pub mod spec;

/// Generated from `proto/camp/v1/*.proto`.
pub mod v1 {
    tonic::include_proto!("camp.v1");
}

pub use spec::{JobSpec, SpecError};
