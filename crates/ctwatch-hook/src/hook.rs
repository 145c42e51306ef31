//! The hook: one fanotify group with `FAN_OPEN_EXEC_PERM` marks on the
//! runtime binaries, a reader thread that only reads events and answers the
//! ones whose deadline passed, workers that decide, and the lifecycle thread.
//!
//! ```text
//!  execve(runc) ─▶ kernel holds it ─▶ reader ──job──▶ worker: argv, config.json, identity, policy
//!                        ▲              │ deadline          │
//!                        └── FAN_ALLOW/FAN_DENY ◀───────────┘ (whoever claims the event first)
//!                                                            └─▶ precreate event, lifecycle
//! ```
//!
//! Every permission event is answered exactly once: the worker or the
//! deadline claims it from the pending table, and only the claimer writes the
//! response. The reader never waits on anything but `poll`, so a stuck worker
//! (a slow disk, a daemon that does not answer) cannot hold a runtime past
//! the deadline. If ctwatch dies, the kernel answers: closing a fanotify
//! group allows every event still pending on it.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use ctwatch::cgroupfs::Hierarchy;
use ctwatch::hook::{HookInfo, HookMessage};
use ctwatch::sources::SourceMessage;
use ctwatch::{Container, Runtime};
use ctwatch_enrich::metadata::clean;
use nix::errno::Errno;
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyEvent, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::binaries::{candidate_paths, find_runtime_binaries, RuntimeBinary, RuntimeTool};
use crate::bundle::{caller_path, read_config_as};
use crate::caller::{Caller, CallerFs};
use crate::exec_args::{from_capture, ArgvCapture, ArgvReader, ExecArgsError, FromCapture};
use crate::identity::{identify, IdentitySources};
use crate::invocation::{parse, CreateCall, Invocation};
use crate::lifecycle::{pidfd_open, start_time, Lifecycle, Track};
use crate::policy::{Policy, Subject};

/// The default time a runtime may wait for ctwatch's answer.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);
/// How long a container ID is remembered so conmon and the runc it runs make one precreate.
const SAME_CREATE_WINDOW: Duration = Duration::from_secs(60);

/// How the hook is set up.
#[derive(Debug, Clone)]
pub struct HookConfig {
    /// Runtime binaries to mark besides (or, with `replace_default_paths`, instead of) the usual ones.
    pub runtime_paths: Vec<PathBuf>,
    /// Mark only `runtime_paths`.
    pub replace_default_paths: bool,
    /// How long a runtime may wait for the answer.
    pub deadline: Duration,
    /// Answer `FAN_DENY` when the deadline passes (default: allow).
    pub fail_closed: bool,
    /// The admission policy, if any.
    pub policy: Option<Policy>,
    /// Where the runtimes' records are.
    pub identity: IdentitySources,
    /// The proc mount.
    pub proc_root: PathBuf,
    /// When set, `Started`/`Exited` carry the init's cgroup in this hierarchy
    /// (what the kernel says the container got: findings are joined to it).
    pub hierarchy: Option<Hierarchy>,
    /// Follow each init to its exit (the hook is the only source).
    pub follow_exits: bool,
    /// Worker threads that decide.
    pub workers: usize,
    /// An in-kernel capture of the runtimes' argvs (eBPF), read before
    /// `/proc`: see [`crate::exec_args::from_capture`].
    pub argv_capture: Option<ArgvCapture>,
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            runtime_paths: Vec::new(),
            replace_default_paths: false,
            deadline: DEFAULT_DEADLINE,
            fail_closed: false,
            policy: None,
            identity: IdentitySources::default(),
            proc_root: PathBuf::from("/proc"),
            hierarchy: None,
            follow_exits: false,
            workers: 4,
            argv_capture: None,
        }
    }
}

