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
