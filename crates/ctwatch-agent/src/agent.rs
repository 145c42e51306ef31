//! The agent: wires sources → transforms → sinks and runs the loop.
//!
//! ```text
//! sources/ (kernel, hook,  ──▶ ONE bounded inbox ──▶ transforms/ ──▶ sinks/
//!   process events)                                tracker           hub (Watch, watch)
//!                                                  enrichment gate   pinned BPF map
//!                                                  hook join         metrics
//!                                                  lifecycle
//! ```
//!
//! The loop takes at most [`MAX_MESSAGES_PER_TURN`] messages from the inbox
//! before it looks at the transforms' deadlines, so a busy source cannot
//! starve them. Time comes from the tracker's injected clock.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use ctwatch::cgroupfs::{self, CgroupVersion};
use ctwatch::hook::HookMessage;
use ctwatch::sources::inotify::InotifyError;
use ctwatch::sources::SourceMessage;
use ctwatch::{ContainerEvent, SharedStore, Store, Tracker};
use ctwatch_ebpf::{ContainersMap, EbpfUnavailable};
use ctwatch_enrich::oom::OomWatcher;
use ctwatch_enrich::{EnrichResult, Enrichment};
use ctwatch_hook::{Hook, HookError};
use thiserror::Error;
use tracing::{info, warn};

use crate::config::{AgentConfig, PinConfig, SourceChoice, WatchedTree};
use crate::datasource::{DataSource, HostView};
use crate::metrics::Metrics;
use crate::sinks::hub::HubSink;
use crate::sinks::journal::JournalStage;
use crate::sinks::metrics::MetricsSink;
use crate::sinks::nats::NatsStage;
use crate::sinks::pinned_map::PinnedMapSink;
use crate::sinks::{Output, Sink};
use crate::sources::kernel::{self, KernelSource, Running};
use crate::sources::process;
use crate::transforms::gate::{Enricher, EnrichmentGate};
use crate::transforms::hook_join::HookJoin;
use crate::transforms::lifecycle::{ExitAsker, ExitReply, ExitSources, Lifecycle, Start, StartSource};
use crate::transforms::tracker::TrackerStage;
use crate::transforms::{Cx, Transform};

/// How long the loop waits when nothing is due.
const IDLE_TICK: Duration = Duration::from_millis(250);

/// The most inbox messages the loop takes before it looks at deadlines again.
pub const MAX_MESSAGES_PER_TURN: usize = 64;

/// How many enrichment answers may wait for the loop (the engine's tasks wait beyond that).
const ENRICH_QUEUE: usize = 1024;

/// The most containers whose OOM counters are watched at once.
const OOM_WATCHES: usize = 65_536;

