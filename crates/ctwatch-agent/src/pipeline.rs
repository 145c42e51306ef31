//! The running pipeline: a kernel source thread feeds the tracker; creates
//! wait in the enrichment gate for their runtime's answer (or the deadline);
//! what is ready is published to the hub, where subscribers take it.
//!
//! ```text
//! kernel source thread ──SourceMessage──▶ tracker ──▶ gate ◀── enrichment answers
//! runtime hook threads ──┘ (precreate,       │          │
//!                           init PID, exit) store        ▼
//!                                                  hub ──▶ subscribers (CLI, gRPC, Rust code)
//! ```
//!
//! The hook's precreate events go straight to the hub; what it learns (bundle,
//! OCI config, init PID) is attached to the same container's later events.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use ctwatch::cgroupfs::{self, CgroupVersion, Hierarchy};
use ctwatch::hook::{HookInfo, HookMessage};
use ctwatch::sources::inotify::{InotifyError, InotifySource};
use ctwatch::sources::{scan, Origin, SourceMessage};
use ctwatch::state_dirs::HostStateDirs;
use ctwatch::{ContainerEvent, ContainerState, EventKind, SharedStore, Store, Tracker};
use ctwatch_ebpf::{ContainersMap, EbpfConfig, EbpfSource, EbpfStats, DEFAULT_RING_BUFFER_BYTES};
use ctwatch_enrich::{EnrichConfig, EnrichResult, Enrichment, Gate};
use ctwatch_hook::{Hook, HookConfig, HookError};
use thiserror::Error;
use tracing::{info, warn};

use crate::datasource::{DataSource, HostView};
use crate::metrics::Metrics;

/// How long the loop waits when nothing is due (expiry of removed containers).
const IDLE_TICK: Duration = Duration::from_millis(250);
/// How long a hooked container's create may wait for its runtime to write the init PID.
const INIT_PID_WAIT: Duration = Duration::from_secs(1);

/// Which kernel source to read cgroup changes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceChoice {
    /// eBPF when the kernel and privileges allow it, else inotify.
    #[default]
    Auto,
    /// eBPF only (fail if it cannot load).
    Ebpf,
    /// inotify only.
    Inotify,
    /// No kernel source: the runtime hook alone (a scan at start, then what
    /// the hook sees; containers made without a hooked runtime are missed).
    HookOnly,
}

/// The cgroup tree the agent scans and follows.
#[derive(Debug, Clone)]
pub struct WatchedTree {
    /// The hierarchy it is in.
    pub hierarchy: Hierarchy,
    /// The directory to follow (the mount point, or a directory inside it).
    pub start: PathBuf,
}

/// The pinned map of container cgroups for other eBPF programs.
#[derive(Debug, Clone)]
pub struct PinConfig {
    /// Directory on bpffs.
    pub path: PathBuf,
    /// Entries at most.
    pub max_entries: u32,
    /// Leave it pinned when the agent stops.
    pub keep_on_exit: bool,
}

/// How the agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// What to watch.
    pub tree: WatchedTree,
    /// Which kernel source.
    pub source: SourceChoice,
    /// eBPF ring buffer size in bytes.
    pub ring_buffer_bytes: u32,
    /// The pinned map, or `None` for none.
    pub pin: Option<PinConfig>,
    /// How long removed containers stay readable.
    pub grace: Duration,
    /// Runtime enrichment, or `None` for none.
    pub enrich: Option<EnrichConfig>,
    /// The runtimes' state directories (confirm ambiguous cgroup names).
    pub state_dirs: HostStateDirs,
    /// The proc mount (normally `/proc`).
    pub proc_root: PathBuf,
    /// The runtime hook, or `None` for none.
    pub hook: Option<HookConfig>,
    /// Fail when the hook cannot start (else it is used when allowed, and a
    /// warning says why not). Always true with [`SourceChoice::HookOnly`].
    pub hook_required: bool,
}

