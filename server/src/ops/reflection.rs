//! gRPC server reflection, both versions clients speak (`v1`, and `v1alpha`
//! for older `grpcurl`s), describing camp's services from the descriptors the
//! proto crate compiled, and the health service's own.

use tonic_reflection::server::{v1, v1alpha, Builder, Error};

/// The `v1` and `v1alpha` reflection services.
pub fn services(
) -> Result<(v1::ServerReflectionServer<impl v1::ServerReflection>, v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>), Error>
{
    let builder = || {
        Builder::configure()
            .register_encoded_file_descriptor_set(camp_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
