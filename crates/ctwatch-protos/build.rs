//! Generates the CRI and containerd gRPC clients from the vendored `.proto`
//! files under `proto/third_party` with protox, a protobuf compiler written in
//! Rust: building needs no `protoc`.

use std::path::Path;

/// The files compiled, relative to `proto/third_party` (their imports are found there too).
const PROTOS: &[&str] = &[
    "k8s.io/cri-api/pkg/apis/runtime/v1/api.proto",
    "github.com/containerd/containerd/api/types/descriptor.proto",
    "github.com/containerd/containerd/api/services/containers/v1/containers.proto",
    "github.com/containerd/containerd/api/services/images/v1/images.proto",
    "github.com/containerd/containerd/api/services/namespaces/v1/namespace.proto",
    "github.com/containerd/containerd/api/services/version/v1/version.proto",
    "github.com/containerd/containerd/api/services/tasks/v1/tasks.proto",
    "github.com/containerd/containerd/api/services/events/v1/events.proto",
    "github.com/containerd/containerd/api/events/task.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/third_party");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(PROTOS, [&root]).map_err(|e| format!("compiling {}: {e}", root.display()))?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    Ok(())
}
