//! Transforms: what happens between the sources and the sinks, in order.
//!
//! ```text
//! inbox ──▶ tracker ──▶ enrichment gate ──▶ hook join ──▶ lifecycle ──▶ sinks
//!           (cgroups     (creates wait for    (the hook's findings (container_start
//!            in, events   the runtimes'        into the store and   after the create)
//!            out, store)  answer or deadline)  the events)
//! ```
//!
//! - [`tracker`]: cgroup changes in, container events out; keeps the store.
//! - [`gate`]: the enrichment gate.
//! - [`hook_join`]: joins the runtime hook's findings onto containers.
//! - [`lifecycle`]: `container_start`, once per container, after its create.
//!
//! Each event transform implements [`Transform`] and reads time only from
//! the [`Cx`] it is given (the agent's injected clock), so its deadlines are
//! unit-tested without a kernel and without sleeping.

pub mod gate;
pub mod hook_join;
pub mod lifecycle;
pub mod tracker;

use std::time::{Instant, SystemTime};

use ctwatch::{ContainerEvent, Tracker};

/// What a transform may use besides its own state.
pub struct Cx<'a> {
    /// Now (monotonic, from the injected clock).
    pub now: Instant,
    /// Now (wall time, from the injected clock), for events a transform makes.
    pub wall: SystemTime,
    /// The store's one writer, for transforms that change what is known of a container.
    pub tracker: &'a mut Tracker,
}

impl<'a> Cx<'a> {
    /// A context reading the tracker's clock.
    pub fn new(tracker: &'a mut Tracker) -> Self {
        let clock = tracker.clock().clone();
        Cx { now: clock.now(), wall: clock.wall(), tracker }
    }
}

/// A stage events pass through, in order; it may hold some back until a deadline.
pub trait Transform {
    /// Takes every event in `input` (leaving it empty); what is ready goes to `out`, in order.
    fn push(&mut self, cx: &mut Cx<'_>, input: &mut Vec<ContainerEvent>, out: &mut Vec<ContainerEvent>);
    /// Releases into `out` what is due by `cx.now` (call before `push`, so older events go first).
    fn tick(&mut self, cx: &mut Cx<'_>, out: &mut Vec<ContainerEvent>);
    /// When `tick` next has something to release, if ever.
    fn next_due(&self) -> Option<Instant>;
}
