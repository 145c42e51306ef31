//! Talking to a running `ctwatch serve` over its socket.

use std::future::Future;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use ctwatch_api::client::ConnectError;
use ctwatch_api::pb::containers_client::ContainersClient;
use tonic::transport::Channel;
use tracing::{debug, warn};

use crate::cli::AgentArgs;
use crate::commands::NotFound;

/// A connection to the agent, with the small runtime it runs on.
pub struct Remote {
    runtime: tokio::runtime::Runtime,
    client: ContainersClient<Channel>,
}

/// The agent named by `--socket` (an error if it does not answer), or the
/// one on the default socket if it answers; `None` with `--standalone` or
/// when no agent runs.
pub fn connect(args: &AgentArgs) -> Result<Option<Remote>> {
    if args.standalone {
        return Ok(None);
    }
    let (socket, explicit) = match &args.socket {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(ctwatch_api::DEFAULT_SOCKET), false),
    };
    if !explicit && !socket.exists() {
        return Ok(None);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    match runtime.block_on(ctwatch_api::client::connect(&socket)) {
        Ok(client) => {
            debug!(socket = %socket.display(), "asking the agent");
            if !args.local_only_flags.is_empty() {
                warn!(
                    "{} ignored: the agent on {} answers with its own settings (pass --standalone to use them here)",
                    args.local_only_flags.join(", "),
                    socket.display()
                );
            }
            Ok(Some(Remote { runtime, client }))
        }
        // A socket this user may not use: say so, rather than fall back to a
        // scan that needs root anyway.
        Err(e @ ConnectError::PermissionDenied { .. }) => Err(e.into()),
        Err(e) if explicit => Err(anyhow!("{e} (start it with 'ctwatch serve', or pass --standalone)")),
        Err(e) => {
            debug!("{e}; working without it");
            Ok(None)
        }
    }
}

impl Remote {
    /// Runs a request on the client runtime.
    pub fn call<T, F: Future<Output = Result<T, tonic::Status>>>(
        &self,
        request: impl FnOnce(ContainersClient<Channel>) -> F,
    ) -> Result<T> {
        self.runtime.block_on(request(self.client.clone())).map_err(status_error)
    }

    /// Runs any future on the client runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// The client.
    pub fn client(&self) -> ContainersClient<Channel> {
        self.client.clone()
    }
}

/// The agent's answer as an error: "not found" keeps its meaning (exit status 1).
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    let message = status.message().to_string();
    match status.code() {
        tonic::Code::NotFound => NotFound(message).into(),
        tonic::Code::PermissionDenied | tonic::Code::Unavailable | tonic::Code::Unknown => {
            anyhow!("the agent did not answer: {message}")
        }
        _ => anyhow!("{message}"),
    }
}
