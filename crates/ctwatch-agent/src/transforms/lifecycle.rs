//! The lifecycle: `container_start`, once per container, after its create;
//! how it ended, on its `container_remove`.
//!
//! A start is what a source says about the container's own process: its
//! init PID and, once that process has executed the entrypoint, the
//! executable and `argv[0]`. Sources (see [`StartSource`]):
//!
//! - the runtime hook's init PID: the start goes out once `/proc/<pid>` no
//!   longer shows the runtime's init (`runc:[2:INIT]` waits there between
//!   `runc create` and `runc start`); checked again every [`PROBE_EVERY`];
//! - without the hook's findings (hook off, or a runtime it does not hook):
//!   the container's init found in its cgroup (`cgroup.procs`, the process
//!   that is PID 1 of its namespace), then read from `/proc` as above;
//! - the eBPF process events: the container's first exec (kernel time).
//!   When they are loaded ([`Lifecycle::with_process_events`]), a start
//!   from the hook or the cgroup waits [`EBPF_GRACE`] more for the kernel's
//!   exec, which replaces it: one start per container, the kernel's when
//!   there is one.
//!
//! A start seen before its container's create waits for the create (at most
//! [`MAX_PENDING`] containers, overflow counted as `lifecycle`); a container
//! that was running before ctwatch (`existing_container`) gets none; a create
//! that failed (no init) gets none. The start's findings go into the store,
//! so the remove and `get` carry them too.
//!
//! A remove carries how the container ended: the OOM kills counted in its
//! memory cgroup while it lived (`memory.events` `oom_kill` on v2, v1
//! `memory.oom_control`; watched from its create, or from the scan at start),
//! and, with enrichment on, what its runtime says of the exit
//! ([`ctwatch_enrich::Enrichment::submit_exit`]: the exit code or signal,
//! the runtime's OOM flag, start and end times). The remove is held for
//! that answer at most [`EXIT_HOLD`]; what is not known by then is left out.
//!
//! With the eBPF process events, the kernel's word wins for the init: the
//! exit of the container's init (the process of its start, or of its cgroup
//! for a container running before ctwatch) gives `exit_code` or
//! `exit_signal` and `finished_at` (kernel time), over the runtime's answer;
//! an OOM kill of the init sets `oom_killed`, and every OOM kill in the
//! container's cgroups counts in `oom_kills` (the larger of this count and
//! the memory cgroup's counter goes out: both count the same kills). A remove
//! whose init's exit has not arrived yet is held for it (at most
//! [`EXIT_HOLD`]). Process events are matched to containers by cgroup ID (the
//! tracked hierarchy's, or on a hybrid host the unified one's, see
//! [`CgroupIndex`]) and exits by init PID.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use ctwatch::sources::{CgroupChange, CgroupEvent, ProcessMessage};
use ctwatch::{Container, ContainerEvent, EventKind, MembershipChange};
use ctwatch_enrich::oom::{MemoryCgroup, OomWatcher};
use ctwatch_enrich::{Enrichment, ExitInfo};

use super::{Cx, Transform};
use crate::metrics::Metrics;

/// How often an init that has not executed its entrypoint yet is looked at again.
pub const PROBE_EVERY: Duration = Duration::from_millis(20);

/// How long a container the hook did not see is looked for a process in its cgroup.
pub const CGROUP_LOOK_FOR: Duration = Duration::from_secs(30);

/// The most containers whose start waits (for their create or their exec) at once.
pub const MAX_PENDING: usize = 4096;

/// How long the runtime is asked again for an exit it has not recorded yet.
pub const EXIT_ASK: Duration = Duration::from_millis(1500);

/// The longest a remove is held for its runtime's word on the exit.
pub const EXIT_HOLD: Duration = Duration::from_secs(2);

/// The most removes held at once (beyond this a remove goes out at once; counted as `exit_hold`).
pub const MAX_HELD: usize = 4096;

/// With the eBPF process events, how much longer a start from the hook or the
/// cgroup waits for the kernel's exec (which replaces it).
pub const EBPF_GRACE: Duration = Duration::from_millis(300);

/// The most containers whose init PIDs, kernel exits or OOM kill counts are kept at once.
pub const MAX_TRACKED: usize = 65_536;

/// The longest `argv[0]` or executable path kept, in bytes.
const MAX_PATH: usize = 4096;

/// Where a start came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartSource {
    /// The runtime hook's init PID, the process read from `/proc`.
    Hook,
    /// The container's cgroup (`cgroup.procs`), the process read from `/proc`.
    Cgroup,
    /// The eBPF process events (the first exec in the container's cgroup).
    Ebpf,
}

/// What a source knows of a container's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The init PID (host PID namespace).
    pub init_pid: u32,
    /// The executable, when known.
    pub exe: Option<String>,
    /// Its `argv[0]`, when known.
    pub argv0: Option<String>,
    /// When the kernel ran the exec, if the source knows (eBPF).
    pub kernel_time: Option<SystemTime>,
    /// Where it came from.
    pub source: StartSource,
}

/// Who says how a container ended: its runtime ([`Enrichment`]), or a fake in tests.
pub trait ExitAsker: Send {
    /// Asks, in the background, how `container` ended; `reply` is called once.
    fn ask(&self, container: &Container, wait: Duration, reply: Box<dyn FnOnce(ExitInfo) + Send>);
}

impl ExitAsker for Arc<Enrichment> {
    fn ask(&self, c: &Container, wait: Duration, reply: Box<dyn FnOnce(ExitInfo) + Send>) {
        self.submit_exit(&c.id, c.runtime, &c.cgroup_path, !c.pod.uid.is_empty(), wait, reply);
    }
}

/// A runtime's answer on how a container ended, back to the agent's loop.
#[derive(Debug, Clone)]
pub struct ExitReply {
    /// The container.
    pub id: String,
    /// Its root cgroup (the incarnation).
    pub cgroup_id: u64,
    /// What the runtime said.
    pub info: ExitInfo,
}

