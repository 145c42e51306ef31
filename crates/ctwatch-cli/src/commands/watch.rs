//! `ctwatch watch`: stream container events.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::Sender;
use ctwatch::cgroupfs::{self, CgroupVersion};
use ctwatch::sources::inotify::InotifySource;
use ctwatch::sources::SourceMessage;
use ctwatch::{ContainerEvent, EventKind, SharedStore, Store, Tracker};
use ctwatch_ebpf::{ContainersMap, EbpfConfig, EbpfSource};
use ctwatch_enrich::{EnrichResult, Enrichment, Gate};
use tracing::{info, warn};

use crate::cli::{SourceKind, WatchArgs};
use crate::host::{self, WatchedTree};
use crate::output::EventWriter;

/// How long the loop waits when nothing is due (expiry of removed containers).
const IDLE_TICK: Duration = Duration::from_millis(250);

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
    let (enriched_tx, enriched_rx) = crossbeam_channel::unbounded();
    let enrichment = host::start_enrichment(&args.enrich, &args.cgroups, enriched_tx)?;
    let mut gate = Gate::new(args.enrich.enrich_deadline);

    let mut writer = EventWriter::new(io::BufWriter::new(io::stdout().lock()), args.format, args.no_trunc);
    let mut events = Vec::new();
    let mut ready = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = gate.next_due().map_or(IDLE_TICK, |due| due.saturating_duration_since(now).min(IDLE_TICK));
        crossbeam_channel::select! {
            recv(rx) -> message => {
                let Ok(message) = message else { break };
                // Take everything already queued, then write and flush once.
                let mut source_done = false;
                let mut next = Some(message);
                while let Some(message) = next {
                    apply_message(message, &mut tracker, containers_map.as_ref(), &store, &mut events);
                    next = match rx.try_recv() {
                        Ok(message) => Some(message),
                        Err(crossbeam_channel::TryRecvError::Empty) => None,
                        Err(crossbeam_channel::TryRecvError::Disconnected) => {
                            source_done = true;
                            None
                        }
                    };
                }
                pass_through_gate(&mut events, &mut gate, enrichment.as_ref(), &mut ready);
                if source_done {
                    write_ready(&mut writer, &mut ready, args.no_existing).or_else(closed_output)?;
                    break;
                }
            },
            recv(enriched_rx) -> result => {
                if let Ok(result) = result {
                    apply_enrichment(result, &mut tracker, &store, &mut gate, &mut ready);
                }
            },
            default(wait) => {
                tracker.expire();
            },
        }
        gate.expire(Instant::now(), &mut ready);
        if let Err(e) = write_ready(&mut writer, &mut ready, args.no_existing) {
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

/// Puts an enrichment answer in the store, releases the create it held, or,
/// when the create went out already and the answer changed the record,
/// emits a `container_update`.
fn apply_enrichment(
    result: EnrichResult,
    tracker: &mut Tracker,
    store: &SharedStore,
    gate: &mut Gate,
    ready: &mut Vec<ContainerEvent>,
) {
    let before = store.read().get(&result.container_id).cloned();
    let updated = tracker.update_container(&result.container_id, result.cgroup_id, |c| result.metadata.apply_to(c));
    let (id, cgroup_id) = (result.container_id.as_str(), result.cgroup_id);
    if gate.resolve(id, cgroup_id, updated.clone(), result.complete, ready) {
        return;
    }
    let Some(container) = updated else { return };
    let changed = before.is_some_and(|b| *b != *container);
    if changed && container.state != ctwatch::ContainerState::Removed {
        ready.push(ContainerEvent {
            time: std::time::SystemTime::now(),
            kind: EventKind::ContainerUpdate,
            cgroup_id: container.cgroup_id,
            container,
            kernel_time: None,
            enriched: Some(result.complete),
        });
    }
}

/// Applies one message from the source to the tracker (and the pinned map).
fn apply_message(
    message: SourceMessage,
    tracker: &mut Tracker,
    containers_map: Option<&ContainersMap>,
    store: &SharedStore,
    events: &mut Vec<ContainerEvent>,
) {
    match message {
        SourceMessage::Events(batch) => tracker.apply(&batch, events),
        SourceMessage::Resync(present) => tracker.reconcile(&present, events),
        SourceMessage::Mirror(batch) => {
            if let Some(map) = containers_map {
                map.apply_mirror(&batch);
            }
        }
        SourceMessage::ScanComplete => {
            if let Some(map) = containers_map {
                map.prune_stale();
            }
            info!(containers = store.read().len(), "scan at start complete");
        }
    }
}

/// On a hybrid host, the unified hierarchy: its IDs are what
/// `bpf_get_current_cgroup_id()` returns, so the pinned map holds them too.
fn mirror_hierarchy(tree: &WatchedTree) -> Option<(u32, PathBuf)> {
    if tree.hierarchy.version == CgroupVersion::V2 {
        return None;
    }
    let hierarchies = cgroupfs::mounted_hierarchies().ok()?;
    hierarchies.into_iter().find(|h| h.version == CgroupVersion::V2).map(|h| (h.hierarchy_id, h.mount_point))
}

fn choose_source(args: &WatchArgs, tree: &WatchedTree, mirror: Option<u32>) -> Result<Source> {
    let inotify = || -> Result<Source> {
        Ok(Source::Inotify(Box::new(InotifySource::new(&tree.hierarchy.mount_point, &tree.start)?)))
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
    match ContainersMap::open(&args.pin_path, args.map_max_entries, args.keep_pinned, mirror_root) {
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

/// With enrichment on, creates wait in the gate (and their enrichment is
/// asked for); everything else, and all events without enrichment, is ready.
fn pass_through_gate(
    events: &mut Vec<ContainerEvent>,
    gate: &mut Gate,
    enrichment: Option<&Enrichment>,
    ready: &mut Vec<ContainerEvent>,
) {
    let Some(enrichment) = enrichment else {
        ready.append(events);
        return;
    };
    let now = Instant::now();
    for event in events.drain(..) {
        let container = event.container.clone();
        if gate.push(event, now, ready) {
            enrichment.submit(&container);
        }
    }
}

/// Writes and flushes the events ready to go out.
fn write_ready(
    writer: &mut EventWriter<impl io::Write>,
    events: &mut Vec<ContainerEvent>,
    no_existing: bool,
) -> io::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
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