impl AgentConfig {
    /// Defaults for following `tree`: auto source, no pinned map, 5 s grace, no enrichment.
    pub fn new(tree: WatchedTree) -> Self {
        AgentConfig {
            tree,
            source: SourceChoice::Auto,
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            pin: None,
            grace: ctwatch::store::DEFAULT_GRACE,
            enrich: None,
            state_dirs: HostStateDirs::default(),
            proc_root: PathBuf::from("/proc"),
            hook: None,
            hook_required: false,
        }
    }

    /// The host's default hierarchy, whole.
    pub fn for_host() -> Result<Self, AgentError> {
        let hierarchies = cgroupfs::mounted_hierarchies().map_err(|e| AgentError::Cgroups(e.to_string()))?;
        let hierarchy = cgroupfs::default_hierarchy(&hierarchies)
            .cloned()
            .ok_or_else(|| AgentError::Cgroups("no cgroup hierarchy is mounted".into()))?;
        Ok(AgentConfig::new(WatchedTree { start: hierarchy.mount_point.clone(), hierarchy }))
    }
}

/// Why the agent could not start or stopped.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The cgroup hierarchies could not be read.
    #[error("cgroups: {0}")]
    Cgroups(String),
    /// `SourceChoice::Ebpf` was asked for and cannot load.
    #[error("the eBPF source cannot load: {0}")]
    Ebpf(String),
    /// The inotify source could not start.
    #[error(transparent)]
    Inotify(#[from] InotifyError),
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
    /// A thread panicked (a bug).
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
}

/// A running agent. Dropping it without [`Agent::stop`] and [`Agent::join`] leaves it running.
pub struct Agent {
    data_source: DataSource,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<(), AgentError>>>,
}

/// The kernel source picked for this run.
enum Source {
    Ebpf(Box<EbpfSource>),
    Inotify(Box<InotifySource>),
    /// A scan at start only (the hook reports the rest).
    ScanOnly,
}

impl Agent {
    /// Loads the kernel source and starts the pipeline: the scan at start,
    /// then live events, published to the data source's subscribers.
    pub fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        let mirror = mirror_hierarchy(&config.tree);
        let no_pin = config.pin.is_none();
        let source = choose_source(&config, if no_pin { None } else { mirror.as_ref().map(|(id, _)| *id) })?;
        let containers_map = config.pin.as_ref().and_then(|pin| open_containers_map(pin, mirror.map(|(_, r)| r)));
        let metrics = Arc::new(Metrics::new());
        let store = SharedStore::new(Store::new(config.grace));
        let host = HostView { hierarchy: config.tree.hierarchy.clone(), proc_root: config.proc_root.clone() };
        let data_source = DataSource::new(store.clone(), host, metrics.clone());
        let mut tracker = Tracker::new(store, Box::new(config.state_dirs.clone()));
        if let Some(map) = &containers_map {
            tracker.add_observer(map.observer());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::unbounded();
        let ebpf_stats = match &source {
            Source::Ebpf(s) => Some(s.stats()),
            Source::Inotify(_) | Source::ScanOnly => None,
        };
        let hook_only = matches!(source, Source::ScanOnly);
        let hook = start_hook(&config, hook_only, tx.clone())?;
        if let Some(hook) = &hook {
            metrics.follow_hook(hook.stats());
        }
        let source_thread = spawn_source(source, &config.tree, tx, stop.clone())?;
        let (enrichment, enriched_rx) = match config.enrich.clone() {
            Some(c) => {
                let (tx, rx) = crossbeam_channel::unbounded();
                let enrichment =
                    Enrichment::start(c, tx).map_err(|source| AgentError::Io { what: "enrichment", source })?;
                (Some(enrichment), rx)
            }
            // Never ready (a dropped sender would make the loop spin on "disconnected").
            None => (None, crossbeam_channel::never()),
        };
        let gate = Gate::new(config.enrich.as_ref().map_or(Duration::ZERO, |c| c.deadline));
        let pipeline = Pipeline {
            tracker,
            containers_map,
            data_source: data_source.clone(),
            metrics,
            enrichment,
            gate,
            submitted: HashMap::new(),
            ebpf_stats,
            dropped_seen: 0,
            hook,
            hook_only,
            hooked: HashMap::new(),
            hooked_cgroup: HashMap::new(),
            awaiting_pid: Vec::new(),
        };
        let thread_stop = stop.clone();
        let thread = thread::Builder::new()
            .name("tracker".into())
            .spawn(move || pipeline.run(rx, enriched_rx, source_thread, thread_stop))
            .map_err(|source| AgentError::Io { what: "cannot start the tracker thread", source })?;
        Ok(Agent { data_source, stop, thread: Some(thread) })
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
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(AgentError::Panicked("tracker")),
            None => Ok(()),
        }
    }
}