/// Where containers' exits are asked and their OOM counters watched.
pub struct ExitSources {
    /// The runtime's word on exits (enrichment on), with where the answers go.
    pub asker: Option<(Box<dyn ExitAsker>, Sender<ExitReply>)>,
    /// The OOM counter watcher, when it could start.
    pub oom: Option<OomWatcher>,
    /// The memory controller's hierarchy: `(mount point, is v2)`.
    pub memory: Option<(PathBuf, bool)>,
}

/// A start still waiting.
struct Pending {
    start: Start,
    /// Whether the init has executed the entrypoint (else it is probed again).
    execed: bool,
    /// Not before then (a start from `/proc` waiting for the kernel's exec).
    not_before: Option<Instant>,
}

/// What is known of a container whose create went out.
struct Live {
    cgroup_id: u64,
    started: bool,
}

/// What the kernel said of the end of a container's init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KernelExit {
    exit_code: Option<i32>,
    exit_signal: Option<i32>,
    finished_at_ns: u64,
}

/// A remove held for what is still to come about its end.
struct Held {
    due: Instant,
    event: ContainerEvent,
    /// The runtime's answer is awaited.
    runtime: bool,
    /// The kernel's exit of the init is awaited.
    kernel: bool,
}

/// Container cgroups by ID, to match the eBPF process events (which carry
/// the task's cgroup in the unified hierarchy) to containers: the tracked
/// hierarchy's IDs from the tracker's membership changes, and on a hybrid
/// host the unified hierarchy's IDs of the same paths (from the mirror
/// source's mkdirs, or read from the unified hierarchy when the container's
/// cgroup is added).
#[derive(Default)]
pub struct CgroupIndex {
    /// The unified hierarchy's mount point on a hybrid host.
    mirror_root: Option<PathBuf>,
    /// Cgroup ID (tracked or unified) to container ID.
    ids: HashMap<u64, String>,
    /// Container cgroup paths: the container and the cgroup's unified ID, if known.
    paths: HashMap<String, (String, Option<u64>)>,
    /// Unified mkdirs not yet matched to a container cgroup.
    pending_mirrors: HashMap<String, u64>,
}

impl CgroupIndex {
    /// An index that, on a hybrid host, also reads unified IDs under `mirror_root`.
    pub fn new(mirror_root: Option<PathBuf>) -> Self {
        CgroupIndex { mirror_root, ..CgroupIndex::default() }
    }

    /// The tracker's membership changes.
    pub fn apply(&mut self, changes: &[MembershipChange]) {
        for change in changes {
            match change {
                MembershipChange::Added { cgroup_id, path, container, .. } => {
                    if self.paths.len() >= MAX_TRACKED {
                        continue;
                    }
                    if *cgroup_id != 0 {
                        self.ids.insert(*cgroup_id, container.id.clone());
                    }
                    let mirror = self.pending_mirrors.remove(path).or_else(|| {
                        let root = self.mirror_root.as_ref()?;
                        let dir = ctwatch::cgroupfs::absolute_path(root, path);
                        std::os::unix::fs::MetadataExt::ino(&fs::symlink_metadata(dir).ok()?).into()
                    });
                    if let Some(m) = mirror {
                        self.ids.insert(m, container.id.clone());
                    }
                    self.paths.insert(path.clone(), (container.id.clone(), mirror));
                }
                MembershipChange::Removed { cgroup_id, path } => {
                    self.ids.remove(cgroup_id);
                    if let Some((_, Some(m))) = self.paths.remove(path) {
                        self.ids.remove(&m);
                    }
                }
            }
        }
    }

    /// Changes in the unified hierarchy of a hybrid host.
    pub fn apply_mirror(&mut self, events: &[CgroupEvent]) {
        for e in events {
            match e.change {
                CgroupChange::Mkdir => match self.paths.get_mut(&e.path) {
                    Some((id, mirror)) => {
                        *mirror = Some(e.cgroup_id);
                        self.ids.insert(e.cgroup_id, id.clone());
                    }
                    None => {
                        if self.pending_mirrors.len() >= MAX_PENDING {
                            self.pending_mirrors.clear();
                        }
                        self.pending_mirrors.insert(e.path.clone(), e.cgroup_id);
                    }
                },
                CgroupChange::Rmdir => {
                    self.pending_mirrors.remove(&e.path);
                }
            }
        }
    }

    /// The container a cgroup ID (tracked or unified) belongs to.
    pub fn get(&self, cgroup_id: u64) -> Option<&str> {
        self.ids.get(&cgroup_id).map(String::as_str)
    }
}

/// The lifecycle transform.
pub struct Lifecycle {
    proc_root: PathBuf,
    live: HashMap<String, Live>,
    pending: HashMap<String, Pending>,
    next_probe: Option<Instant>,
    exits: ExitSources,
    /// The watched hierarchy's mount point, to find the init of containers the hook did not see.
    cgroup_root: Option<PathBuf>,
    /// Containers the hook did not see whose init is looked for in their cgroup.
    unhooked: HashMap<String, (PathBuf, Instant)>,
    /// Removes waiting for their runtime's (or the kernel's) word, with when they go out regardless.
    held: Vec<Held>,
    /// The eBPF process events are loaded.
    process_events: bool,
    /// Container cgroups by ID, for the process events.
    index: CgroupIndex,
    /// Containers' init PIDs (once known, until the init exits or the remove), both ways.
    inits: HashMap<u32, String>,
    init_of: HashMap<String, u32>,
    /// The kernel's word on containers' inits' ends, until their removes go out.
    kernel_exits: HashMap<String, KernelExit>,
    /// OOM kills the kernel reported in each container, and whether its init was one, until its remove goes out.
    kernel_ooms: HashMap<String, (u64, bool)>,
    metrics: Arc<Metrics>,
}

