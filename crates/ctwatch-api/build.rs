//! Generates the gRPC code from `proto/ctwatch/v1/ctwatch.proto` with protox, a
//! protobuf compiler written in Rust (no `protoc` needed), and writes the
//! file descriptor set (`ctwatch_descriptor.bin` in `OUT_DIR`) that gRPC server
//! reflection serves.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let proto = proto_dir.join("ctwatch/v1/ctwatch.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([&proto], [&proto_dir]).map_err(|e| format!("compiling {}: {e}", proto.display()))?;
    let descriptor = PathBuf::from(std::env::var("OUT_DIR")?).join("ctwatch_descriptor.bin");
    std::fs::write(&descriptor, prost::Message::encode_to_vec(&fds))?;
    // Code from the set just written: protoc is not run.
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        .skip_protoc_run()
        .compile_protos(&[&proto], &[&proto_dir])?;
    Ok(())
}