struct Pipeline {
    tracker: Tracker,
    containers_map: Option<ContainersMap>,
    data_source: DataSource,
    metrics: Arc<Metrics>,
    enrichment: Option<Enrichment>,
    gate: Gate,
    /// When each container's enrichment was asked for (for the latency histogram).
    submitted: HashMap<(String, u64), Instant>,
    ebpf_stats: Option<Arc<EbpfStats>>,
    dropped_seen: u64,
    /// The runtime hook; dropping it unmarks the runtime binaries.
    hook: Option<Hook>,
    /// The hook is the only live source: its init start/exit stand for cgroup mkdir/rmdir.
    hook_only: bool,
    /// What the hook learned from trusted callers, by container ID, until the container is removed.
    hooked: HashMap<String, Arc<HookInfo>>,
    /// The cgroup (ID) each hooked container's init was found in: findings go
    /// only to events of that cgroup, whatever ID a runtime was given.
    hooked_cgroup: HashMap<String, u64>,
    /// Creates of hooked containers waiting for the init PID, with when they go out regardless.
    awaiting_pid: Vec<(Instant, ContainerEvent)>,
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

impl Pipeline {
    fn run(
        mut self,
        rx: Receiver<SourceMessage>,
        enriched_rx: Receiver<EnrichResult>,
        source_thread: thread::JoinHandle<io::Result<()>>,
        stop: Arc<AtomicBool>,
    ) -> Result<(), AgentError> {
        // Even if this thread panics, subscribers see the end instead of waiting forever.
        let _closer = CloseOnExit { data_source: self.data_source.clone(), stop: stop.clone() };
        let mut events = Vec::new();
        let mut ready = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let next_due = self.gate.next_due().into_iter().chain(self.awaiting_pid.iter().map(|(due, _)| *due)).min();
            let wait = next_due.map_or(IDLE_TICK, |due| due.saturating_duration_since(now).min(IDLE_TICK));
            let mut source_done = false;
            crossbeam_channel::select! {
                recv(rx) -> message => {
                    let Ok(message) = message else { break };
                    // Take everything already queued, then publish once.
                    let mut next = Some(message);
                    while let Some(message) = next {
                        self.apply_message(message, &mut events);
                        next = match rx.try_recv() {
                            Ok(message) => Some(message),
                            Err(crossbeam_channel::TryRecvError::Empty) => None,
                            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                                source_done = true;
                                None
                            }
                        };
                    }
                    self.pass_through_gate(&mut events, &mut ready);
                },
                recv(enriched_rx) -> result => {
                    if let Ok(result) = result {
                        self.apply_enrichment(result, &mut ready);
                    }
                },
                default(wait) => {
                    self.tracker.expire();
                },
            }
            self.gate.expire(Instant::now(), &mut ready);
            self.publish(&mut ready);
            if source_done {
                break;
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
                "runtime hook stopping; unmarking the runtime binaries"
            );
        }
        self.data_source.hub().close();
        drop(self); // unpins the map unless kept
        match source_thread.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(AgentError::Io { what: "the cgroup source failed", source }),
            Err(_) => Err(AgentError::Panicked("cgroup source")),
        }
    }

    fn publish(&mut self, ready: &mut Vec<ContainerEvent>) {
        if let Some(stats) = &self.ebpf_stats {
            let dropped = stats.dropped.load(Ordering::Relaxed);
            if dropped > self.dropped_seen {
                self.metrics.ring_buffer_dropped(dropped - self.dropped_seen);
                self.dropped_seen = dropped;
            }
        }
        if !self.hooked.is_empty() || !self.awaiting_pid.is_empty() {
            self.attach_hook_info(ready);
        }
        if ready.is_empty() {
            return;
        }
        for event in ready.iter().filter(|e| e.kind == EventKind::ContainerRemove) {
            self.submitted.remove(&(event.container.id.clone(), event.cgroup_id));
        }
        self.data_source.hub().publish(ready);
        ready.clear();
    }

    /// Gives events of hooked containers the hook's findings. A create whose
    /// runtime has not written the init PID yet waits for it (at most
    /// [`INIT_PID_WAIT`]), so the create carries it; a later event about the
    /// same container releases it first, keeping the order.
    fn attach_hook_info(&mut self, ready: &mut Vec<ContainerEvent>) {
        let now = Instant::now();
        let mut out = Vec::with_capacity(ready.len());
        let hooked = &self.hooked;
        let waiting_over = |(due, e): &(Instant, ContainerEvent)| {
            *due <= now || hooked.get(&e.container.id).is_none_or(|h| h.init_pid.is_some())
        };
        let (released, still): (Vec<_>, Vec<_>) = self.awaiting_pid.drain(..).partition(waiting_over);
        self.awaiting_pid = still;
        out.extend(released.into_iter().map(|(_, e)| e));
        for event in ready.drain(..) {
            let id = &event.container.id;
            if let Some(i) = self.awaiting_pid.iter().position(|(_, e)| e.container.id == *id) {
                out.push(self.awaiting_pid.remove(i).1);
            }
            let pending_pid = self.hooked.get(id).is_some_and(|h| h.init_pid.is_none());
            if event.kind == EventKind::ContainerCreate && pending_pid {
                self.awaiting_pid.push((now + INIT_PID_WAIT, event));
            } else {
                out.push(event);
            }
        }
        for event in out.iter_mut().filter(|e| e.container.hook.is_none()) {
            let id = &event.container.id.clone();
            let same_cgroup = self.hooked_cgroup.get(id).is_none_or(|c| *c == event.cgroup_id);
            if let (true, Some(hook)) = (same_cgroup, self.hooked.get(id)) {
                // Into the store (get, ls, List and Watch's current state show it) and the event.
                let stored = self.tracker.update_container(id, event.cgroup_id, |c| c.set_hook(hook.clone()));
                event.container = stored.unwrap_or_else(|| {
                    let mut c = (*event.container).clone();
                    c.set_hook(hook.clone());
                    Arc::new(c)
                });
            }
            if event.kind == EventKind::ContainerRemove && same_cgroup {
                self.hooked.remove(id);
                self.hooked_cgroup.remove(id);
            }
        }
        *ready = out;
    }

    /// Applies one message from the source to the tracker (and the pinned map).
    fn apply_message(&mut self, message: SourceMessage, events: &mut Vec<ContainerEvent>) {
        match message {
            SourceMessage::Events(batch) => self.tracker.apply(&batch, events),
            SourceMessage::Resync(present) => {
                self.metrics.resync();
                self.tracker.reconcile(&present, events)
            }
            SourceMessage::Mirror(batch) => {
                if let Some(map) = &self.containers_map {
                    map.apply_mirror(&batch);
                }
            }
            SourceMessage::ScanComplete => {
                if let Some(map) = &self.containers_map {
                    map.prune_stale();
                }
                info!(containers = self.tracker.store().read().len(), "scan at start complete");
                self.data_source.set_scanned();
            }
            SourceMessage::Hook(message) => self.apply_hook(*message, events),
        }
    }

    /// What the hook saw: a precreate goes out as it is (with a policy
    /// violation after it when a rule matched); an init's start and exit are
    /// remembered, and stand for the cgroup's mkdir and rmdir when the hook is
    /// the only source.
    fn apply_hook(&mut self, message: HookMessage, events: &mut Vec<ContainerEvent>) {
        match message {
            HookMessage::Precreate { container, info, time } => {
                let id = container.id.clone();
                self.metrics.hook_create_answered(Duration::from_micros(info.answer_us));
                let info = Arc::new(*info);
                let violation = info.trusted && info.verdict.is_some();
                let mut container = container;
                container.hook = Some(info.clone());
                let event = ContainerEvent {
                    time,
                    kind: EventKind::ContainerPrecreate,
                    cgroup_id: 0,
                    container: Arc::new(container),
                    kernel_time: None,
                    enriched: None,
                };
                events.push(event.clone());
                if violation {
                    events.push(ContainerEvent { kind: EventKind::ContainerPolicyViolation, ..event });
                }
                // An untrusted caller's findings are its own event and nothing
                // more: never kept, so never attached to a container's events.
                if info.trusted && !info.verdict.as_ref().is_some_and(|v| v.denied) {
                    self.hooked_cgroup.remove(&id);
                    self.hooked.insert(id, info);
                }
            }
            HookMessage::Started { id, init_pid, cgroup } => {
                if let Some(info) = self.hooked.get_mut(&id) {
                    Arc::make_mut(info).init_pid = Some(init_pid);
                    if let Some(c) = &cgroup {
                        self.hooked_cgroup.insert(id.clone(), c.cgroup_id);
                    }
                    // The store's copy too, when the create went out already.
                    let info = info.clone();
                    let cgroup_id = cgroup.as_ref().map(|c| c.cgroup_id);
                    let known = self.tracker.store().read().get(&id).map(|c| (c.cgroup_id, c.hook.is_some()));
                    if let Some((stored_cgroup, true)) = known {
                        if cgroup_id.is_none_or(|c| c == stored_cgroup) {
                            self.tracker.update_container(&id, stored_cgroup, |c| c.set_hook(info));
                        }
                    }
                }
                if let (true, Some(cgroup)) = (self.hook_only, cgroup) {
                    self.tracker.apply(&[cgroup], events);
                }
            }
            HookMessage::Exited { cgroup, .. } => {
                if let (true, Some(cgroup)) = (self.hook_only, cgroup) {
                    self.tracker.apply(&[cgroup], events);
                }
            }
            HookMessage::Failed { id } => {
                self.hooked.remove(&id);
                self.hooked_cgroup.remove(&id);
            }
        }
    }

    /// With enrichment on, creates wait in the gate (and their enrichment is
    /// asked for); everything else, and all events without enrichment, is ready.
    fn pass_through_gate(&mut self, events: &mut Vec<ContainerEvent>, ready: &mut Vec<ContainerEvent>) {
        let Some(enrichment) = &self.enrichment else {
            ready.append(events);
            return;
        };
        let now = Instant::now();
        for event in events.drain(..) {
            let container = event.container.clone();
            if self.gate.push(event, now, ready) {
                enrichment.submit(&container);
                self.submitted.insert((container.id.clone(), container.cgroup_id), now);
            }
        }
    }

    /// Puts an enrichment answer in the store, releases the create it held, or,
    /// when the create went out already and the answer changed the record,
    /// emits a `container_update`.
    fn apply_enrichment(&mut self, result: EnrichResult, ready: &mut Vec<ContainerEvent>) {
        let store = self.tracker.store().clone();
        let before = store.read().get(&result.container_id).cloned();
        let updated =
            self.tracker.update_container(&result.container_id, result.cgroup_id, |c| result.metadata.apply_to(c));
        let (id, cgroup_id) = (result.container_id.as_str(), result.cgroup_id);
        if let Some(c) = &updated {
            let key = (result.container_id.clone(), cgroup_id);
            if result.complete {
                if let Some(asked) = self.submitted.remove(&key) {
                    self.metrics.enrichment_done(c.runtime, asked.elapsed());
                }
            } else {
                self.metrics.enrichment_failed(c.runtime);
            }
        }
        if self.gate.resolve(id, cgroup_id, updated.clone(), result.complete, ready) {
            return;
        }
        let Some(container) = updated else { return };
        let changed = before.is_some_and(|b| *b != *container);
        if changed && container.state != ContainerState::Removed {
            ready.push(ContainerEvent {
                time: SystemTime::now(),
                kind: EventKind::ContainerUpdate,
                cgroup_id: container.cgroup_id,
                container,
                kernel_time: None,
                enriched: Some(result.complete),
            });
        }
    }
}

