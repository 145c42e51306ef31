//! ctwatch's enrichers: what each container is (name, image and digest,
//! Kubernetes pod), asked of the runtimes off the event path.
//!
//! - [`engine`]: asks the runtimes, with a concurrency limit per daemon and a deadline.
//! - [`gate`]: holds each `container_create` until its answer or the deadline.
//! - [`containerd_api`]: containerd (every namespace, image store digests).
//! - [`cri_api`]: CRI (containerd's CRI plugin, CRI-O): names and pod data.
//! - [`docker_api`]: Docker, and Podman through its Docker-compatible API (bollard).
//! - [`oci_state`]: daemon-free, from runc's state and the OCI bundle's annotations.
//! - [`exit`]: how a container ended (exit code or signal, OOM, times), from the runtimes.
//! - [`oom`]: OOM kills per container from the cgroup's counters, read while they exist.
//! - [`metadata`]: the fields learned, and how untrusted values are made safe.
//! - [`health`], [`grpc`]: whether a daemon answers; gRPC connections over unix sockets.

#![warn(missing_docs)]

pub mod containerd_api;
pub mod cri_api;
pub mod docker_api;
pub mod engine;
pub mod exit;
pub mod gate;
pub mod grpc;
pub mod health;
pub mod metadata;
pub mod oci_state;
pub mod oom;

use std::path::PathBuf;

use ctwatch::Runtime;
use thiserror::Error;

pub use engine::{EnrichConfig, EnrichResult, Enrichment};
pub use exit::{ExitCache, ExitInfo};
pub use gate::Gate;
pub use metadata::Metadata;

/// Why a runtime could not be asked.
#[derive(Debug, Error)]
pub enum EnrichError {
    /// The daemon does not answer (not running, socket missing, refused).
    #[error("{runtime} at {}: {reason}", socket.display())]
    Unavailable {
        /// Which runtime.
        runtime: Runtime,
        /// Its socket.
        socket: PathBuf,
        /// What went wrong.
        reason: String,
    },
}
