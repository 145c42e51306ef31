//! Generates the gRPC code from `proto/ctwatch/v1/ctwatch.proto` (needs protoc; see the README).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let proto = proto_dir.join("ctwatch/v1/ctwatch.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("ctwatch_descriptor.bin");
    tonic_prost_build::configure().file_descriptor_set_path(&descriptors).compile_protos(&[proto], &[proto_dir])?;
    Ok(())
}