impl Lifecycle {
    /// An empty lifecycle reading processes under `proc_root`.
    pub fn new(proc_root: PathBuf, metrics: Arc<Metrics>) -> Self {
        let exits = ExitSources { asker: None, oom: None, memory: None };
        Lifecycle::with_exits(proc_root, exits, metrics)
    }

    /// A lifecycle that also says how containers ended, from `exits`.
    pub fn with_exits(proc_root: PathBuf, exits: ExitSources, metrics: Arc<Metrics>) -> Self {
        Lifecycle {
            proc_root,
            live: HashMap::new(),
            pending: HashMap::new(),
            next_probe: None,
            exits,
            cgroup_root: None,
            unhooked: HashMap::new(),
            held: Vec::new(),
            process_events: false,
            index: CgroupIndex::default(),
            inits: HashMap::new(),
            init_of: HashMap::new(),
            kernel_exits: HashMap::new(),
            kernel_ooms: HashMap::new(),
            metrics,
        }
    }

    /// The eBPF process events are loaded: starts, exits and OOM kills also
    /// come from the kernel ([`Lifecycle::on_process`]); `mirror_root` is the
    /// unified hierarchy on a hybrid host.
    pub fn with_process_events(mut self, mirror_root: Option<PathBuf>) -> Self {
        self.process_events = true;
        self.index = CgroupIndex::new(mirror_root);
        self
    }

    /// The tracker's membership changes (to match process events to containers).
    pub fn on_membership(&mut self, changes: &[MembershipChange]) {
        if self.process_events {
            self.index.apply(changes);
        }
    }

    /// Changes in the unified hierarchy of a hybrid host (to match process events to containers).
    pub fn on_mirror(&mut self, events: &[CgroupEvent]) {
        if self.process_events {
            self.index.apply_mirror(events);
        }
    }

    /// What the kernel saw container processes do: a first exec is a start;
    /// the exit of a container's init says how it ended; OOM kills are counted.
    pub fn on_process(&mut self, cx: &mut Cx<'_>, messages: Vec<ProcessMessage>, out: &mut Vec<ContainerEvent>) {
        for message in messages {
            match message {
                ProcessMessage::Exec { cgroup_id, pid, time, exe, argv0 } => {
                    let Some(id) = self.index.get(cgroup_id).map(str::to_string) else { continue };
                    let nonempty = |s: String| (!s.is_empty()).then(|| bounded(s));
                    let start = Start {
                        init_pid: pid,
                        exe: nonempty(exe),
                        argv0: nonempty(argv0),
                        kernel_time: Some(time),
                        source: StartSource::Ebpf,
                    };
                    self.on_start(cx, &id, start, out);
                }
                ProcessMessage::Exit { pid, time, exit_code, exit_signal, .. } => {
                    let Some(id) = self.inits.remove(&pid) else { continue };
                    self.init_of.remove(&id);
                    if self.kernel_exits.len() >= MAX_TRACKED {
                        self.metrics.queue_overflow("lifecycle", 1);
                        continue;
                    }
                    let exit = KernelExit { exit_code, exit_signal, finished_at_ns: ns_since_epoch(time) };
                    self.kernel_exits.insert(id.clone(), exit);
                    self.update(cx, &id, |c| apply_kernel_exit(c, exit));
                    self.kernel_said(&id, out);
                }
                ProcessMessage::OomKill { cgroup_id, pid, .. } => {
                    let init = self.inits.get(&pid).cloned();
                    let Some(id) = init.clone().or_else(|| self.index.get(cgroup_id).map(str::to_string)) else {
                        continue;
                    };
                    if !self.kernel_ooms.contains_key(&id) && self.kernel_ooms.len() >= MAX_TRACKED {
                        self.metrics.queue_overflow("lifecycle", 1);
                        continue;
                    }
                    let seen = self.kernel_ooms.entry(id.clone()).or_insert((0, false));
                    *seen = (seen.0 + 1, seen.1 || init.is_some());
                    let seen = *seen;
                    self.update(cx, &id, |c| apply_kernel_ooms(c, seen));
                }
            }
        }
    }

    /// Updates container `id` in the store (its live incarnation) and in its held remove, if any.
    fn update(&mut self, cx: &mut Cx<'_>, id: &str, update: impl Fn(&mut Container)) {
        if let Some(live) = self.live.get(id) {
            cx.tracker.update_container(id, live.cgroup_id, &update);
        }
        if let Some(held) = self.held.iter_mut().find(|h| h.event.container.id == id) {
            let stored = cx.tracker.update_container(id, held.event.cgroup_id, &update);
            held.event.container = stored.unwrap_or_else(|| {
                let mut c = (*held.event.container).clone();
                update(&mut c);
                Arc::new(c)
            });
        }
    }

    /// The kernel's exit of `id`'s init came: its held remove goes out if nothing else is awaited.
    fn kernel_said(&mut self, id: &str, out: &mut Vec<ContainerEvent>) {
        if let Some(i) = self.held.iter().position(|h| h.event.container.id == id) {
            self.held[i].kernel = false;
            if !self.held[i].runtime {
                let held = self.held.remove(i);
                self.sent(&held.event.container.id);
                out.push(held.event);
            }
        }
    }

    /// `pid` is container `id`'s init (with the process events: its exit is looked for).
    fn set_init(&mut self, id: &str, pid: u32) {
        if !self.process_events {
            return;
        }
        if let Some(old) = self.init_of.remove(id) {
            self.inits.remove(&old);
        }
        if self.inits.len() >= MAX_TRACKED {
            self.metrics.queue_overflow("lifecycle", 1);
            return;
        }
        self.inits.insert(pid, id.to_string());
        self.init_of.insert(id.to_string(), pid);
    }

    /// A remove went out: what was kept for it goes.
    fn sent(&mut self, id: &str) {
        if let Some(pid) = self.init_of.remove(id) {
            self.inits.remove(&pid);
        }
        self.kernel_exits.remove(id);
        self.kernel_ooms.remove(id);
    }

