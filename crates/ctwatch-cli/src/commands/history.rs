//! `ctwatch history ID|NAME`: every event of one container from the agent's journal.

use std::io::{self, Write};

use anyhow::{anyhow, Result};
use ctwatch_api::convert::event_from_message;
use ctwatch_api::pb;

use crate::cli::{AgentArgs, HistoryArgs};
use crate::output::EventWriter;
use crate::remote;

/// Runs `ctwatch history`.
pub fn run(args: &HistoryArgs) -> Result<()> {
    let agent = AgentArgs { socket: args.socket.clone(), standalone: false, local_only_flags: Vec::new() };
    let remote = remote::connect(&agent)?
        .ok_or_else(|| anyhow!("history reads the agent's journal: no agent answers on the socket"))?;
    let container = args.key.clone();
    let answer = remote.call(|mut client| async move {
        client.history(pb::HistoryRequest { container }).await.map(tonic::Response::into_inner)
    })?;
    let mut writer = EventWriter::new(io::BufWriter::new(io::stdout().lock()), args.format, args.no_trunc);
    for event in answer.events.iter().filter_map(event_from_message) {
        writer.write(&event)?;
    }
    writer.flush()?;
    io::stdout().flush()?;
    Ok(())
}
