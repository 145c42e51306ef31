//! `ctwatch watch`: stream container events.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{RecvTimeoutError, Sender};
use ctwatch::cgroupfs::{self, CgroupVersion};
use ctwatch::sources::inotify::InotifySource;
use ctwatch::sources::SourceMessage;
use ctwatch::{ContainerEvent, EventKind, SharedStore, Store, Tracker};
use ctwatch_ebpf::{ContainersMap, EbpfConfig, EbpfSource};
use tracing::{info, warn};

use crate::cli::{SourceKind, WatchArgs};
use crate::host::{self, WatchedTree};
use crate::output::EventWriter;

/// The kernel source picked for this run.
enum Source {
    Ebpf(Box<EbpfSource>),
    Inotify(Box<InotifySource>),
}

/// Runs `ctwatch watch` until SIGINT/SIGTERM, a closed output, or a source failure.
pub fn run(args: &WatchArgs) -> Result<()> {
    host::require_root()?;
    let tree = host::watched_tree(&args.cgroups)?;
    let mirror = mirror_hierarchy(&tree);
    let source = choose_source(args, &tree, mirror.as_ref().map(|(id, _)| *id))?;
    let containers_map = open_containers_map(args, mirror.map(|(_, root)| root));

    let store = SharedStore::new(Store::new(args.grace));
    let mut tracker = Tracker::new(store.clone(), Box::new(host::state_dirs(&args.cgroups)));
    if let Some(map) = &containers_map {
        tracker.add_observer(map.observer());
    }

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("cannot handle signals")?;
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    let source_thread = spawn_source(source, &tree, tx, stop.clone())?;

    let mut writer = EventWriter::new(
        io::BufWriter::new(io::stdout().lock()),
        args.format,
        args.no_trunc,
    );
    let mut events = Vec::new();
    'running: while !stop.load(Ordering::Relaxed) {
        let mut message = match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => {
                tracker.expire();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // Take everything already queued, then write and flush once.
        loop {
            match message {
                SourceMessage::Events(batch) => tracker.apply(&batch, &mut events),
                SourceMessage::Resync(present) => tracker.reconcile(&present, &mut events),
                SourceMessage::Mirror(batch) => {
                    if let Some(map) = &containers_map {
                        map.apply_mirror(&batch);
                    }
                }
                SourceMessage::ScanComplete => {
                    if let Some(map) = &containers_map {
                        map.prune_stale();
                    }
                    info!(containers = store.read().len(), "scan at start complete");
                }
            }
            match rx.try_recv() {
                Ok(next) => message = next,
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    write_all(&mut writer, &mut events, args.no_existing).or_else(closed_output)?;
                    break 'running;
                }
            }
        }
        if let Err(e) = write_all(&mut writer, &mut events, args.no_existing) {
            stop.store(true, Ordering::Relaxed);
            return closed_output(e);
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(tracker); // unpins the map unless --keep-pinned
    match source_thread.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("the cgroup source failed"),
        Err(_) => Err(anyhow!("the cgroup source thread panicked")),
    }
}

/// On a hybrid host, the unified hierarchy: its IDs are what
/// `bpf_get_current_cgroup_id()` returns, so the pinned map holds them too.
fn mirror_hierarchy(tree: &WatchedTree) -> Option<(u32, PathBuf)> {
    if tree.hierarchy.version == CgroupVersion::V2 {
        return None;
    }
    let hierarchies = cgroupfs::mounted_hierarchies().ok()?;
    hierarchies
        .into_iter()
        .find(|h| h.version == CgroupVersion::V2)
        .map(|h| (h.hierarchy_id, h.mount_point))
}

fn choose_source(args: &WatchArgs, tree: &WatchedTree, mirror: Option<u32>) -> Result<Source> {
    let inotify = || -> Result<Source> {
        Ok(Source::Inotify(Box::new(InotifySource::new(
            &tree.hierarchy.mount_point,
            &tree.start,
        )?)))
    };
    let config = EbpfConfig {
        tracked_hierarchy: tree.hierarchy.hierarchy_id,
        mirror_hierarchy: if args.no_pin { None } else { mirror },
        ring_buffer_bytes: args.ring_buffer_size,
    };
    let root = tree.start.display();
    match args.source {
        SourceKind::Inotify => {
            info!(%root, "source: inotify (--source inotify)");
            inotify()
        }
        SourceKind::Ebpf => {
            let source = EbpfSource::load(config).map_err(|e| anyhow!("--source ebpf: {e}"))?;
            info!(%root, hierarchy_id = tree.hierarchy.hierarchy_id, "source: ebpf (--source ebpf)");
            Ok(Source::Ebpf(Box::new(source)))
        }
        SourceKind::Auto => match EbpfSource::load(config) {
            Ok(source) => {
                info!(%root, hierarchy_id = tree.hierarchy.hierarchy_id, "source: ebpf (kernel and privileges allow it)");
                Ok(Source::Ebpf(Box::new(source)))
            }
            Err(why) => {
                info!(%root, "source: inotify, because eBPF is unavailable: {why}");
                inotify()
            }
        },
    }
}

fn open_containers_map(args: &WatchArgs, mirror_root: Option<PathBuf>) -> Option<ContainersMap> {
    if args.no_pin {
        return None;
    }
    match ContainersMap::open(
        &args.pin_path,
        args.map_max_entries,
        args.keep_pinned,
        mirror_root,
    ) {
        Ok(map) => Some(map),
        Err(e) => {
            warn!("no pinned map of container cgroups: {e} (pass --no-pin to silence this)");
            None
        }
    }
}

fn spawn_source(
    source: Source,
    tree: &WatchedTree,
    tx: Sender<SourceMessage>,
    stop: Arc<AtomicBool>,
) -> Result<thread::JoinHandle<io::Result<()>>> {
    let (mount_point, start) = (tree.hierarchy.mount_point.clone(), tree.start.clone());
    thread::Builder::new()
        .name("cgroup-source".into())
        .spawn(move || match source {
            Source::Ebpf(s) => s.run(&mount_point, &start, tx, stop),
            Source::Inotify(s) => s.run(tx, stop),
        })
        .context("cannot start the source thread")
}

/// Writes and flushes the events made so far.
fn write_all(
    writer: &mut EventWriter<impl io::Write>,
    events: &mut Vec<ContainerEvent>,
    no_existing: bool,
) -> io::Result<()> {
    for event in events.drain(..) {
        if no_existing && event.kind == EventKind::ExistingContainer {
            continue;
        }
        writer.write(&event)?;
    }
    writer.flush()
}

/// A closed pipe (`ctwatch watch | head`) ends the command quietly.
fn closed_output(e: io::Error) -> Result<()> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e).context("cannot write events")
    }
}
