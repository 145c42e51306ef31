//! `ctwatch health`: the agent's standard gRPC health check, for probes.

use std::io::Write;

use anyhow::{Context, Result};
use ctwatch_api::client::{self, ServingStatus};

use crate::cli::HealthArgs;

/// Asks the health service; exit 0 when SERVING, 1 when it answers
/// otherwise, 2 (as an error) when it cannot be asked.
pub fn run(args: &HealthArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    let asked = runtime
        .block_on(async { tokio::time::timeout(args.timeout, client::health(&args.socket, &args.service)).await });
    let status = match asked {
        Err(_) => anyhow::bail!("no health answer from {} within {:?}", args.socket.display(), args.timeout),
        Ok(answer) => answer?,
    };
    let name = status.as_str_name();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{name}");
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(NotServing(name.to_string()).into())
    }
}

/// The agent answered, but not SERVING: exit status 1.
#[derive(Debug)]
pub struct NotServing(pub String);

impl std::fmt::Display for NotServing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the agent is {}", self.0)
    }
}

impl std::error::Error for NotServing {}
