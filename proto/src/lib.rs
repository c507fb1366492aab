//! camp's contract: the generated gRPC code of `camp.v1`, the job spec with
//! its validation, and what every part computes alike from a spec: the
//! architecture's layer shapes, the quantisation plan, the energy model and the
//! reference's schedule files.

pub mod arch;
pub mod codec;
pub mod endpoint;
pub mod energy;
pub mod energy_table;
pub mod limits;
pub mod metadata;
pub mod metric;
pub mod pipeline;
pub mod quant;
pub mod result;
pub mod results;
pub mod schedule;
pub mod spec;
pub mod spec_error;
pub mod spec_file;
pub mod text;
pub mod valid;
pub mod wire;

/// Generated from `proto/camp/v1/*.proto`.
#[allow(clippy::large_enum_variant)] // prost's oneof enums, as generated
pub mod v1 {
    tonic::include_proto!("camp.v1");
}

/// The compiled descriptors of every `camp.v1` file (a `FileDescriptorSet`,
/// encoded), which the coordinator serves over gRPC reflection so that
/// `grpcurl` and other generic clients can call it without the .proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/camp.bin"));

pub use result::JobResult;
pub use spec::JobSpec;
pub use spec_error::SpecError;
pub use valid::ValidSpec;