    /// Finds the init of containers the hook did not see in their cgroup under `root` (the watched hierarchy).
    pub fn with_cgroup_root(mut self, root: PathBuf) -> Self {
        self.cgroup_root = Some(root);
        self
    }

    /// The runtime's answer on how a container ended: into the store and its held remove, which goes out.
    pub fn on_exit(&mut self, cx: &mut Cx<'_>, reply: ExitReply, out: &mut Vec<ContainerEvent>) {
        let Some(i) = self
            .held
            .iter()
            .position(|h| h.runtime && h.event.container.id == reply.id && h.event.cgroup_id == reply.cgroup_id)
        else {
            return;
        };
        let info = reply.info;
        let kernel = self.kernel_exits.get(&reply.id).copied();
        let update = |c: &mut Container| {
            apply_exit(c, info);
            if let Some(k) = kernel {
                apply_kernel_exit(c, k);
            }
        };
        let stored = cx.tracker.update_container(&reply.id, reply.cgroup_id, update);
        let held = &mut self.held[i];
        held.runtime = false;
        held.event.container = stored.unwrap_or_else(|| {
            let mut c = (*held.event.container).clone();
            update(&mut c);
            Arc::new(c)
        });
        if !held.kernel {
            let held = self.held.remove(i);
            self.sent(&held.event.container.id);
            out.push(held.event);
        }
    }

    /// How many removes are held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Starts watching a new container's OOM counter.
    fn watch_oom(&self, c: &Container) {
        let (Some(oom), Some((root, v2))) = (&self.exits.oom, &self.exits.memory) else { return };
        let dir = root.join(c.cgroup_path.trim_start_matches('/'));
        let cgroup = if *v2 { MemoryCgroup::V2(dir) } else { MemoryCgroup::V1(dir) };
        oom.watch(&oom_key(c), cgroup);
    }

    /// A remove: its OOM count and end time into the store; held for the
    /// runtime's word when enrichment is on, and for the kernel's exit of its
    /// init when the process events are loaded and it has not come yet.
    fn removed(&mut self, cx: &mut Cx<'_>, mut event: ContainerEvent, out: &mut Vec<ContainerEvent>) {
        let c = &event.container;
        // An init still known has not been seen exiting (kept until the remove goes out).
        let init = self.init_of.get(&c.id).copied();
        let kernel = self.kernel_exits.get(&c.id).copied();
        let ooms = self.kernel_ooms.get(&c.id).copied();
        let await_kernel = self.process_events && kernel.is_none() && init.is_some();
        let kills = self.exits.oom.as_ref().and_then(|oom| oom.finish(&oom_key(c)));
        let ended = event.kernel_time.unwrap_or(event.time);
        let finished = ended.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        let update = |c: &mut Container| {
            c.oom_kills = c.oom_kills.max(kills);
            if let Some(k) = kernel {
                apply_kernel_exit(c, k);
            }
            if let Some(seen) = ooms {
                apply_kernel_ooms(c, seen);
            }
            c.finished_at_ns.get_or_insert(finished);
        };
        let stored = cx.tracker.update_container(&c.id, event.cgroup_id, update);
        event.container = stored.unwrap_or_else(|| {
            let mut c = (*event.container).clone();
            update(&mut c);
            Arc::new(c)
        });
        if self.exits.asker.is_none() && !await_kernel {
            self.sent(&event.container.id);
            out.push(event);
            return;
        }
        if self.held.len() >= MAX_HELD {
            self.metrics.queue_overflow("exit_hold", 1);
            self.sent(&event.container.id);
            out.push(event);
            return;
        }
        if let Some((asker, tx)) = &self.exits.asker {
            let (tx, id, cgroup_id) = (tx.clone(), event.container.id.clone(), event.cgroup_id);
            let metrics = self.metrics.clone();
            asker.ask(
                &event.container,
                EXIT_ASK,
                Box::new(move |info| {
                    if tx.try_send(ExitReply { id, cgroup_id, info }).is_err() {
                        metrics.queue_overflow("exit_replies", 1);
                    }
                }),
            );
        }
        let runtime = self.exits.asker.is_some();
        self.held.push(Held { due: cx.now + EXIT_HOLD, event, runtime, kernel: await_kernel });
    }

    /// Releases the held remove of `id` (a later event about it goes after it).
    fn release(&mut self, id: &str, out: &mut Vec<ContainerEvent>) {
        if let Some(i) = self.held.iter().position(|h| h.event.container.id == id) {
            let held = self.held.remove(i);
            self.sent(id);
            out.push(held.event);
        }
    }

    /// A source's word on container `id`'s start; the `container_start`
    /// goes into `out` when it is due (else it waits).
    pub fn on_start(&mut self, cx: &mut Cx<'_>, id: &str, start: Start, out: &mut Vec<ContainerEvent>) {
        if self.live.get(id).is_some_and(|l| l.started) {
            return;
        }
        let mut pending = match self.pending.remove(id) {
            // eBPF's exec is better than the hook's or the cgroup's PID, which do not replace it.
            Some(p) if p.start.source == StartSource::Ebpf && start.source != StartSource::Ebpf => p,
            // A start from /proc keeps its wait for the kernel's exec.
            Some(p) if start.source != StartSource::Ebpf => Pending { execed: false, not_before: p.not_before, start },
            _ => Pending { execed: start.source == StartSource::Ebpf, not_before: None, start },
        };
        if !pending.execed {
            pending.execed = probe(&self.proc_root, &mut pending.start);
        }
        self.set_init(id, pending.start.init_pid);
        self.wait_for_kernel(cx, &mut pending);
        if self.due(cx, &pending) && self.live.contains_key(id) {
            self.emit(cx, id, pending.start, out);
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.metrics.queue_overflow("lifecycle", 1);
            return;
        }
        if !pending.execed || pending.not_before.is_some() {
            self.next_probe.get_or_insert(cx.now + PROBE_EVERY);
        }
        self.pending.insert(id.to_string(), pending);
    }

