//! The tracker stage: cgroup changes from the inbox in, container events
//! out, the store kept (see [`ctwatch::tracker`]); removed containers are
//! forgotten when their grace period is over by the injected clock.

use std::sync::Arc;
use std::time::Instant;

use ctwatch::sources::CgroupEvent;
use ctwatch::{ContainerEvent, MembershipChange, Tracker};

use crate::metrics::Metrics;

/// The tracker, as the first transform.
pub struct TrackerStage {
    tracker: Tracker,
    metrics: Arc<Metrics>,
}

impl TrackerStage {
    /// A stage over `tracker` (which should be [`Tracker::recording_changes`]
    /// for [`TrackerStage::take_changes`] to report anything).
    pub fn new(tracker: Tracker, metrics: Arc<Metrics>) -> Self {
        TrackerStage { tracker, metrics }
    }

    /// The tracker (the store's one writer).
    pub fn tracker(&mut self) -> &mut Tracker {
        &mut self.tracker
    }

    /// Cgroup changes, in kernel order.
    pub fn apply(&mut self, batch: &[CgroupEvent], out: &mut Vec<ContainerEvent>) {
        self.tracker.apply(batch, out);
    }

    /// After a loss: `present` is every cgroup now.
    pub fn resync(&mut self, present: &[CgroupEvent], out: &mut Vec<ContainerEvent>) {
        self.metrics.resync();
        self.tracker.reconcile(present, out);
    }

    /// Forgets removed containers whose grace period is over.
    pub fn tick(&mut self) -> usize {
        self.tracker.expire()
    }

    /// When the next removed container is due to be forgotten.
    pub fn next_due(&self) -> Option<Instant> {
        self.tracker.next_expiry()
    }

    /// The container cgroups recorded or forgotten since the last call (for the pinned map).
    pub fn take_changes(&mut self) -> Vec<MembershipChange> {
        self.tracker.take_changes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, SystemTime};

    use ctwatch::sources::{CgroupChange, Origin};
    use ctwatch::state_dirs::PathOnly;
    use ctwatch::{Clock, EventKind, ManualClock, SharedStore, Store};

    use super::*;

    pub(crate) fn cgroup(change: CgroupChange, id: u64, path: &str) -> CgroupEvent {
        CgroupEvent {
            change,
            origin: Origin::Live,
            cgroup_id: id,
            path: path.into(),
            ctime_ns: 1,
            observed: SystemTime::UNIX_EPOCH,
            kernel_time: None,
        }
    }

    #[test]
    fn grace_expiry_follows_the_injected_clock() {
        let clock = ManualClock::new();
        let store = SharedStore::new(Store::new(Duration::from_secs(5)));
        let tracker =
            Tracker::new(store.clone(), Box::new(PathOnly)).with_clock(Arc::new(clock.clone())).recording_changes();
        let mut stage = TrackerStage::new(tracker, Arc::new(Metrics::new()));
        let path = format!("/docker/{}", "c".repeat(64));
        let mut out = Vec::new();
        stage.apply(&[cgroup(CgroupChange::Mkdir, 7, &path), cgroup(CgroupChange::Rmdir, 7, &path)], &mut out);
        assert_eq!(
            out.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [EventKind::ContainerCreate, EventKind::ContainerRemove]
        );
        assert_eq!(stage.take_changes().len(), 2, "one cgroup added, then removed");
        assert!(stage.take_changes().is_empty());
        assert_eq!(stage.next_due(), Some(clock.now() + Duration::from_secs(5)));
        clock.advance(Duration::from_millis(4999));
        assert_eq!(stage.tick(), 0, "still within grace");
        assert!(store.read().get(&"c".repeat(64)).is_some());
        clock.advance(Duration::from_millis(1));
        assert_eq!(stage.tick(), 1, "forgotten at the end of grace, without sleeping");
        assert!(store.read().is_empty() && stage.next_due().is_none());
    }
}