/// Why the agent could not start or stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The cgroup hierarchies could not be read.
    #[error("cgroups: {0}")]
    Cgroups(String),
    /// `SourceChoice::Ebpf` was asked for and cannot load.
    #[error("the eBPF source cannot load: {0}")]
    Ebpf(#[from] EbpfUnavailable),
    /// The inotify source could not start.
    #[error(transparent)]
    Inotify(#[from] InotifyError),
    /// The kernel source asked for explicitly ended while the agent ran.
    #[error("the {name} source ended: {why}")]
    SourceEnded {
        /// Which (`ebpf`, `inotify`).
        name: &'static str,
        /// Why.
        why: String,
    },
    /// A thread could not start, or the source failed while running.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The runtime hook was required and cannot start.
    #[error("the runtime hook cannot start: {0}")]
    Hook(#[from] HookError),
    /// The configuration cannot be used.
    #[error("{0}")]
    Config(String),
    /// A thread panicked (a bug).
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
}

/// A running agent. Dropping it without [`Agent::stop`] and [`Agent::join`] leaves it running.
pub struct Agent {
    data_source: DataSource,
    /// The NATS sink, stopped after the loop (its cursor written before the journal closes).
    nats: Option<NatsStage>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<(), AgentError>>>,
}

impl Agent {
    /// Loads the kernel source and starts the pipeline: the scan at start,
    /// then live events, published to the data source's subscribers.
    pub fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        let mirror = mirror_hierarchy(&config.tree);
        let no_pin = config.pin.is_none();
        let source = kernel::choose(&config, if no_pin { None } else { mirror.as_ref().map(|(id, _)| *id) })?;
        let mirror_root = mirror.map(|(_, r)| r);
        let containers_map = config.pin.as_ref().and_then(|pin| open_containers_map(pin, mirror_root.clone()));
        let metrics = Arc::new(Metrics::new());
        // The process events read the pinned map: with the eBPF source and the map only.
        let process_source = match (&source, &config.pin, &containers_map) {
            (KernelSource::Ebpf(_), Some(pin), Some(_)) => process::load(&pin.path, &metrics),
            (KernelSource::Ebpf(_), Some(_), None) => {
                process::unavailable(&metrics, "the map of container cgroups could not be pinned (see above)");
                None
            }
            (KernelSource::Ebpf(_), None, _) => {
                info!("no eBPF process events with --no-pin (they read the pinned map): starts and exits from /proc, the hook and the runtimes");
                None
            }
            _ => None,
        };
        let store = SharedStore::new(Store::new(config.grace));
        let host = HostView { hierarchy: config.tree.hierarchy.clone(), proc_root: config.proc_root.clone() };
        let data_source = DataSource::new(store.clone(), host, metrics.clone());
        let tracker = Tracker::new(store.clone(), Box::new(config.state_dirs.clone())).recording_changes();

        // Sinks.
        let ebpf_stats = match &source {
            KernelSource::Ebpf(s) => Some(s.stats()),
            KernelSource::Inotify(_) | KernelSource::ScanOnly => None,
        };
        let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(MetricsSink::new(metrics.clone(), ebpf_stats))];
        if let Some(map) = containers_map {
            let sink = PinnedMapSink::start(map, store.clone(), metrics.clone())
                .map_err(|source| AgentError::Io { what: "cannot start the pinned map's thread", source })?;
            sinks.push(Box::new(sink));
        }
        // The journal stamps every event before the sinks below see it (see `Loop::run`).
        let journal = config.journal.clone().map(|j| JournalStage::new(j, store.clone()));
        if let Some(j) = &config.journal {
            metrics.follow_journal(j.clone());
            data_source.set_journal(j.clone());
        }
        // The NATS sink reads the journal on its own thread (never on the event path).
        let nats = match (config.nats.clone(), &config.journal) {
            (None, _) => None,
            (Some(_), None) => return Err(AgentError::Config("the NATS sink needs the journal (its outbox)".into())),
            (Some(mut nats), Some(journal)) => {
                if nats.container_count.is_none() {
                    let store = store.clone();
                    nats.container_count = Some(Arc::new(move || store.read().live().count() as u64));
                }
                let stage = NatsStage::start(nats, journal.clone(), data_source.clone())?;
                metrics.follow_nats(stage.stats());
                Some(stage)
            }
        };
        sinks.push(Box::new(HubSink::new(data_source.clone())));

        // Sources.
        let (tx, rx) = crate::sources::inbox();
        let hook_only = matches!(source, KernelSource::ScanOnly);
        let ebpf_loaded = matches!(source, KernelSource::Ebpf(_));
        let hook = crate::sources::hook::start(&config, hook_only, ebpf_loaded, tx.clone())?;
        if let Some(hook) = &hook {
            metrics.follow_hook(hook.stats());
        }
        let kernel = kernel::spawn(source, &config.tree, tx.clone())?;
        let with_process_events = process_source.is_some();
        let process = process_source.map(|p| process::spawn(p, tx.clone(), metrics.clone())).transpose()?;

        // Transforms.
        let (exit_tx, exit_rx) = crossbeam_channel::bounded(ENRICH_QUEUE);
        let (enrichment, enriched_rx, exit_rx, asker) = match config.enrich.clone() {
            Some(c) => {
                let (tx, rx) = crossbeam_channel::bounded(ENRICH_QUEUE);
                let enrichment =
                    Arc::new(Enrichment::start(c, tx).map_err(|source| AgentError::Io { what: "enrichment", source })?);
                let asker = Box::new(enrichment.clone()) as Box<dyn ExitAsker>;
                (Some(Box::new(enrichment) as Box<dyn Enricher>), rx, exit_rx, Some((asker, exit_tx)))
            }
            // Never ready (a dropped sender would make the loop spin on "disconnected").
            None => (None, crossbeam_channel::never(), crossbeam_channel::never(), None),
        };
        let oom = OomWatcher::start(OOM_WATCHES).map_err(|e| warn!("no OOM counters on removes: {e}")).ok();
        let exits = ExitSources { asker, oom, memory: memory_hierarchy() };
        let deadline = config.enrich.as_ref().map_or(Duration::ZERO, |c| c.deadline);
        let stop = Arc::new(AtomicBool::new(false));
        let mut lifecycle = Lifecycle::with_exits(config.proc_root.clone(), exits, metrics.clone())
            .with_cgroup_root(config.tree.hierarchy.mount_point.clone());
        if with_process_events {
            lifecycle = lifecycle.with_process_events(mirror_root);
        }
        let run = Loop {
            tracker: TrackerStage::new(tracker, metrics.clone()),
            gate: EnrichmentGate::new(enrichment, deadline, metrics.clone()),
            join: HookJoin::new(hook_only, metrics.clone()),
            journal,
            lifecycle,
            sinks,
            metrics,
            hook,
            kernel: Some(kernel),
            process,
            choice: config.source,
            tree: config.tree.clone(),
            tx,
        };
        let thread_stop = stop.clone();
        let data_source_for_loop = data_source.clone();
        let thread = thread::Builder::new()
            .name("tracker".into())
            .spawn(move || run.run(rx, enriched_rx, exit_rx, thread_stop, data_source_for_loop))
            .map_err(|source| AgentError::Io { what: "cannot start the tracker thread", source })?;
        Ok(Agent { data_source, nats, stop, thread: Some(thread) })
    }

    /// The containers data source this agent keeps current.
    pub fn data_source(&self) -> DataSource {
        self.data_source.clone()
    }

    /// The flag that stops the agent when set (for signal handlers).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Asks the agent to stop (returns at once; see [`Agent::join`]).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for the agent to stop: the source ends, subscriptions end, the
    /// pinned map is unpinned (unless kept). Returns why it stopped if it failed.
    pub fn join(mut self) -> Result<(), AgentError> {
        let result = match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(AgentError::Panicked("tracker")),
            None => Ok(()),
        };
        if let Some(mut nats) = self.nats.take() {
            nats.stop();
        }
        result
    }

    /// The NATS sink's counters and gauges, when it runs.
    pub fn nats_stats(&self) -> Option<Arc<ctwatch_nats::SinkStats>> {
        self.nats.as_ref().map(NatsStage::stats)
    }
}