    /// With the process events, a start from `/proc` that is ready waits [`EBPF_GRACE`] for the kernel's exec.
    fn wait_for_kernel(&self, cx: &Cx<'_>, pending: &mut Pending) {
        if self.process_events && pending.execed && pending.start.source != StartSource::Ebpf {
            pending.not_before.get_or_insert(cx.now + EBPF_GRACE);
        }
    }

    /// Whether a pending start can go out now (its create permitting).
    fn due(&self, cx: &Cx<'_>, pending: &Pending) -> bool {
        pending.execed && pending.not_before.is_none_or(|t| t <= cx.now)
    }

    /// How many starts wait.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn emit(&mut self, cx: &mut Cx<'_>, id: &str, start: Start, out: &mut Vec<ContainerEvent>) {
        self.unhooked.remove(id);
        let Some(live) = self.live.get_mut(id) else { return };
        live.started = true;
        let cgroup_id = live.cgroup_id;
        self.set_init(id, start.init_pid);
        let at = start.kernel_time.unwrap_or(cx.wall);
        let started_at_ns = at.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        let Start { init_pid, exe, argv0, kernel_time, source: _ } = start;
        let stored = cx.tracker.update_container(id, cgroup_id, |c| {
            c.init_pid = Some(init_pid);
            c.start_exe = exe;
            c.start_argv0 = argv0;
            c.started_at_ns = Some(started_at_ns);
        });
        // Gone from the store already (removed and forgotten): nothing to say.
        let Some(container) = stored else { return };
        out.push(ContainerEvent {
            time: cx.wall,
            kind: EventKind::ContainerStart,
            cgroup_id,
            container,
            kernel_time,
            enriched: None,
            seq: 0,
            late: false,
        });
    }

    fn probe_pending(&mut self, cx: &mut Cx<'_>, out: &mut Vec<ContainerEvent>) {
        let found: Vec<(String, u32)> = self
            .unhooked
            .iter()
            .filter_map(|(id, (dir, _))| {
                ctwatch::proc::container_init_pid(&self.proc_root, dir).map(|pid| (id.clone(), pid))
            })
            .collect();
        let now = cx.now;
        self.unhooked.retain(|_, (_, since)| now.saturating_duration_since(*since) < CGROUP_LOOK_FOR);
        for (id, init_pid) in found {
            self.unhooked.remove(&id);
            let start = Start { init_pid, exe: None, argv0: None, kernel_time: None, source: StartSource::Cgroup };
            self.on_start(cx, &id, start, out);
        }
        let mut ready = Vec::new();
        let ids: Vec<String> = self.pending.keys().cloned().collect();
        for id in ids {
            let Some(mut p) = self.pending.remove(&id) else { continue };
            if !p.execed {
                p.execed = probe(&self.proc_root, &mut p.start);
            }
            self.wait_for_kernel(cx, &mut p);
            if self.due(cx, &p) && self.live.contains_key(&id) {
                ready.push((id, p));
            } else {
                self.pending.insert(id, p);
            }
        }
        for (id, p) in ready {
            self.emit(cx, &id, p.start, out);
        }
        let waiting = self.pending.values().any(|p| !p.execed || p.not_before.is_some_and(|t| t > cx.now))
            || !self.unhooked.is_empty();
        self.next_probe = waiting.then(|| cx.now + PROBE_EVERY);
    }
}

impl Transform for Lifecycle {
    fn push(&mut self, cx: &mut Cx<'_>, input: &mut Vec<ContainerEvent>, out: &mut Vec<ContainerEvent>) {
        for event in input.drain(..) {
            let id = event.container.id.clone();
            let kind = event.kind;
            let cgroup_id = event.cgroup_id;
            let (hook, path) = (event.container.hook.clone(), event.container.cgroup_path.clone());
            let init_pid = event.container.init_pid;
            self.release(&id, out);
            if kind == EventKind::ContainerRemove {
                self.live.remove(&id);
                self.pending.remove(&id);
                self.unhooked.remove(&id);
                self.removed(cx, event, out);
                continue;
            }
            if matches!(kind, EventKind::ContainerCreate | EventKind::ExistingContainer) {
                self.watch_oom(&event.container);
            }
            out.push(event);
            match kind {
                EventKind::ContainerCreate => {
                    self.live.insert(id.clone(), Live { cgroup_id, started: false });
                    if let (Some(root), None) = (&self.cgroup_root, &hook) {
                        if self.unhooked.len() < MAX_PENDING {
                            self.unhooked.insert(id.clone(), (root.join(path.trim_start_matches('/')), cx.now));
                            self.next_probe.get_or_insert(cx.now + PROBE_EVERY);
                        } else {
                            self.metrics.queue_overflow("lifecycle", 1);
                        }
                    }
                    if self.pending.get(&id).is_some_and(|p| self.due(cx, p)) {
                        if let Some(p) = self.pending.remove(&id) {
                            self.emit(cx, &id, p.start, out);
                        }
                    }
                }
                EventKind::ExistingContainer => {
                    // Its init (to see its exit), from the store or its cgroup.
                    let init = match (self.process_events, &self.cgroup_root, init_pid) {
                        (false, _, _) => None,
                        (true, _, Some(pid)) => Some(pid),
                        (true, Some(root), None) => {
                            ctwatch::proc::container_init_pid(&self.proc_root, &root.join(path.trim_start_matches('/')))
                        }
                        (true, None, None) => None,
                    };
                    if let Some(pid) = init {
                        self.set_init(&id, pid);
                    }
                    self.live.insert(id.clone(), Live { cgroup_id, started: true });
                    self.pending.remove(&id);
                }
                _ => {}
            }
        }
    }

    fn tick(&mut self, cx: &mut Cx<'_>, out: &mut Vec<ContainerEvent>) {
        if self.held.iter().any(|h| h.due <= cx.now) {
            let now = cx.now;
            let (due, still): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|h| h.due <= now);
            self.held = still;
            for held in due {
                self.sent(&held.event.container.id);
                out.push(held.event);
            }
        }
        if self.next_probe.is_some_and(|due| due <= cx.now) {
            self.probe_pending(cx, out);
        }
    }

    fn next_due(&self) -> Option<Instant> {
        let held = self.held.iter().map(|h| h.due).min();
        [held, self.next_probe].into_iter().flatten().min()
    }
}

