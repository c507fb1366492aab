// Compiles camp/v1/*.proto with protox (pure Rust), so no system protoc is needed,
// and keeps the compiled descriptors (`camp.bin`) for gRPC reflection.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/camp/v1/jobs.proto", "proto/camp/v1/worker.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("camp.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        // The result is stored by the coordinator as JSON and printed by `--json`: one shape, the proto's.
        .type_attribute(".camp.v1.JobResult", "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]")
        .compile_fds(fds)?;
    Ok(())
}