/// Starts the runtime hook when configured: a failure is an error when it is
/// required (or the only source), else a warning and no hook.
fn start_hook(config: &AgentConfig, hook_only: bool, tx: Sender<SourceMessage>) -> Result<Option<Hook>, AgentError> {
    let hook_config = match config.hook.clone() {
        Some(hook_config) => hook_config,
        // The hook as the only source needs no more than its defaults.
        None if hook_only => HookConfig::default(),
        None => return Ok(None),
    };
    let hook_config = HookConfig {
        // Always: the init's cgroup is what the hook's findings are joined on.
        hierarchy: Some(config.tree.hierarchy.clone()),
        follow_exits: hook_only,
        proc_root: config.proc_root.clone(),
        ..hook_config
    };
    match Hook::start(hook_config, tx) {
        Ok(hook) => {
            let names: Vec<String> = hook.marked().iter().map(|b| b.path.display().to_string()).collect();
            info!(binaries = %names.join(", "), "runtime hook on");
            Ok(Some(hook))
        }
        Err(e) if config.hook_required || hook_only => Err(AgentError::Hook(e)),
        Err(e) => {
            warn!("runtime hook off: {e} (pass --hook off to silence this)");
            Ok(None)
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

fn choose_source(config: &AgentConfig, mirror: Option<u32>) -> Result<Source, AgentError> {
    let tree = &config.tree;
    let inotify = || -> Result<Source, AgentError> {
        Ok(Source::Inotify(Box::new(InotifySource::new(&tree.hierarchy.mount_point, &tree.start)?)))
    };
    let ebpf = EbpfConfig {
        tracked_hierarchy: tree.hierarchy.hierarchy_id,
        mirror_hierarchy: mirror,
        ring_buffer_bytes: config.ring_buffer_bytes,
    };
    let root = tree.start.display();
    match config.source {
        SourceChoice::HookOnly => {
            info!(%root, "source: the runtime hook alone (--source hook), after a scan at start");
            Ok(Source::ScanOnly)
        }
        SourceChoice::Inotify => {
            info!(%root, "source: inotify (--source inotify)");
            inotify()
        }
        SourceChoice::Ebpf => {
            let source = EbpfSource::load(ebpf).map_err(|e| AgentError::Ebpf(e.to_string()))?;
            info!(%root, hierarchy_id = tree.hierarchy.hierarchy_id, "source: ebpf (--source ebpf)");
            Ok(Source::Ebpf(Box::new(source)))
        }
        SourceChoice::Auto => match EbpfSource::load(ebpf) {
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

fn open_containers_map(pin: &PinConfig, mirror_root: Option<PathBuf>) -> Option<ContainersMap> {
    match ContainersMap::open(&pin.path, pin.max_entries, pin.keep_on_exit, mirror_root) {
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
) -> Result<thread::JoinHandle<io::Result<()>>, AgentError> {
    let (mount_point, start) = (tree.hierarchy.mount_point.clone(), tree.start.clone());
    thread::Builder::new()
        .name("cgroup-source".into())
        .spawn(move || match source {
            Source::Ebpf(s) => s.run(&mount_point, &start, tx, stop),
            Source::Inotify(s) => s.run(tx, stop),
            // The scan, then nothing: the hook (which holds its own sender) reports the rest.
            Source::ScanOnly => {
                let found = scan::scan(&mount_point, &start, Origin::Existing);
                let _ = tx.send(SourceMessage::Events(found)).and_then(|()| tx.send(SourceMessage::ScanComplete));
                Ok(())
            }
        })
        .map_err(|source| AgentError::Io { what: "cannot start the source thread", source })
}