/// Why the hook could not start.
#[derive(Debug, Error)]
pub enum HookError {
    /// fanotify is not usable here.
    #[error("fanotify is not available: {reason}")]
    Fanotify {
        /// What is missing and how to fix it.
        reason: String,
    },
    /// None of the runtime binaries exists.
    #[error("no runtime binary to hook: none of {0} exists (add one with --runtime-path)")]
    NoBinaries(String),
    /// Every binary found failed to be marked.
    #[error("no runtime binary could be marked: {0}")]
    Mark(String),
    /// A thread could not start.
    #[error("cannot start the hook's {what} thread: {source}")]
    Thread {
        /// Which.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// Counters, for tests, metrics and the closing log line.
#[derive(Debug, Default)]
pub struct HookStats {
    /// Permission events read.
    pub events: AtomicU64,
    /// Of them, container creates.
    pub creates: AtomicU64,
    /// Events the deadline answered (ctwatch was too slow).
    pub deadline_answers: AtomicU64,
    /// Creates refused by the policy.
    pub denied: AtomicU64,
    /// Execs whose argv could not be read (answered with the default).
    pub unreadable: AtomicU64,
    /// Of them, the unverifiable ones: the read did not finish in time, or too many reads were stuck.
    pub unverifiable: AtomicU64,
    /// Execs whose argv came from the in-kernel (eBPF) capture, read or found unreadable.
    pub argv_from_ebpf: AtomicU64,
    /// Execs whose argv was read from `/proc` by a forked reader.
    pub argv_from_proc: AtomicU64,
}

/// How long the hook waits for its threads when it stops; a thread stuck
/// past this (a read that never ends) is left behind, never joined.
const STOP_PATIENCE: Duration = Duration::from_secs(2);

struct Pending {
    event: FanotifyEvent,
    deadline: Instant,
    read_at: Instant,
}

/// What the reader, the workers and the deadline share.
struct Shared {
    group: Fanotify,
    pending: Mutex<BTreeMap<u64, Pending>>,
    default_allow: bool,
    stats: Arc<HookStats>,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, BTreeMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes event `seq` out of the table: whoever gets it answers it.
    fn claim(&self, seq: u64) -> Option<Pending> {
        self.pending().remove(&seq)
    }

    /// Writes the answer for a claimed event (and closes its fd).
    fn answer(&self, pending: Pending, allow: bool) {
        let Some(fd) = pending.event.fd() else { return };
        let response = if allow { Response::FAN_ALLOW } else { Response::FAN_DENY };
        if let Err(e) = self.group.write_response(FanotifyResponse::new(fd, response)) {
            // ENOENT: the process was killed while it waited; the kernel dropped the event.
            debug!(error = %e, "fanotify response not taken");
        }
    }

    /// Answers every event whose deadline has passed with the default.
    fn expire(&self, now: Instant) {
        let expired: Vec<Pending> = {
            let mut pending = self.pending();
            let due: Vec<u64> = pending.iter().take_while(|(_, p)| p.deadline <= now).map(|(s, _)| *s).collect();
            due.iter().filter_map(|s| pending.remove(s)).collect()
        };
        for p in expired {
            self.stats.deadline_answers.fetch_add(1, Ordering::Relaxed);
            warn!(
                waited_ms = p.read_at.elapsed().as_millis() as u64,
                allow = self.default_allow,
                "a runtime exec reached the deadline; answered with the default"
            );
            self.answer(p, self.default_allow);
        }
    }
}

struct Job {
    seq: u64,
    tid: u32,
    tool: RuntimeTool,
    binary: PathBuf,
    read_at: Instant,
    time: SystemTime,
}

/// A running hook. Dropping it answers what is pending, unmarks the
/// binaries and closes the group.
pub struct Hook {
    shared: Arc<Shared>,
    marked: Vec<RuntimeBinary>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Hook {
    /// Creates the fanotify group, marks the runtime binaries found, and
    /// starts the threads. Events go to `tx`.
    pub fn start(config: HookConfig, tx: Sender<SourceMessage>) -> Result<Hook, HookError> {
        let candidates = candidate_paths(&config.runtime_paths, config.replace_default_paths);
        let binaries = find_runtime_binaries(&candidates);
        if binaries.is_empty() {
            let list: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            return Err(HookError::NoBinaries(list.join(", ")));
        }
        let group = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK | InitFlags::FAN_REPORT_TID,
            EventFFlags::O_RDONLY | EventFFlags::O_CLOEXEC | EventFFlags::O_LARGEFILE,
        )
        .map_err(|e| HookError::Fanotify { reason: init_hint(e) })?;
        let mut marked = Vec::new();
        let mut failures = Vec::new();
        for binary in binaries {
            match group.mark(MarkFlags::FAN_MARK_ADD, MaskFlags::FAN_OPEN_EXEC_PERM, None, Some(&binary.path)) {
                Ok(()) => marked.push(binary),
                Err(e) => failures.push(format!("{}: {e}", binary.path.display())),
            }
        }
        for failure in &failures {
            warn!("cannot hook a runtime binary: {failure}");
        }
        if marked.is_empty() {
            return Err(HookError::Mark(failures.join("; ")));
        }
        for b in &marked {
            info!(path = %b.path.display(), tool = b.tool.as_str(), "runtime binary hooked");
        }
        let stats = Arc::new(HookStats::default());
        let shared =
            Arc::new(Shared { group, pending: Mutex::new(BTreeMap::new()), default_allow: !config.fail_closed, stats });
        let stop = Arc::new(AtomicBool::new(false));
        let mut hook = Hook { shared: shared.clone(), marked, stop: stop.clone(), threads: Vec::new() };
        let (jobs_tx, jobs) = crossbeam_channel::unbounded::<Job>();
        let (track_tx, tracks) = crossbeam_channel::unbounded::<Track>();
        let lifecycle = Lifecycle {
            tracks,
            tx: tx.clone(),
            stop: stop.clone(),
            proc_root: config.proc_root.clone(),
            hierarchy: config.hierarchy.clone(),
            // With a kernel source, the cgroup's rmdir says when a container is gone.
            follow_exits: config.follow_exits,
        };
        hook.spawn("hook-lifecycle", move || lifecycle.run())?;
        let by_inode: HashMap<(u64, u64), RuntimeBinary> = hook.marked.iter().map(|b| (b.dev_ino, b.clone())).collect();
        let recent = Arc::new(Mutex::new(HashMap::new()));
        // One small runtime for the containerd lookups of all workers, made now
        // so the hook's threads and fds stay the same from start to end.
        let tokio = match &config.identity.containerd_socket {
            Some(_) => Some(Arc::new(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("hook-containerd")
                    .enable_all()
                    .build()
                    .map_err(|source| HookError::Thread { what: "containerd lookup", source })?,
            )),
            None => None,
        };
        let config = Arc::new(config);
        let argv_reader = Arc::new(ArgvReader::new());
        for i in 0..config.workers.max(1) {
            let worker = Worker {
                argv_reader: argv_reader.clone(),
                shared: shared.clone(),
                config: config.clone(),
                tx: tx.clone(),
                tracks: track_tx.clone(),
                recent: recent.clone(),
                tokio: tokio.clone(),
            };
            let jobs = jobs.clone();
            hook.spawn(if i == 0 { "hook-worker" } else { "hook-worker-n" }, move || worker.run(jobs))?;
        }
        let reader_shared = shared.clone();
        let deadline = config.deadline;
        hook.spawn("hook-reader", move || read_events(&reader_shared, &by_inode, deadline, jobs_tx, &stop))?;
        Ok(hook)
    }

    fn spawn(&mut self, name: &'static str, f: impl FnOnce() + Send + 'static) -> Result<(), HookError> {
        match thread::Builder::new().name(name.into()).spawn(f) {
            Ok(handle) => {
                self.threads.push(handle);
                Ok(())
            }
            Err(source) => {
                self.stop_threads();
                Err(HookError::Thread { what: name, source })
            }
        }
    }

    /// The binaries that were marked.
    pub fn marked(&self) -> &[RuntimeBinary] {
        &self.marked
    }

    /// The hook's counters.
    pub fn stats(&self) -> Arc<HookStats> {
        self.shared.stats.clone()
    }

    /// Stops the threads, waiting at most [`STOP_PATIENCE`] in all: one
    /// that is still stuck then is left behind (it holds nothing that keeps
    /// a runtime waiting once the marks are gone and the pending events are
    /// answered).
    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let until = Instant::now() + STOP_PATIENCE;
        for t in self.threads.drain(..) {
            while !t.is_finished() && Instant::now() < until {
                thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                warn!(thread = t.thread().name().unwrap_or("?"), "a hook thread is stuck; leaving it behind");
            }
        }
    }
}

impl Drop for Hook {
    /// Stops the threads, answers what is still pending, unmarks every binary.
    fn drop(&mut self) {
        self.stop_threads();
        let leftover: Vec<Pending> = std::mem::take(&mut *self.shared.pending()).into_values().collect();
        for p in leftover {
            self.shared.answer(p, self.shared.default_allow);
        }
        for b in &self.marked {
            if let Err(e) =
                self.shared.group.mark(MarkFlags::FAN_MARK_REMOVE, MaskFlags::FAN_OPEN_EXEC_PERM, None, Some(&b.path))
            {
                debug!(path = %b.path.display(), error = %e, "unmark");
            }
        }
        // The group's fd closes when the last Arc goes (this one, unless a
        // thread was left behind: then at exit; no exec waits on it meanwhile).
    }
}

/// What to tell the user when `fanotify_init` fails.
fn init_hint(e: Errno) -> String {
    match e {
        Errno::EPERM => "permission denied: the hook needs CAP_SYS_ADMIN (run ctwatch as root)".into(),
        Errno::EINVAL => {
            "the kernel refused a permission-class group (it needs CONFIG_FANOTIFY_ACCESS_PERMISSIONS=y)".into()
        }
        Errno::ENOSYS => "the kernel has no fanotify (CONFIG_FANOTIFY)".into(),
        Errno::EMFILE => "too many fanotify groups for this user (the limit is 128)".into(),
        e => format!("fanotify_init: {e}"),
    }
}

/// The reader: reads events, queues them for the workers, answers the overdue ones.
fn read_events(
    shared: &Shared,
    binaries: &HashMap<(u64, u64), RuntimeBinary>,
    deadline: Duration,
    jobs: Sender<Job>,
    stop: &AtomicBool,
) {
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let next_due = shared.pending().values().next().map(|p| p.deadline);
        let wait = next_due
            .map_or(Duration::from_millis(100), |d| d.saturating_duration_since(now))
            .min(Duration::from_millis(100));
        let mut pfd = libc::pollfd { fd: shared.group.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as i32) };
        if ready > 0 {
            loop {
                let events = match shared.group.read_events() {
                    Ok(events) if !events.is_empty() => events,
                    Ok(_) | Err(Errno::EAGAIN) => break,
                    Err(Errno::EINTR) => continue,
                    Err(e) => {
                        warn!(error = %e, "reading fanotify events failed");
                        break;
                    }
                };
                for event in events {
                    let Some(fd) = event.fd() else {
                        warn!("the fanotify queue overflowed");
                        continue;
                    };
                    shared.stats.events.fetch_add(1, Ordering::Relaxed);
                    let binary = dev_ino(fd.as_raw_fd()).and_then(|key| binaries.get(&key));
                    let (tool, path) = binary.map_or((RuntimeTool::Runc, PathBuf::new()), |b| (b.tool, b.path.clone()));
                    seq += 1;
                    let read_at = Instant::now();
                    let tid = u32::try_from(event.pid()).unwrap_or(0);
                    shared.pending().insert(seq, Pending { event, deadline: read_at + deadline, read_at });
                    let job = Job { seq, tid, tool, binary: path, read_at, time: SystemTime::now() };
                    if jobs.send(job).is_err() {
                        // No worker left (stopping): answer now.
                        if let Some(p) = shared.claim(seq) {
                            shared.answer(p, shared.default_allow);
                        }
                    }
                }
            }
        }
        shared.expire(Instant::now());
    }
}

