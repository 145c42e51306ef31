//! Sinks: where what the transforms let out goes. Each sink takes
//! [`Output`]s from the agent's loop without blocking it: it has its own
//! bounded queue and a stated overflow policy.
//!
//! - [`hub`]: Watch and `watch` subscribers (per-subscriber bounded queues;
//!   a full one drops that subscriber, which re-subscribes and gets the
//!   current state first).
//! - [`pinned_map`]: the pinned BPF map of container cgroups, fed by
//!   membership changes on its own thread (a full queue is counted and
//!   repaired by rebuilding the map from the store).
//! - [`metrics`]: the pipeline's counters (counting never blocks, no queue).
//! - [`nats`]: every journaled event into NATS JetStream, read from the
//!   journal after its acked cursor on a thread of its own (never on the
//!   event path: its backlog is the journal, bounded by its retention).
//!
//! A new sink (the journal, NATS) is a module here implementing [`Sink`],
//! added to the list in `crate::agent`.

pub mod hub;
pub mod journal;
pub mod metrics;
pub mod nats;
pub mod pinned_map;

use ctwatch::sources::CgroupEvent;
use ctwatch::{ContainerEvent, MembershipChange};

/// What sinks are given, in the order it happened.
#[derive(Debug, Clone, Copy)]
pub enum Output<'a> {
    /// Events ready to go out, in order.
    Events(&'a [ContainerEvent]),
    /// Container cgroups recorded or forgotten (roots and sub-cgroups), made
    /// after the store's lock was released.
    Membership(&'a [MembershipChange]),
    /// Changes in the mirror (unified) hierarchy on a hybrid host.
    Mirror(&'a [CgroupEvent]),
    /// The scan at start is applied.
    ScanComplete,
}

/// A destination. `take` must not block: queue, or apply the overflow policy.
pub trait Sink: Send {
    /// Its name, in logs and in `ctwatch_queue_overflows_total{queue}`.
    fn name(&self) -> &'static str;
    /// Takes what the transforms let out (a sink ignores what it has no use for).
    fn take(&mut self, output: Output<'_>);
    /// Called on every turn of the agent's loop (at least every 250 ms), to
    /// repair what an overflow lost once the queue has room.
    fn flush(&mut self) {}
    /// The agent is stopping: flush and end (called once, last).
    fn close(&mut self) {}
}
