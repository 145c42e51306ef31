//! A client of `ctwatch serve` over its unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use thiserror::Error;
use tonic::transport::{Channel, Endpoint};

use crate::pb::containers_client::ContainersClient;

/// Why the agent could not be reached.
#[derive(Debug, Error)]
pub enum ConnectError {
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
    let path = socket.to_path_buf();
    let no_agent =
        |e: &dyn std::fmt::Display| ConnectError::NoAgent { path: socket.to_path_buf(), reason: e.to_string() };
    // The URI is required by the API but unused: the connector dials the socket.
    let endpoint = Endpoint::try_from("http://ctwatch.local").map_err(|e| no_agent(&e))?;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| {
            // tonic's transport error hides the io error; say what the socket said.
            let reason = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            ConnectError::NoAgent { path: socket.to_path_buf(), reason }
        })?;
    Ok(ContainersClient::new(channel).max_decoding_message_size(64 << 20))
}
