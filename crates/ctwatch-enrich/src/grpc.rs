//! What the gRPC enrichers (containerd, CRI) share: a lazily (re)connected
//! channel over a unix socket, and reporting a daemon down once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ctwatch::Runtime;
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::EnrichError;

/// A gRPC daemon at one unix socket.
pub struct GrpcDaemon {
    runtime: Runtime,
    socket: PathBuf,
    channel: Mutex<Option<Channel>>,
    down: AtomicBool,
}

impl GrpcDaemon {
    /// A daemon of `runtime` at `socket` (connected on first use).
    pub fn new(runtime: Runtime, socket: &Path) -> Self {
        GrpcDaemon { runtime, socket: socket.to_path_buf(), channel: Mutex::new(None), down: AtomicBool::new(false) }
    }

    /// Which runtime it is.
    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// Where it answers.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The channel, connecting when there is none.
    pub async fn channel(&self) -> Result<Channel, EnrichError> {
        let mut guard = self.channel.lock().await;
        if let Some(channel) = guard.as_ref() {
            return Ok(channel.clone());
        }
        let channel = containerd_client::connect(&self.socket).await.map_err(|e| self.unavailable(&e))?;
        *guard = Some(channel.clone());
        Ok(channel)
    }

    /// Records the outcome of a request: a failure drops the channel and is
    /// reported once until the daemon answers again.
    pub async fn record<T>(&self, result: &Result<T, EnrichError>) {
        match result {
            Err(e) => {
                *self.channel.lock().await = None;
                if !self.down.swap(true, Ordering::Relaxed) {
                    warn!(runtime = %self.runtime, socket = %self.socket.display(), "not answering: {e}; retrying in the background");
                }
            }
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    info!(runtime = %self.runtime, socket = %self.socket.display(), "answering again");
                }
            }
        }
    }

    /// The error for a failed request.
    pub fn unavailable(&self, e: &dyn std::fmt::Display) -> EnrichError {
        EnrichError::Unavailable { runtime: self.runtime, socket: self.socket.clone(), reason: e.to_string() }
    }
}

/// A request for containerd namespace `ns`, or `None` if `ns` cannot be a header value.
pub fn in_namespace<T>(message: T, ns: &str) -> Option<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("containerd-namespace", ns.parse().ok()?);
    Some(request)
}
