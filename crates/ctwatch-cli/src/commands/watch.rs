//! `ctwatch watch`: stream container events, from the agent when one runs,
//! else from an agent started in this process.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use ctwatch::{ContainerEvent, EventKind};
use ctwatch_agent::hub::MAX_SUBSCRIBER_BUFFER;
use ctwatch_api::convert::event_from_message;
use ctwatch_api::pb;

use tracing::warn;

use crate::cli::{Position, WatchArgs};
use crate::filter::EventFilter;
use crate::output::EventWriter;
use crate::{host, remote};

/// How often a remote watch checks for SIGINT/SIGTERM while no event comes.
const SIGNAL_CHECK: Duration = Duration::from_secs(1);

/// Runs `ctwatch watch` until SIGINT/SIGTERM, a closed output, or a source failure.
pub fn run(args: &WatchArgs) -> Result<()> {
    let filter = EventFilter::new(&args.filter)?;
    let mut writer = EventWriter::new(io::BufWriter::new(io::stdout().lock()), args.format, args.no_trunc);
    let mut writer = Filtered { writer: &mut writer, filter: &filter, no_existing: args.no_existing };
    if let Some(remote) = remote::connect(&args.agent)? {
        return watch_agent(&remote, args, &mut writer);
    }
    if args.since.is_some() {
        return Err(anyhow!(
            "--since replays the agent's journal: no agent answers on the socket (start ctwatch serve)"
        ));
    }
    host::require_root()?;
    let agent = host::start_agent(host::agent_config(&args.pipeline)?)?;
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, agent.stop_flag()).context("cannot handle signals")?;
    }
    // The local agent's own output: the largest buffer there is.
    let mut events = agent.data_source().subscribe_with_buffer(MAX_SUBSCRIBER_BUFFER);
    let current = events.take_current();
    let mut written = writer.write_all(current);
    while written.is_ok() {
        match events.blocking_next() {
            Ok(Some(event)) => {
                // Take everything already queued, then flush once.
                let mut batch = vec![event];
                while let Some(more) = events.try_next() {
                    batch.push(more);
                }
                written = writer.write_all(batch);
            }
            Ok(None) => break,
            Err(e) => {
                written = Err(io::Error::other(e.to_string()));
            }
        }
    }
    agent.stop();
    let stopped = agent.join();
    written.or_else(closed_output)?;
    Ok(stopped?)
}

/// Streams the agent's Watch until SIGINT/SIGTERM or a closed output.
fn watch_agent(remote: &remote::Remote, args: &WatchArgs, writer: &mut Filtered<'_, impl io::Write>) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("cannot handle signals")?;
    }
    let mut client = remote.client();
    let mut request = pb::WatchRequest { skip_current: args.no_existing, buffer: 0, ..Default::default() };
    match args.since {
        Some(Position::Seq(seq)) => request.after_seq = Some(seq),
        Some(Position::Time(t)) => request.since_unix_nano = Some(t),
        None => {}
    }
    match args.until {
        Some(Position::Seq(seq)) => request.until_seq = seq.max(1),
        Some(Position::Time(t)) => request.until_unix_nano = Some(t),
        None => {}
    }
    let bounded = args.until.is_some();
    let mut stream = remote.block_on(async { client.watch(request).await }).map_err(remote::status_error)?.into_inner();
    while !stop.load(Ordering::Relaxed) {
        // Wake at least once a second to notice a signal.
        let next = remote.block_on(async { tokio::time::timeout(SIGNAL_CHECK, stream.message()).await });
        let item = match next {
            Err(_elapsed) => continue,
            Ok(Ok(Some(response))) => response.item,
            Ok(Ok(None)) if bounded => return Ok(()),
            Ok(Ok(None)) => return Err(anyhow!("the agent stopped")),
            Ok(Err(status)) => return Err(remote::status_error(status)),
        };
        if let Some(pb::watch_response::Item::Gap(gap)) = &item {
            warn!(
                "the journal no longer holds the events after seq {} (retention dropped them): replaying from seq {}",
                gap.after_seq, gap.oldest_seq
            );
            continue;
        }
        let (Some(pb::watch_response::Item::Current(event)) | Some(pb::watch_response::Item::Event(event))) = item
        else {
            continue;
        };
        let Some(event) = event_from_message(&event) else { continue };
        if let Err(e) = writer.write_all(vec![event]) {
            return closed_output(e);
        }
    }
    Ok(())
}

/// The event writer behind `--filter` and `--no-existing`.
struct Filtered<'a, W: io::Write> {
    writer: &'a mut EventWriter<W>,
    filter: &'a EventFilter,
    no_existing: bool,
}

impl<W: io::Write> Filtered<'_, W> {
    /// Writes the events that pass, then flushes.
    fn write_all(&mut self, events: Vec<ContainerEvent>) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        for event in events {
            if self.no_existing && event.kind == EventKind::ExistingContainer || !self.filter.matches(&event) {
                continue;
            }
            self.writer.write(&event)?;
        }
        self.writer.flush()
    }
}

/// A closed pipe (`ctwatch watch | head`) ends the command quietly.
fn closed_output(e: io::Error) -> Result<()> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e).context("cannot write events")
    }
}
