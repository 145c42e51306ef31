//! `ctwatch watch`: stream container events.

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::RecvTimeoutError;
use ctwatch::sources::inotify::InotifySource;
use ctwatch::sources::SourceMessage;
use ctwatch::{EventKind, SharedStore, Store, Tracker};
use tracing::info;

use crate::cli::WatchArgs;
use crate::host;
use crate::output::EventWriter;

/// Runs `ctwatch watch` until the output is closed or the source fails.
pub fn run(args: &WatchArgs) -> Result<()> {
    host::require_root()?;
    let tree = host::watched_tree(&args.cgroups)?;
    let store = SharedStore::new(Store::new(args.grace));
    let mut tracker = Tracker::new(store.clone(), Box::new(host::state_dirs(&args.cgroups)));

    let source = InotifySource::new(&tree.hierarchy.mount_point, &tree.start)?;
    info!(
        root = %tree.start.display(),
        version = ?tree.hierarchy.version,
        hierarchy_id = tree.hierarchy.hierarchy_id,
        "watching cgroups with inotify"
    );
    let (tx, rx) = crossbeam_channel::unbounded();
    let stop = Arc::new(AtomicBool::new(false));
    let source_thread = thread::Builder::new()
        .name("inotify-source".into())
        .spawn({
            let stop = stop.clone();
            move || source.run(tx, stop)
        })
        .context("cannot start the source thread")?;

    let mut writer = EventWriter::new(
        io::BufWriter::new(io::stdout().lock()),
        args.format,
        args.no_trunc,
    );
    let mut events = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(SourceMessage::Events(batch)) => tracker.apply(&batch, &mut events),
            Ok(SourceMessage::ScanComplete) => {
                info!(containers = store.read().len(), "scan at start complete");
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {
                tracker.expire();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        for event in events.drain(..) {
            if args.no_existing && event.kind == EventKind::ExistingContainer {
                continue;
            }
            if let Err(e) = writer.write(&event) {
                return closed_output(e);
            }
        }
        if let Err(e) = writer.flush() {
            return closed_output(e);
        }
    }
    match source_thread.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("the inotify source failed"),
        Err(_) => anyhow::bail!("the inotify source thread panicked"),
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
