//! Sources: where the agent's input comes from. Each runs on its own thread
//! and sends [`SourceMessage`]s into ONE bounded inbox, which the agent's
//! loop (`crate::agent`) reads.
//!
//! - [`kernel`]: the scan at start, then eBPF or inotify (cgroup mkdir/rmdir);
//!   its end is a [`SourceMessage::Ended`], so `--source auto` can fall back.
//! - [`hook`]: the runtime hook (fanotify on the runtimes' binaries).
//! - [`process`]: the eBPF process events (first exec, exits, OOM kills), with the eBPF source.
//!
//! Overflow policy of the inbox: a full inbox blocks the sender. The kernel
//! sources then stop reading, the kernel's own buffers (the eBPF ring
//! buffer, the inotify queue) fill and overflow; those losses are counted
//! (`ctwatch_ring_buffer_dropped_total`, inotify overflows) and repaired by a
//! resync. The hook waits, bounded by its own answer deadline.

pub mod hook;
pub mod kernel;
pub mod process;

use crossbeam_channel::{Receiver, Sender};
use ctwatch::sources::SourceMessage;

/// How many messages (each a batch of changes) the inbox holds.
pub const INBOX_CAPACITY: usize = 1024;

/// The bounded inbox every source sends into.
pub fn inbox() -> (Sender<SourceMessage>, Receiver<SourceMessage>) {
    crossbeam_channel::bounded(INBOX_CAPACITY)
}
