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

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use ctwatch::{Container, ContainerEvent, EventKind};
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
}

/// What is known of a container whose create went out.
struct Live {
    cgroup_id: u64,
    started: bool,
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
    /// Removes waiting for their runtime's word, with when they go out regardless.
    held: Vec<(Instant, ContainerEvent)>,
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
            metrics,
        }
    }

    /// Finds the init of containers the hook did not see in their cgroup under `root` (the watched hierarchy).
    pub fn with_cgroup_root(mut self, root: PathBuf) -> Self {
        self.cgroup_root = Some(root);
        self
    }

    /// The runtime's answer on how a container ended: into the store and its held remove, which goes out.
    pub fn on_exit(&mut self, cx: &mut Cx<'_>, reply: ExitReply, out: &mut Vec<ContainerEvent>) {
        let Some(i) = self.held.iter().position(|(_, e)| e.container.id == reply.id && e.cgroup_id == reply.cgroup_id)
        else {
            return;
        };
        let (_, mut event) = self.held.remove(i);
        let info = reply.info;
        let stored = cx.tracker.update_container(&reply.id, reply.cgroup_id, |c| apply_exit(c, info));
        event.container = stored.unwrap_or_else(|| {
            let mut c = (*event.container).clone();
            apply_exit(&mut c, info);
            Arc::new(c)
        });
        out.push(event);
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

    /// A remove: its OOM count and end time into the store; held for the runtime's word when enrichment is on.
    fn removed(&mut self, cx: &mut Cx<'_>, mut event: ContainerEvent, out: &mut Vec<ContainerEvent>) {
        let c = &event.container;
        let kills = self.exits.oom.as_ref().and_then(|oom| oom.finish(&oom_key(c)));
        let ended = event.kernel_time.unwrap_or(event.time);
        let finished = ended.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        let update = |c: &mut Container| {
            c.oom_kills = c.oom_kills.max(kills);
            c.finished_at_ns.get_or_insert(finished);
        };
        let stored = cx.tracker.update_container(&c.id, event.cgroup_id, update);
        event.container = stored.unwrap_or_else(|| {
            let mut c = (*event.container).clone();
            update(&mut c);
            Arc::new(c)
        });
        let Some((asker, tx)) = &self.exits.asker else {
            out.push(event);
            return;
        };
        if self.held.len() >= MAX_HELD {
            self.metrics.queue_overflow("exit_hold", 1);
            out.push(event);
            return;
        }
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
        self.held.push((cx.now + EXIT_HOLD, event));
    }

    /// Releases the held remove of `id` (a later event about it goes after it).
    fn release(&mut self, id: &str, out: &mut Vec<ContainerEvent>) {
        if let Some(i) = self.held.iter().position(|(_, e)| e.container.id == id) {
            out.push(self.held.remove(i).1);
        }
    }

    /// A source's word on container `id`'s start; the `container_start`
    /// goes into `out` when it is due (else it waits).
    pub fn on_start(&mut self, cx: &mut Cx<'_>, id: &str, start: Start, out: &mut Vec<ContainerEvent>) {
        if self.live.get(id).is_some_and(|l| l.started) {
            return;
        }
        let mut pending = match self.pending.remove(id) {
            // eBPF's exec is better than the hook's PID; the hook's PID does not replace eBPF's.
            Some(p) if p.start.source == StartSource::Ebpf && start.source == StartSource::Hook => p,
            _ => Pending { execed: start.source == StartSource::Ebpf, start },
        };
        if !pending.execed {
            pending.execed = probe(&self.proc_root, &mut pending.start);
        }
        if pending.execed && self.live.contains_key(id) {
            self.emit(cx, id, pending.start, out);
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.metrics.queue_overflow("lifecycle", 1);
            return;
        }
        if !pending.execed {
            self.next_probe.get_or_insert(cx.now + PROBE_EVERY);
        }
        self.pending.insert(id.to_string(), pending);
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
        for (id, p) in self.pending.iter_mut() {
            if !p.execed {
                p.execed = probe(&self.proc_root, &mut p.start);
            }
            if p.execed && self.live.contains_key(id) {
                ready.push(id.clone());
            }
        }
        for id in ready {
            if let Some(p) = self.pending.remove(&id) {
                self.emit(cx, &id, p.start, out);
            }
        }
        let waiting = self.pending.values().any(|p| !p.execed) || !self.unhooked.is_empty();
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
                    if self.pending.get(&id).is_some_and(|p| p.execed) {
                        if let Some(p) = self.pending.remove(&id) {
                            self.emit(cx, &id, p.start, out);
                        }
                    }
                }
                EventKind::ExistingContainer => {
                    self.live.insert(id.clone(), Live { cgroup_id, started: true });
                    self.pending.remove(&id);
                }
                _ => {}
            }
        }
    }

    fn tick(&mut self, cx: &mut Cx<'_>, out: &mut Vec<ContainerEvent>) {
        if self.held.iter().any(|(due, _)| *due <= cx.now) {
            let now = cx.now;
            let (due, still): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|(d, _)| *d <= now);
            self.held = still;
            out.extend(due.into_iter().map(|(_, e)| e));
        }
        if self.next_probe.is_some_and(|due| due <= cx.now) {
            self.probe_pending(cx, out);
        }
    }

    fn next_due(&self) -> Option<Instant> {
        let held = self.held.iter().map(|(due, _)| *due).min();
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
            let tracker = Tracker::new(store.clone(), Box::new(PathOnly)).with_clock(Arc::new(clock));
            let life = Lifecycle::new(proc.path().to_path_buf(), Arc::new(Metrics::new()));
            Rig { tracker, life, store, _proc: proc }
        }

        fn cgroups(&mut self, change: CgroupChange, id: &str, cgroup_id: u64) -> Vec<ContainerEvent> {
            let mut events = Vec::new();
            self.tracker.apply(&[cgroup(change, cgroup_id, &format!("/docker/{id}"))], &mut events);
            let mut out = Vec::new();
            self.life.push(&mut Cx::new(&mut self.tracker), &mut events, &mut out);
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
}
