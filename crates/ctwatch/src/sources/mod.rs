//! Kernel sources: where the tracker learns that cgroups come and go.
//!
//! Every source turns what it sees into [`CgroupEvent`]s in the order the
//! kernel made them, and sends them in batches to the tracker.

pub mod inotify;
pub mod scan;

use std::time::SystemTime;

use crate::hook::HookMessage;

/// Whether a cgroup was created or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupChange {
    /// `mkdir` on cgroupfs.
    Mkdir,
    /// `rmdir` on cgroupfs.
    Rmdir,
}

/// How a source came to know of a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Found by the scan at start: it existed before ctwatch.
    Existing,
    /// Seen as it happened (or found by a resync scan after a loss).
    Live,
}

/// One cgroup created or removed in the watched hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupEvent {
    /// Created or removed.
    pub change: CgroupChange,
    /// Found at start or seen live.
    pub origin: Origin,
    /// The full 64-bit cgroup ID; 0 when the directory vanished before it could be read.
    pub cgroup_id: u64,
    /// The path relative to the hierarchy root, starting with `/`.
    pub path: String,
    /// The directory's ctime in ns since the Unix epoch (0 if unknown).
    pub ctime_ns: u64,
    /// When the source observed it.
    pub observed: SystemTime,
    /// When the kernel made the change, if the source knows (eBPF does).
    pub kernel_time: Option<SystemTime>,
}

/// What the kernel saw a process in a container cgroup do (the eBPF process
/// events). `cgroup_id` is the task's cgroup in the default (unified)
/// hierarchy: on a hybrid host, not the tracked hierarchy's ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessMessage {
    /// The first exec in a container's cgroups (the container's own process starting).
    Exec {
        /// The task's cgroup ID (unified hierarchy).
        cgroup_id: u64,
        /// The process (its thread group ID, host PID namespace).
        pid: u32,
        /// When the kernel ran the exec.
        time: SystemTime,
        /// The file executed, as the exec named it.
        exe: String,
        /// The new `argv[0]`.
        argv0: String,
    },
    /// A process (thread group leader) in a container cgroup exited.
    Exit {
        /// The task's cgroup ID (unified hierarchy).
        cgroup_id: u64,
        /// The process.
        pid: u32,
        /// When it exited (kernel time).
        time: SystemTime,
        /// Its exit status, when it exited normally.
        exit_code: Option<i32>,
        /// The signal that killed it, when one did.
        exit_signal: Option<i32>,
    },
    /// The OOM killer chose a task in a container cgroup.
    OomKill {
        /// The victim's cgroup ID (unified hierarchy).
        cgroup_id: u64,
        /// The victim's process (thread group ID).
        pid: u32,
        /// When (kernel time).
        time: SystemTime,
    },
}

/// What a source sends the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceMessage {
    /// Cgroup changes, in kernel order.
    Events(Vec<CgroupEvent>),
    /// The scan at start is complete: every existing container has been sent.
    ScanComplete,
    /// Events were lost: this is every cgroup present now (as `Mkdir`s).
    /// The tracker reconciles its store against it.
    Resync(Vec<CgroupEvent>),
    /// Changes in a mirror hierarchy (the unified one on a hybrid host): not
    /// tracked, but their IDs are what `bpf_get_current_cgroup_id()` returns.
    Mirror(Vec<CgroupEvent>),
    /// What the runtime hook saw (a container about to be created, its init
    /// starting or exiting).
    Hook(Box<HookMessage>),
    /// What container processes did, as the kernel saw it (the eBPF process events).
    Process(Vec<ProcessMessage>),
    /// A kernel source stopped sending: its thread ended while the agent ran
    /// (other senders, such as the hook, may still hold the channel open, so
    /// the end is a message rather than a disconnection).
    Ended {
        /// Which source (`ebpf`, `inotify`).
        source: &'static str,
        /// Why, in words.
        why: String,
    },
}