/// The OOM watcher's key for one incarnation of a container.
fn oom_key(c: &Container) -> String {
    format!("{}@{}", c.id, c.cgroup_id)
}

/// The runtime's word on an exit, into the container (what it knows; ours where it knows nothing).
fn apply_exit(c: &mut Container, info: ExitInfo) {
    let ns = |t: SystemTime| t.duration_since(UNIX_EPOCH).ok().and_then(|d| u64::try_from(d.as_nanos()).ok());
    if info.exit_code.is_some() || info.exit_signal.is_some() {
        c.exit_code = info.exit_code;
        c.exit_signal = info.exit_signal;
    }
    c.oom_killed = match (c.oom_killed, info.oom_killed) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (a, b) => a.or(b),
    };
    c.oom_kills = c.oom_kills.max(info.oom_kills);
    if c.oom_killed == Some(true) {
        // The runtime's flag is an OOM kill in the container: at least one,
        // whatever a counter read after the cgroup went missed.
        c.oom_kills = c.oom_kills.max(Some(1));
    }
    if c.started_at_ns.is_none() {
        c.started_at_ns = info.started_at.and_then(ns);
    }
    if let Some(finished) = info.finished_at.and_then(ns) {
        c.finished_at_ns = Some(finished);
    }
}

/// The kernel's word on the init's end, over anything else's.
fn apply_kernel_exit(c: &mut Container, exit: KernelExit) {
    c.exit_code = exit.exit_code;
    c.exit_signal = exit.exit_signal;
    c.finished_at_ns = Some(exit.finished_at_ns);
}

/// The kernel's OOM kills in a container (how many, whether its init was one).
fn apply_kernel_ooms(c: &mut Container, (kills, init): (u64, bool)) {
    c.oom_kills = c.oom_kills.max(Some(kills));
    if init {
        c.oom_killed = Some(true);
    }
}

fn ns_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0))
}

/// Whether `start.init_pid` has executed its entrypoint (it is no longer
/// the runtime's init); fills `exe` and `argv0` when it has. A process that
/// is gone counts as started (with what could be read: nothing).
fn probe(proc_root: &Path, start: &mut Start) -> bool {
    let dir = proc_root.join(start.init_pid.to_string());
    let Ok(comm) = fs::read_to_string(dir.join("comm")) else { return true };
    let comm = comm.trim_end();
    if is_runtime_init(comm) {
        return false;
    }
    if start.exe.is_none() {
        start.exe = fs::read_link(dir.join("exe")).ok().map(|p| bounded(p.to_string_lossy().into_owned()));
    }
    if start.argv0.is_none() {
        start.argv0 = fs::read(dir.join("cmdline")).ok().and_then(|b| {
            let first = b.split(|c| *c == 0).next().filter(|a| !a.is_empty())?;
            Some(bounded(String::from_utf8_lossy(first).into_owned()))
        });
    }
    true
}

/// Whether a process name is a runtime's init waiting to exec the entrypoint.
fn is_runtime_init(comm: &str) -> bool {
    comm.starts_with("runc:[") || comm == "runc" || comm == "crun" || comm == "runc-init"
}

