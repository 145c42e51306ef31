//! What the gRPC enrichers (containerd, CRI) share: a lazily (re)connected
//! channel over a unix socket, and reporting a daemon down once.

use std::path::Path;

use crate::health::DaemonHealth;
use crate::EnrichError;
use ctwatch::Runtime;
use tokio::sync::Mutex;
use tonic::transport::Channel;

/// A gRPC daemon at one unix socket.
pub struct GrpcDaemon {
    health: DaemonHealth,
    channel: Mutex<Option<Channel>>,
}

impl GrpcDaemon {
    /// A daemon of `runtime` at `socket` (connected on first use).
    pub fn new(runtime: Runtime, socket: &Path) -> Self {
        GrpcDaemon { health: DaemonHealth::new(runtime, socket), channel: Mutex::new(None) }
    }

    /// Which runtime it is.
    pub fn runtime(&self) -> Runtime {
        self.health.runtime()
    }

    /// Where it answers.
    pub fn socket(&self) -> &Path {
        self.health.socket()
    }

    /// The channel, connecting when there is none.
    pub async fn channel(&self) -> Result<Channel, EnrichError> {
        let mut guard = self.channel.lock().await;
        if let Some(channel) = guard.as_ref() {
            return Ok(channel.clone());
        }
        let channel = ctwatch_protos::connect(self.health.socket()).await.map_err(|e| self.unavailable(&e))?;
        *guard = Some(channel.clone());
        Ok(channel)
    }

    /// Records the outcome of a request: a failure drops the channel and is
    /// reported once until the daemon answers again.
    pub async fn record<T>(&self, result: &Result<T, EnrichError>) {
        if self.health.record(result) {
            *self.channel.lock().await = None;
        }
    }

    /// The error for a failed request.
    pub fn unavailable(&self, e: &dyn std::fmt::Display) -> EnrichError {
        self.health.unavailable(e)
    }
}

/// A request for containerd namespace `ns`, or `None` if `ns` cannot be a header value.
pub fn in_namespace<T>(message: T, ns: &str) -> Option<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("containerd-namespace", ns.parse().ok()?);
    Some(request)
}