/// The loop's state: the transforms, the sinks, and what to restart.
struct Loop {
    tracker: TrackerStage,
    gate: EnrichmentGate,
    join: HookJoin,
    /// At the head of the sinks: numbers and journals every event.
    journal: Option<JournalStage>,
    lifecycle: Lifecycle,
    sinks: Vec<Box<dyn Sink>>,
    metrics: Arc<Metrics>,
    /// The runtime hook; dropping it unmarks the runtime binaries.
    hook: Option<Hook>,
    kernel: Option<Running>,
    /// The eBPF process events' thread, when loaded.
    process: Option<process::Running>,
    choice: SourceChoice,
    tree: WatchedTree,
    /// A sender of the inbox, for a fallback source.
    tx: Sender<SourceMessage>,
}

/// Closes the hub and raises the stop flag when the tracker thread ends, by
/// returning or by panicking.
struct CloseOnExit {
    data_source: DataSource,
    stop: Arc<AtomicBool>,
}

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.data_source.hub().close();
    }
}

impl Loop {
    fn run(
        mut self,
        rx: Receiver<SourceMessage>,
        enriched_rx: Receiver<EnrichResult>,
        exit_rx: Receiver<ExitReply>,
        stop: Arc<AtomicBool>,
        data_source: DataSource,
    ) -> Result<(), AgentError> {
        // Even if this thread panics, subscribers see the end instead of waiting forever.
        let _closer = CloseOnExit { data_source, stop: stop.clone() };
        let mut result = Ok(());
        while !stop.load(Ordering::Relaxed) {
            let now = self.tracker.tracker().clock().now();
            let next_due =
                [self.gate.next_due(), self.join.next_due(), self.lifecycle.next_due(), self.tracker.next_due()]
                    .into_iter()
                    .flatten()
                    .min();
            let wait = next_due.map_or(IDLE_TICK, |due| due.saturating_duration_since(now).min(IDLE_TICK));
            let mut events = Vec::new();
            let mut outputs = Vec::new();
            crossbeam_channel::select! {
                recv(rx) -> message => {
                    let Ok(message) = message else { break };
                    // Take what is queued, up to a bound, then look at deadlines.
                    let mut next = Some(message);
                    let mut taken = 0;
                    while let Some(message) = next {
                        if let Err(e) = self.apply_message(message, &mut events, &mut outputs) {
                            result = Err(e);
                            break;
                        }
                        taken += 1;
                        next = if taken < MAX_MESSAGES_PER_TURN { rx.try_recv().ok() } else { None };
                    }
                },
                recv(enriched_rx) -> answer => {
                    if let Ok(answer) = answer {
                        let mut ready = Vec::new();
                        self.gate.answer(&mut Cx::new(self.tracker.tracker()), answer, &mut ready);
                        self.after_gate(ready, &mut outputs);
                    }
                },
                recv(exit_rx) -> reply => {
                    if let Ok(reply) = reply {
                        let mut ready = Vec::new();
                        self.lifecycle.on_exit(&mut Cx::new(self.tracker.tracker()), reply, &mut ready);
                        if !ready.is_empty() {
                            outputs.push(Owned::Events(ready));
                        }
                    }
                },
                default(wait) => {},
            }
            if result.is_err() {
                break;
            }
            self.through_transforms(events, &mut outputs);
            if self.tracker.next_due().is_some_and(|due| due <= self.tracker.tracker().clock().now()) {
                self.tracker.tick();
            }
            for sink in &mut self.sinks {
                sink.flush();
            }
            if let Some(journal) = &mut self.journal {
                let mut i = 0;
                while i < outputs.len() {
                    match &mut outputs[i] {
                        Owned::Events(events) => journal.stamp(events),
                        Owned::ScanComplete => {
                            let late = journal.scan_complete();
                            if !late.is_empty() {
                                outputs.insert(i, Owned::Events(late));
                                i += 1;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            for output in &outputs {
                self.send(output.as_output());
                if let Owned::ScanComplete = output {
                    info!(containers = self.tracker.tracker().store().read().len(), "scan at start complete");
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(hook) = &self.hook {
            let stats = hook.stats();
            info!(
                execs = stats.events.load(Ordering::Relaxed),
                creates = stats.creates.load(Ordering::Relaxed),
                denied = stats.denied.load(Ordering::Relaxed),
                deadline_answers = stats.deadline_answers.load(Ordering::Relaxed),
                unreadable_argv = stats.unreadable.load(Ordering::Relaxed),
                argv_from_ebpf = stats.argv_from_ebpf.load(Ordering::Relaxed),
                argv_from_proc = stats.argv_from_proc.load(Ordering::Relaxed),
                "runtime hook stopping; unmarking the runtime binaries"
            );
        }
        for sink in &mut self.sinks {
            sink.close(); // the hub ends subscriptions; the map is unpinned unless kept
        }
        // A source blocked on the full inbox is released before it is joined.
        drop(rx);
        drop(enriched_rx);
        drop(exit_rx);
        drop(self.hook.take());
        if let Some(process) = self.process.take() {
            process.stop()?;
        }
        if let Some(kernel) = self.kernel.take() {
            kernel.stop()?;
        }
        result
    }

    fn send(&mut self, output: Output<'_>) {
        for sink in &mut self.sinks {
            sink.take(output);
        }
    }

    /// Tracker events through the gate and the hook join; what comes out, with
    /// the membership changes made meanwhile, into `outputs`.
    fn through_transforms(&mut self, mut events: Vec<ContainerEvent>, outputs: &mut Vec<Owned>) {
        let changes = self.tracker.take_changes();
        if !changes.is_empty() {
            self.lifecycle.on_membership(&changes);
            outputs.insert(0, Owned::Membership(changes));
        }
        let mut ready = Vec::new();
        let mut cx = Cx::new(self.tracker.tracker());
        self.gate.tick(&mut cx, &mut ready);
        self.gate.push(&mut cx, &mut events, &mut ready);
        self.after_gate(ready, outputs);
    }

    fn after_gate(&mut self, mut ready: Vec<ContainerEvent>, outputs: &mut Vec<Owned>) {
        let mut out = Vec::new();
        let mut cx = Cx::new(self.tracker.tracker());
        self.join.tick(&mut cx, &mut out);
        self.join.push(&mut cx, &mut ready, &mut out);
        let mut started = Vec::new();
        self.lifecycle.tick(&mut cx, &mut started);
        self.lifecycle.push(&mut cx, &mut out, &mut started);
        let out = started;
        let changes = self.tracker.take_changes();
        if !changes.is_empty() {
            self.lifecycle.on_membership(&changes);
            outputs.push(Owned::Membership(changes));
        }
        if !out.is_empty() {
            outputs.push(Owned::Events(out));
        }
    }

    /// One inbox message: cgroup changes to the tracker, the hook's to the
    /// join, map-only changes to the sinks, a source's end to the fallback.
    fn apply_message(
        &mut self,
        message: SourceMessage,
        events: &mut Vec<ContainerEvent>,
        outputs: &mut Vec<Owned>,
    ) -> Result<(), AgentError> {
        match message {
            SourceMessage::Events(batch) => self.tracker.apply(&batch, events),
            SourceMessage::Resync(present) => self.tracker.resync(&present, events),
            SourceMessage::Mirror(batch) => {
                self.lifecycle.on_mirror(&batch);
                outputs.push(Owned::Mirror(batch));
            }
            SourceMessage::Process(batch) => {
                // Membership changes made by this turn's cgroup events first (an exec may follow a mkdir).
                let changes = self.tracker.take_changes();
                if !changes.is_empty() {
                    self.lifecycle.on_membership(&changes);
                    outputs.push(Owned::Membership(changes));
                }
                let mut started = Vec::new();
                self.lifecycle.on_process(&mut Cx::new(self.tracker.tracker()), batch, &mut started);
                if !started.is_empty() {
                    outputs.push(Owned::Events(started));
                }
            }
            SourceMessage::ScanComplete => {
                // Whatever the scan made goes out before the scan is called complete.
                let taken = std::mem::take(events);
                self.through_transforms(taken, outputs);
                outputs.push(Owned::ScanComplete);
            }
            SourceMessage::Hook(message) => {
                let start = match &*message {
                    HookMessage::Started { id, init_pid, .. } if self.join.is_hooked(id) => {
                        Some((id.clone(), *init_pid))
                    }
                    _ => None,
                };
                self.join.on_hook(&mut Cx::new(self.tracker.tracker()), *message, events);
                if let Some((id, init_pid)) = start {
                    let start =
                        Start { init_pid, exe: None, argv0: None, kernel_time: None, source: StartSource::Hook };
                    let mut started = Vec::new();
                    self.lifecycle.on_start(&mut Cx::new(self.tracker.tracker()), &id, start, &mut started);
                    if !started.is_empty() {
                        outputs.push(Owned::Events(started));
                    }
                }
            }
            SourceMessage::Ended { source, why } => return self.source_ended(source, why),
        }
        Ok(())
    }

    /// The kernel source ended: `auto` falls back from eBPF to inotify; an
    /// explicit source (or inotify itself) stops the agent with the reason.
    fn source_ended(&mut self, source: &'static str, why: String) -> Result<(), AgentError> {
        if let Some(old) = self.kernel.take() {
            let _ = old.stop();
        }
        if self.choice == SourceChoice::Auto && source == "ebpf" {
            warn!("the eBPF source ended ({why}): falling back to inotify");
            self.metrics.source_fallback();
            let running = kernel::spawn_fallback(&self.tree, self.tx.clone())?;
            info!(root = %self.tree.start.display(), "source: inotify (fallback)");
            self.kernel = Some(running);
            return Ok(());
        }
        Err(AgentError::SourceEnded { name: source, why })
    }
}

/// An output kept until the turn's end.
enum Owned {
    Events(Vec<ContainerEvent>),
    Membership(Vec<ctwatch::MembershipChange>),
    Mirror(Vec<ctwatch::sources::CgroupEvent>),
    ScanComplete,
}

impl Owned {
    fn as_output(&self) -> Output<'_> {
        match self {
            Owned::Events(e) => Output::Events(e),
            Owned::Membership(m) => Output::Membership(m),
            Owned::Mirror(m) => Output::Mirror(m),
            Owned::ScanComplete => Output::ScanComplete,
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

/// The memory controller's hierarchy, for OOM counters: `(mount point, is v2)`
/// (the v1 `memory` hierarchy where there is one, else the unified one).
fn memory_hierarchy() -> Option<(PathBuf, bool)> {
    let hierarchies = cgroupfs::mounted_hierarchies().ok()?;
    let v1 = hierarchies.iter().find(|h| h.version == CgroupVersion::V1 && h.controllers.iter().any(|c| c == "memory"));
    let v2 = hierarchies.iter().find(|h| h.version == CgroupVersion::V2);
    v1.map(|h| (h.mount_point.clone(), false)).or_else(|| v2.map(|h| (h.mount_point.clone(), true)))
}

fn open_containers_map(pin: &PinConfig, mirror_root: Option<PathBuf>) -> Option<ContainersMap> {
    match ContainersMap::open(&pin.path, pin.max_entries, pin.keep_on_exit, mirror_root) {
        Ok(map) => Some(map),
        Err(e) => {
            warn!("no pinned map of container cgroups: {e} (pass --no-pin to silence this)");
            None
        }
    }
}