/// What an untrusted precreate says of the exec.
struct Untrusted {
    pid: u32,
    caller_uid: u32,
    command: String,
    bundle: String,
    /// Why nothing else was read (`oci_error`).
    why: String,
}

struct Worker {
    shared: Arc<Shared>,
    /// Reads argvs in children, with a timeout.
    argv_reader: Arc<ArgvReader>,
    config: Arc<HookConfig>,
    tx: Sender<SourceMessage>,
    tracks: Sender<Track>,
    recent: Arc<Mutex<HashMap<String, Instant>>>,
    /// Drives the containerd lookups (when a containerd socket is configured).
    tokio: Option<Arc<tokio::runtime::Runtime>>,
}

impl Worker {
    fn run(mut self, jobs: Receiver<Job>) {
        loop {
            match jobs.recv_timeout(Duration::from_millis(200)) {
                Ok(job) => self.handle(job),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn handle(&mut self, job: Job) {
        let proc_root = self.config.proc_root.clone();
        // Three quarters of the deadline, so the answer (and the warning) is
        // the worker's, not the deadline's.
        let budget = (job.read_at + self.config.deadline * 3 / 4)
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(2));
        let argv = match self.read_argv(&proc_root, job.tid, budget) {
            Ok(argv) => argv,
            Err(e) => {
                self.shared.stats.unreadable.fetch_add(1, Ordering::Relaxed);
                let allow = self.shared.default_allow;
                if e.is_unverifiable() {
                    self.shared.stats.unverifiable.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        tid = job.tid,
                        binary = %job.binary.display(),
                        stuck_readers = self.argv_reader.stuck(),
                        allow,
                        "runtime exec unverifiable: {e}; answered with the default"
                    );
                } else {
                    debug!(tid = job.tid, error = %e, "exec argv unreadable; default answer");
                }
                let unverifiable = e.is_unverifiable();
                if let Some(p) = self.shared.claim(job.seq) {
                    self.shared.answer(p, allow);
                }
                if unverifiable {
                    self.report_unverifiable(&job, &e, allow);
                }
                return;
            }
        };
        debug!(tid = job.tid, ?argv, "runtime exec");
        let call = match parse(job.tool, &argv) {
            Invocation::Create(call) => call,
            Invocation::Other { .. } => {
                if let Some(p) = self.shared.claim(job.seq) {
                    self.shared.answer(p, true);
                }
                return;
            }
        };
        self.shared.stats.creates.fetch_add(1, Ordering::Relaxed);
        self.handle_create(job, call);
    }

    /// The argv of the exec `tid` is held in: from the in-kernel capture
    /// when it has the whole of it (or found it unreadable), else from
    /// `/proc` by a forked reader, within `budget`.
    fn read_argv(&self, proc_root: &Path, tid: u32, budget: Duration) -> Result<Vec<String>, ExecArgsError> {
        if let Some(capture) = &self.config.argv_capture {
            match from_capture(capture, proc_root, tid) {
                FromCapture::Args(argv) => {
                    self.shared.stats.argv_from_ebpf.fetch_add(1, Ordering::Relaxed);
                    return Ok(argv);
                }
                FromCapture::Unverifiable(e) => {
                    self.shared.stats.argv_from_ebpf.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
                FromCapture::NotCaptured(why) => debug!(tid, why, "exec argv not from eBPF; reading /proc"),
            }
        }
        self.shared.stats.argv_from_proc.fetch_add(1, Ordering::Relaxed);
        self.argv_reader.read(proc_root, tid, budget)
    }

    fn handle_create(&mut self, job: Job, call: CreateCall) {
        let proc_root = self.config.proc_root.clone();
        let pid = tgid_of(&proc_root, job.tid).unwrap_or(job.tid);
        // The exec is held: the task cannot change its credentials meanwhile.
        let creds = match Caller::of(&proc_root, job.tid) {
            Some(creds) if creds.trusted() => creds,
            other => return self.handle_untrusted(job, call, pid, other.map_or(u32::MAX, |c| c.euid)),
        };
        // Taken while the runtime is held, so it is the right process.
        let owner = pidfd_open(pid);
        let owner_start = start_time(&proc_root, pid);
        let caller_uid = creds.euid;
        let fs = match CallerFs::open(&proc_root, pid, creds) {
            Ok(fs) => Some(Arc::new(fs)),
            Err(e) => {
                debug!(pid, error = %e, "the caller's root is not openable");
                None
            }
        };
        let bundle_arg = call.bundle.clone().unwrap_or_else(|| ".".into());
        let bundle_path = caller_path(&proc_root, pid, &bundle_arg);
        let config_rel = match &call.config {
            Some(c) => PathBuf::from(c),
            None => Path::new(&bundle_arg).join("config.json"),
        };
        let (config, oci_error) = match fs.as_deref().map(|fs| read_config_as(fs, &config_rel)) {
            Some(Ok(c)) => (Some(c), None),
            Some(Err(e)) => (None, Some(e.to_string())),
            None => (None, Some("the runtime's root could not be opened".to_string())),
        };
        let bundle = bundle_path.display().to_string();
        let container = identify(&call, &bundle, config.as_ref(), &self.config.identity, self.tokio.as_deref());
        let empty = HashMap::new();
        let annotations = config.as_ref().map_or(&empty, |c| &c.annotations);
        let policy = self.config.policy.as_ref();
        let security = config.as_ref().map(|c| &c.security);
        let mut verdict =
            policy.and_then(|p| p.check(Subject { container: &container, annotations, security })).or_else(|| {
                // Enforce never passes a config it could not check.
                policy.zip(oci_error.as_deref()).and_then(|(p, why)| p.unverifiable(why))
            });
        let allow = !verdict.as_ref().is_some_and(|v| v.denied);
        let first = self.first_sight(&container.id);
        let claimed = self.shared.claim(job.seq);
        let answer_us = job.read_at.elapsed().as_micros() as u64;
        if claimed.is_none() {
            if let Some(v) = verdict.as_mut().filter(|v| v.denied) {
                v.denied = !self.shared.default_allow;
                v.reason.push_str(" (decided after the deadline: the deadline's default answered)");
            }
        }
        let allowed = if claimed.is_some() { allow } else { self.shared.default_allow };
        if !allowed {
            self.shared.stats.denied.fetch_add(1, Ordering::Relaxed);
        }
        let pid_file = call.pid_file.as_ref().map(|p| caller_path(&proc_root, pid, p));
        let info = HookInfo {
            runtime_binary: job.binary.display().to_string(),
            runtime_pid: pid,
            command: call.command.clone(),
            bundle,
            pid_file: pid_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            state_root: call.root.clone().unwrap_or_default(),
            security: config.as_ref().map(|c| Arc::new(c.security.clone())),
            oci: config.map(|c| c.summary),
            oci_error,
            verdict,
            answer_us,
            answered_by_deadline: claimed.is_none(),
            init_pid: None,
            trusted: true,
            caller_uid,
        };
        // The event goes out before the answer, so it is ahead of the cgroup's mkdir.
        if first || info.verdict.is_some() {
            let message =
                HookMessage::Precreate { container: Box::new(container), info: Box::new(info), time: job.time };
            let _ = self.tx.send(SourceMessage::Hook(Box::new(message)));
        }
        if let Some(p) = claimed {
            self.shared.answer(p, allow);
        }
        // conmon daemonizes at once, so its exit says nothing; the runc/crun it
        // runs is hooked too, and followed instead.
        if allowed && job.tool != RuntimeTool::Conmon {
            let default_root = match job.tool {
                RuntimeTool::Crun => Some("/run/crun"),
                RuntimeTool::Runc => Some("/run/runc"),
                RuntimeTool::Conmon => return,
            };
            let state_json =
                call.root.as_deref().or(default_root).map(|root| Path::new(root).join(&call.id).join("state.json"));
            let pid_file = call.pid_file.as_ref().map(PathBuf::from);
            let track = Track { id: call.id, owner_pid: pid, owner, owner_start, pid_file, state_json, fs };
            let _ = self.tracks.send(track);
        }
    }

    /// An exec by a caller that could not create the container (not root with
    /// `CAP_SYS_ADMIN` in the initial user namespace): allowed at once (it has
    /// no more power than the user already has, and the policy is about
    /// containers, which it cannot make), none of its files read, no record
    /// looked up, not followed, and reported as an untrusted precreate that
    /// names only what it claimed. It never counts as a sighting of its ID.
    fn handle_untrusted(&mut self, job: Job, call: CreateCall, pid: u32, caller_uid: u32) {
        if let Some(p) = self.shared.claim(job.seq) {
            self.shared.answer(p, true);
        }
        debug!(pid, caller_uid, id = %call.id, "runtime exec by an untrusted caller");
        let bundle = clean(call.bundle.as_deref().unwrap_or("."), 512);
        let finding = Untrusted {
            pid,
            caller_uid,
            command: call.command.clone(),
            bundle,
            why: "not read: the caller is not trusted".into(),
        };
        self.send_untrusted(&job, Container::new(clean(&call.id, 128), Runtime::Runc), finding);
    }

    /// An exec whose argv could not be read in time: reported as an
    /// untrusted `container_precreate` with no container ID (nothing it
    /// claims could be read), `oci_error` saying why and how it was answered,
    /// and the caller's UID. Never kept or joined to a container.
    fn report_unverifiable(&self, job: &Job, error: &ExecArgsError, allowed: bool) {
        let pid = tgid_of(&self.config.proc_root, job.tid).unwrap_or(job.tid);
        let caller_uid = Caller::of(&self.config.proc_root, job.tid).map_or(u32::MAX, |c| c.euid);
        let answer = if allowed { "allowed (fail-open)" } else { "denied (--fail-closed)" };
        let why = format!("unverifiable: {error}; {answer}");
        let finding = Untrusted { pid, caller_uid, command: String::new(), bundle: String::new(), why };
        self.send_untrusted(job, Container::new("", Runtime::Unknown), finding);
    }

    /// Sends an untrusted `container_precreate`: what the exec claimed and why
    /// nothing else of it was read. The agent never keeps or joins it.
    fn send_untrusted(&self, job: &Job, container: Container, finding: Untrusted) {
        let info = HookInfo {
            runtime_binary: job.binary.display().to_string(),
            runtime_pid: finding.pid,
            command: finding.command,
            bundle: finding.bundle,
            pid_file: String::new(),
            state_root: String::new(),
            oci: None,
            oci_error: Some(finding.why),
            verdict: None,
            answer_us: job.read_at.elapsed().as_micros() as u64,
            answered_by_deadline: false,
            init_pid: None,
            trusted: false,
            caller_uid: finding.caller_uid,
            security: None,
        };
        let message = HookMessage::Precreate { container: Box::new(container), info: Box::new(info), time: job.time };
        let _ = self.tx.send(SourceMessage::Hook(Box::new(message)));
    }

    /// Whether this is the first create seen for `id` lately (conmon then runc report the same container).
    fn first_sight(&self, id: &str) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if recent.len() > 4096 {
            recent.retain(|_, at| now.duration_since(*at) < SAME_CREATE_WINDOW);
        }
        match recent.insert(id.to_string(), now) {
            Some(at) => now.duration_since(at) >= SAME_CREATE_WINDOW,
            None => true,
        }
    }
}

/// The thread group (process) a task belongs to.
fn tgid_of(proc_root: &Path, tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(proc_root.join(tid.to_string()).join("status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

/// The device and inode of an open file.
fn dev_ino(fd: i32) -> Option<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd).ok()?;
    Some((st.st_dev, st.st_ino))
}