fn bounded(mut s: String) -> String {
    if s.len() > MAX_PATH {
        let mut end = MAX_PATH;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use ctwatch::sources::CgroupChange;
    use ctwatch::state_dirs::PathOnly;
    use ctwatch::{ManualClock, SharedStore, Store, Tracker};

    use super::*;
    use crate::transforms::tracker::tests::cgroup;

    struct Rig {
        tracker: Tracker,
        life: Lifecycle,
        store: SharedStore,
        clock: ManualClock,
        _proc: tempfile::TempDir,
    }

    fn fake_proc(pid: u32, comm: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(pid.to_string());
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
        fs::write(p.join("cmdline"), b"sleep\x0060\x00").unwrap();
        std::os::unix::fs::symlink("/bin/sleep", p.join("exe")).unwrap();
        dir
    }

    impl Rig {
        fn new(proc: tempfile::TempDir) -> Rig {
            let clock = ManualClock::new();
            let store = SharedStore::new(Store::default());
            let tracker =
                Tracker::new(store.clone(), Box::new(PathOnly)).with_clock(Arc::new(clock.clone())).recording_changes();
            let life = Lifecycle::new(proc.path().to_path_buf(), Arc::new(Metrics::new()));
            Rig { tracker, life, store, clock, _proc: proc }
        }

        /// A rig whose lifecycle has the eBPF process events.
        fn with_process_events(proc: tempfile::TempDir) -> Rig {
            let mut rig = Rig::new(proc);
            let life = std::mem::replace(&mut rig.life, Lifecycle::new(PathBuf::new(), Arc::new(Metrics::new())));
            rig.life = life.with_process_events(None);
            rig
        }

        fn cgroups(&mut self, change: CgroupChange, id: &str, cgroup_id: u64) -> Vec<ContainerEvent> {
            let mut events = Vec::new();
            self.tracker.apply(&[cgroup(change, cgroup_id, &format!("/docker/{id}"))], &mut events);
            self.life.on_membership(&self.tracker.take_changes());
            let mut out = Vec::new();
            self.life.push(&mut Cx::new(&mut self.tracker), &mut events, &mut out);
            out
        }

        fn process(&mut self, message: ProcessMessage) -> Vec<ContainerEvent> {
            let mut out = Vec::new();
            self.life.on_process(&mut Cx::new(&mut self.tracker), vec![message], &mut out);
            out
        }

        /// Moves the clock by `by` and ticks.
        fn tick(&mut self, by: Duration) -> Vec<ContainerEvent> {
            self.clock.advance(by);
            let mut out = Vec::new();
            self.life.tick(&mut Cx::new(&mut self.tracker), &mut out);
            out
        }

        fn start(&mut self, id: &str, pid: u32) -> Vec<ContainerEvent> {
            let mut out = Vec::new();
            let start = Start { init_pid: pid, exe: None, argv0: None, kernel_time: None, source: StartSource::Hook };
            self.life.on_start(&mut Cx::new(&mut self.tracker), id, start, &mut out);
            out
        }
    }

    fn kinds(events: &[ContainerEvent]) -> Vec<EventKind> {
        events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn a_start_before_the_create_follows_it_once_with_the_process() {
        let mut rig = Rig::new(fake_proc(42, "sleep"));
        let id = "a".repeat(64);
        assert!(rig.start(&id, 42).is_empty(), "waits for the create");
        let out = rig.cgroups(CgroupChange::Mkdir, &id, 5);
        assert_eq!(kinds(&out), [EventKind::ContainerCreate, EventKind::ContainerStart]);
        let c = &out[1].container;
        assert_eq!(
            (c.init_pid, c.start_exe.as_deref(), c.start_argv0.as_deref()),
            (Some(42), Some("/bin/sleep"), Some("sleep"))
        );
        assert!(c.started_at_ns.is_some());
        assert_eq!(rig.store.read().get(&id).unwrap().init_pid, Some(42), "in the store");
        assert!(rig.start(&id, 42).is_empty(), "exactly once");
        let out = rig.cgroups(CgroupChange::Rmdir, &id, 5);
        assert_eq!(out[0].container.start_argv0.as_deref(), Some("sleep"), "the remove carries it");
    }

    #[test]
    fn a_runtime_init_waiting_for_start_is_not_a_start() {
        let proc = fake_proc(43, "runc:[2:INIT]");
        let comm = proc.path().join("43/comm");
        let mut rig = Rig::new(proc);
        let id = "b".repeat(64);
        assert_eq!(kinds(&rig.cgroups(CgroupChange::Mkdir, &id, 6)), [EventKind::ContainerCreate]);
        assert!(rig.start(&id, 43).is_empty(), "runc create: not started yet");
        assert!(rig.life.next_due().is_some());
        fs::write(&comm, "sleep\n").unwrap(); // runc start: the entrypoint runs
        let mut out = Vec::new();
        let mut cx = Cx::new(&mut rig.tracker);
        cx.now += PROBE_EVERY;
        rig.life.tick(&mut cx, &mut out);
        assert_eq!(kinds(&out), [EventKind::ContainerStart]);
        assert!(rig.life.next_due().is_none() && rig.life.pending() == 0);
    }

    #[test]
    fn an_existing_container_gets_no_start() {
        let mut rig = Rig::new(fake_proc(44, "sleep"));
        let id = "c".repeat(64);
        let mut events = Vec::new();
        let mut existing = cgroup(CgroupChange::Mkdir, 7, &format!("/docker/{id}"));
        existing.origin = ctwatch::sources::Origin::Existing;
        rig.tracker.apply(&[existing], &mut events);
        let mut out = Vec::new();
        rig.life.push(&mut Cx::new(&mut rig.tracker), &mut events, &mut out);
        assert_eq!(kinds(&out), [EventKind::ExistingContainer]);
        assert!(rig.start(&id, 44).is_empty());
    }

    fn exec(cgroup_id: u64, pid: u32, at: SystemTime) -> ProcessMessage {
        ProcessMessage::Exec { cgroup_id, pid, time: at, exe: "/bin/sh".into(), argv0: "sh".into() }
    }

    fn exit(pid: u32, at: SystemTime, exit_code: Option<i32>, exit_signal: Option<i32>) -> ProcessMessage {
        ProcessMessage::Exit { cgroup_id: 0, pid, time: at, exit_code, exit_signal }
    }

    fn ns(t: SystemTime) -> u64 {
        ns_since_epoch(t)
    }

    #[test]
    fn the_kernels_first_exec_is_the_start_with_its_time_and_the_inits_exit_ends_it() {
        let mut rig = Rig::with_process_events(fake_proc(50, "sleep"));
        let id = "d".repeat(64);
        assert_eq!(kinds(&rig.cgroups(CgroupChange::Mkdir, &id, 9)), [EventKind::ContainerCreate]);
        let exec_at = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let out = rig.process(exec(9, 50, exec_at));
        assert_eq!(kinds(&out), [EventKind::ContainerStart]);
        let c = &out[0].container;
        assert_eq!(
            (c.init_pid, c.start_exe.as_deref(), c.start_argv0.as_deref()),
            (Some(50), Some("/bin/sh"), Some("sh"))
        );
        assert_eq!(c.started_at_ns, Some(ns(exec_at)), "the kernel's time");
        assert_eq!(out[0].kernel_time, Some(exec_at));
        // The hook's word after it: no second start.
        assert!(rig.start(&id, 50).is_empty(), "exactly one start");
        // Another process of the container exits: not the init, nothing.
        assert!(rig.process(exit(77, exec_at, Some(1), None)).is_empty());
        let exit_at = exec_at + Duration::from_secs(5);
        assert!(rig.process(exit(50, exit_at, Some(3), None)).is_empty());
        let out = rig.cgroups(CgroupChange::Rmdir, &id, 9);
        assert_eq!(kinds(&out), [EventKind::ContainerRemove], "not held: the exit is known");
        let c = &out[0].container;
        assert_eq!((c.exit_code, c.exit_signal), (Some(3), None));
        assert_eq!((c.started_at_ns, c.finished_at_ns), (Some(ns(exec_at)), Some(ns(exit_at))));
    }

    #[test]
    fn a_remove_before_the_inits_exit_waits_for_it_then_goes_out_at_most_at_the_hold() {
        let mut rig = Rig::with_process_events(fake_proc(51, "sleep"));
        let id = "e".repeat(64);
        rig.cgroups(CgroupChange::Mkdir, &id, 10);
        let at = UNIX_EPOCH + Duration::from_secs(2_000_000);
        assert_eq!(kinds(&rig.process(exec(10, 51, at))), [EventKind::ContainerStart]);
        assert!(rig.cgroups(CgroupChange::Rmdir, &id, 10).is_empty(), "held for the kernel's exit");
        let out = rig.process(exit(51, at, None, Some(9)));
        assert_eq!(kinds(&out), [EventKind::ContainerRemove]);
        assert_eq!((out[0].container.exit_code, out[0].container.exit_signal), (None, Some(9)));
        assert_eq!(rig.life.held(), 0);

        // A second container whose init's exit never comes: out at the hold, with no exit status invented.
        let id2 = "f".repeat(64);
        rig.cgroups(CgroupChange::Mkdir, &id2, 11);
        rig.process(exec(11, 52, at));
        assert!(rig.cgroups(CgroupChange::Rmdir, &id2, 11).is_empty());
        assert!(rig.tick(EXIT_HOLD - Duration::from_millis(1)).is_empty());
        let out = rig.tick(Duration::from_millis(1));
        assert_eq!(kinds(&out), [EventKind::ContainerRemove]);
        assert_eq!((out[0].container.exit_code, out[0].container.exit_signal), (None, None));
    }

    #[test]
    fn a_start_from_proc_waits_for_the_kernels_exec_which_replaces_it() {
        let mut rig = Rig::with_process_events(fake_proc(53, "sleep"));
        let id = "1".repeat(64);
        rig.cgroups(CgroupChange::Mkdir, &id, 12);
        assert!(rig.start(&id, 53).is_empty(), "waits for the kernel's exec");
        assert!(rig.tick(EBPF_GRACE / 2).is_empty());
        let at = UNIX_EPOCH + Duration::from_secs(3_000_000);
        let out = rig.process(exec(12, 53, at));
        assert_eq!(kinds(&out), [EventKind::ContainerStart]);
        assert_eq!(out[0].container.started_at_ns, Some(ns(at)), "the kernel's start won");
        assert_eq!(out[0].container.start_exe.as_deref(), Some("/bin/sh"));
        assert!(rig.tick(EBPF_GRACE).is_empty(), "no second start");

        // No kernel exec (lost): the start from /proc goes out after the grace.
        let id2 = "2".repeat(64);
        rig.cgroups(CgroupChange::Mkdir, &id2, 13);
        assert!(rig.start(&id2, 53).is_empty());
        let mut out = Vec::new();
        for _ in 0..(EBPF_GRACE.as_millis() / PROBE_EVERY.as_millis() + 1) {
            out.extend(rig.tick(PROBE_EVERY));
        }
        assert_eq!(kinds(&out), [EventKind::ContainerStart]);
        assert_eq!(out[0].container.start_exe.as_deref(), Some("/bin/sleep"), "from /proc");
        assert!(rig.process(exec(13, 53, at)).is_empty(), "a late kernel exec makes no second start");
    }

    #[test]
    fn oom_kills_of_the_init_and_of_others_are_counted_and_the_kernels_exit_beats_the_runtimes() {
        let mut rig = Rig::with_process_events(fake_proc(54, "sleep"));
        let id = "3".repeat(64);
        rig.cgroups(CgroupChange::Mkdir, &id, 14);
        let at = UNIX_EPOCH + Duration::from_secs(4_000_000);
        rig.process(exec(14, 54, at));
        // A child is killed (matched by cgroup), then the init (matched by PID).
        assert!(rig.process(ProcessMessage::OomKill { cgroup_id: 14, pid: 60, time: at }).is_empty());
        let c = rig.store.read().get(&id).unwrap().clone();
        assert_eq!((c.oom_kills, c.oom_killed), (Some(1), None), "a child's kill is not the init's");
        rig.process(ProcessMessage::OomKill { cgroup_id: 999, pid: 54, time: at });
        rig.process(exit(54, at, None, Some(9)));
        // An OOM kill in a cgroup no container has: nothing.
        rig.process(ProcessMessage::OomKill { cgroup_id: 4242, pid: 61, time: at });
        let out = rig.cgroups(CgroupChange::Rmdir, &id, 14);
        let c = &out[0].container;
        assert_eq!((c.oom_kills, c.oom_killed, c.exit_signal), (Some(2), Some(true), Some(9)));

        // The runtime's answer merged in: the kernel's exit status and OOM flag stay.
        let mut c2 = (**c).clone();
        let info = ExitInfo { exit_code: Some(137), oom_killed: Some(false), ..ExitInfo::default() };
        apply_exit(&mut c2, info);
        apply_kernel_exit(&mut c2, KernelExit { exit_code: None, exit_signal: Some(9), finished_at_ns: 1 });
        assert_eq!(
            (c2.exit_code, c2.exit_signal, c2.oom_killed, c2.finished_at_ns),
            (None, Some(9), Some(true), Some(1))
        );
    }

    #[test]
    fn process_events_of_unknown_cgroups_and_pids_are_ignored_and_mirror_ids_match() {
        let mut rig = Rig::with_process_events(fake_proc(55, "sleep"));
        let id = "4".repeat(64);
        let at = UNIX_EPOCH + Duration::from_secs(5_000_000);
        // The unified hierarchy's mkdir of the same path, before the tracked one's.
        rig.life.on_mirror(&[cgroup(CgroupChange::Mkdir, 5000, &format!("/docker/{id}"))]);
        rig.cgroups(CgroupChange::Mkdir, &id, 15);
        assert!(rig.process(exec(4242, 55, at)).is_empty(), "not a container's cgroup");
        assert!(rig.process(exit(55, at, Some(0), None)).is_empty(), "not an init yet");
        assert_eq!(kinds(&rig.process(exec(5000, 55, at))), [EventKind::ContainerStart], "by the unified ID");
        rig.cgroups(CgroupChange::Rmdir, &id, 15);
        assert_eq!(rig.life.index.get(5000), None, "forgotten with the cgroup");
    }
}
