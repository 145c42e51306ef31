//! A client of `ctwatch serve` over its unix socket.

use std::path::{Path, PathBuf};

use thiserror::Error;
use tonic::transport::Channel;

pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::pb::containers_client::ContainersClient;

/// Why the agent could not be reached.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The socket exists but this user may not connect to it.
    #[error("permission denied on {path}: run as root or join group {group}")]
    PermissionDenied {
        /// The socket.
        path: PathBuf,
        /// The group that owns the socket (the one `ctwatch serve --socket-group` gave access to).
        group: String,
    },
    /// Nothing listens on the socket (no agent, or it stopped).
    #[error("no ctwatch agent answers on {path}: {reason}")]
    NoAgent {
        /// The socket.
        path: PathBuf,
        /// What the connection attempt said.
        reason: String,
    },
}

/// Connects to the agent listening on `socket`.
pub async fn connect(socket: &Path) -> Result<ContainersClient<Channel>, ConnectError> {
    Ok(ContainersClient::new(channel(socket).await?).max_decoding_message_size(64 << 20))
}

/// A channel to whatever gRPC server listens on `socket` (the containers
/// service, health, reflection).
pub async fn channel(socket: &Path) -> Result<Channel, ConnectError> {
    ctwatch_protos::connect(socket).await.map_err(|e| {
        // tonic's transport error hides the io error; say what the socket said.
        let io = find_io_error(&e);
        if io.map(std::io::Error::kind) == Some(std::io::ErrorKind::PermissionDenied) {
            return ConnectError::PermissionDenied { path: socket.to_path_buf(), group: socket_group(socket) };
        }
        let reason = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
        ConnectError::NoAgent { path: socket.to_path_buf(), reason }
    })
}

/// What the standard health service (`grpc.health.v1.Health/Check`) says
/// of `service` (`""`: the whole server) at `socket`.
pub async fn health(socket: &Path, service: &str) -> Result<ServingStatus, HealthError> {
    let mut client = HealthClient::new(channel(socket).await?);
    let answer = client.check(HealthCheckRequest { service: service.to_string() }).await?;
    Ok(answer.into_inner().status())
}

/// Why a health check got no status.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HealthError {
    /// The agent could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The health service answered with an error (NOT_FOUND: no such service).
    #[error("the health check failed ({:?}): {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

fn find_io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        current = err.source();
    }
    None
}

/// The name of the group that owns `socket` (its number if it has no name).
fn socket_group(socket: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(socket) else { return "of the socket".to_string() };
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(meta.gid())) {
        Ok(Some(group)) => group.name,
        _ => meta.gid().to_string(),
    }
}
