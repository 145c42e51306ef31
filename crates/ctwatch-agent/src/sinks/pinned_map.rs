//! The pinned BPF map of container cgroups as a sink. Membership changes
//! (made by the tracker after the store's lock is released) go into a
//! bounded queue; the map's syscalls run on this sink's own thread, never
//! on the tracker's and never under the store's lock.
//!
//! Overflow policy: a change the queue cannot take is counted
//! (`ctwatch_queue_overflows_total{queue="pinned_map"}`) and the map is
//! rebuilt from the store as soon as the queue has room. Once, at start,
//! the loop waits for the map to hold the scan's containers before the scan
//! is called complete.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use ctwatch::sources::CgroupEvent;
use ctwatch::{CgroupObserver, MembershipChange, SharedStore};
use ctwatch_ebpf::ContainersMap;
use tracing::warn;

use super::{Output, Sink};
use crate::metrics::Metrics;

/// How many map operations may wait.
pub const QUEUE_CAPACITY: usize = 16_384;

/// How long the loop waits, once at start, for the map to hold the scan's containers.
const SCAN_FLUSH_WAIT: Duration = Duration::from_secs(10);

enum Op {
    Change(MembershipChange),
    Mirror(Vec<CgroupEvent>),
    /// The scan at start is applied: remove what a previous run left, then say so.
    Prune(Sender<()>),
    /// Every live container cgroup now: the map is made to match.
    Rebuild(Vec<MembershipChange>),
}

/// What the sink does to the map (the pinned BPF map, or a fake in tests).
pub trait PinnedMap: Send + 'static {
    /// Applies membership changes (puts and deletes).
    fn observer(&self) -> Box<dyn CgroupObserver>;
    /// Applies changes seen in the mirror (unified) hierarchy.
    fn apply_mirror(&self, events: &[CgroupEvent]);
    /// Removes what a previous run left and this one has not written.
    fn prune_stale(&self) -> usize;
}

impl PinnedMap for ContainersMap {
    fn observer(&self) -> Box<dyn CgroupObserver> {
        ContainersMap::observer(self)
    }

    fn apply_mirror(&self, events: &[CgroupEvent]) {
        ContainersMap::apply_mirror(self, events)
    }

    fn prune_stale(&self) -> usize {
        ContainersMap::prune_stale(self)
    }
}

/// Keeps the pinned map.
pub struct PinnedMapSink {
    tx: Option<Sender<Op>>,
    thread: Option<thread::JoinHandle<()>>,
    store: SharedStore,
    metrics: Arc<Metrics>,
    /// Changes were lost: rebuild when there is room.
    lost: bool,
}

impl PinnedMapSink {
    /// Starts the map's thread; `store` is what a rebuild reads.
    pub fn start(map: impl PinnedMap, store: SharedStore, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        Self::with_capacity(map, QUEUE_CAPACITY, store, metrics)
    }

    /// [`PinnedMapSink::start`] with a queue of `capacity` operations.
    pub fn with_capacity(
        map: impl PinnedMap,
        capacity: usize,
        store: SharedStore,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let mut observer = map.observer();
        let (tx, rx) = crossbeam_channel::bounded::<Op>(capacity);
        let thread = thread::Builder::new().name("pinned-map".into()).spawn(move || {
            // What the map was told, to undo what a rebuild no longer finds.
            let mut told: HashMap<String, u64> = HashMap::new();
            for op in rx {
                match op {
                    Op::Change(change) => {
                        match &change {
                            MembershipChange::Added { cgroup_id, path, .. } => told.insert(path.clone(), *cgroup_id),
                            MembershipChange::Removed { path, .. } => told.remove(path),
                        };
                        change.tell(observer.as_mut());
                    }
                    Op::Mirror(batch) => map.apply_mirror(&batch),
                    Op::Prune(done) => {
                        map.prune_stale();
                        let _ = done.send(());
                    }
                    Op::Rebuild(live) => {
                        let now: HashMap<&str, u64> = live
                            .iter()
                            .filter_map(|c| match c {
                                MembershipChange::Added { cgroup_id, path, .. } => Some((path.as_str(), *cgroup_id)),
                                MembershipChange::Removed { .. } => None,
                            })
                            .collect();
                        for (path, id) in told.iter().filter(|(p, id)| now.get(p.as_str()) != Some(id)) {
                            observer.cgroup_removed(*id, path);
                        }
                        told = now.iter().map(|(p, id)| (p.to_string(), *id)).collect();
                        for change in &live {
                            change.tell(observer.as_mut());
                        }
                    }
                }
            }
            // `map` and `observer` dropped here: the map is unpinned unless kept.
        })?;
        Ok(PinnedMapSink { tx: Some(tx), thread: Some(thread), store, metrics, lost: false })
    }

    /// After an overflow, queues a rebuild from the store when there is room.
    fn repair(&mut self) {
        let (true, Some(tx)) = (self.lost, &self.tx) else { return };
        if tx.is_full() {
            return;
        }
        let live = ctwatch::tracker::live_memberships(&self.store);
        match tx.try_send(Op::Rebuild(live)) {
            Ok(()) => self.lost = false,
            Err(_) => self.metrics.queue_overflow("pinned_map", 1),
        }
    }

    fn send(&mut self, op: Op) {
        self.repair();
        let Some(tx) = &self.tx else { return };
        match tx.try_send(op) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if !self.lost {
                    warn!("the pinned map's queue is full: it will be rebuilt from the store");
                }
                self.metrics.queue_overflow("pinned_map", 1);
                self.lost = true;
            }
            Err(TrySendError::Disconnected(_)) => self.tx = None,
        }
    }
}

impl Sink for PinnedMapSink {
    fn name(&self) -> &'static str {
        "pinned_map"
    }

    fn take(&mut self, output: Output<'_>) {
        match output {
            Output::Membership(changes) => {
                for change in changes {
                    self.send(Op::Change(change.clone()));
                }
            }
            Output::Mirror(batch) => self.send(Op::Mirror(batch.to_vec())),
            Output::ScanComplete => {
                // Once, at start: the map is complete when the scan is called complete.
                let (done, wait) = crossbeam_channel::bounded(1);
                self.send(Op::Prune(done));
                if wait.recv_timeout(SCAN_FLUSH_WAIT).is_err() {
                    warn!("the pinned map is still being filled after {SCAN_FLUSH_WAIT:?}");
                }
            }
            Output::Events(_) => {}
        }
    }

    fn flush(&mut self) {
        self.repair();
    }

    fn close(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for PinnedMapSink {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use ctwatch::sources::CgroupChange;
    use ctwatch::state_dirs::PathOnly;
    use ctwatch::{Container, Store, Tracker};

    use super::*;
    use crate::transforms::tracker::tests::cgroup;

    /// A map that holds what it was told, and whose writes wait while `hold` is locked.
    #[derive(Clone, Default)]
    struct Fake {
        entries: Arc<Mutex<BTreeMap<u64, String>>>,
        hold: Arc<Mutex<()>>,
    }

    impl CgroupObserver for Fake {
        fn cgroup_added(&mut self, cgroup_id: u64, path: &str, _: &Container, _: bool) {
            let _held = self.hold.lock().unwrap();
            self.entries.lock().unwrap().insert(cgroup_id, path.to_string());
        }
        fn cgroup_removed(&mut self, cgroup_id: u64, _: &str) {
            let _held = self.hold.lock().unwrap();
            self.entries.lock().unwrap().remove(&cgroup_id);
        }
    }

    impl PinnedMap for Fake {
        fn observer(&self) -> Box<dyn CgroupObserver> {
            Box::new(self.clone())
        }
        fn apply_mirror(&self, _: &[CgroupEvent]) {}
        fn prune_stale(&self) -> usize {
            0
        }
    }

    #[test]
    fn a_full_queue_is_counted_and_the_map_rebuilt_from_the_store() {
        let store = SharedStore::new(Store::default());
        let mut tracker = Tracker::new(store.clone(), Box::new(PathOnly)).recording_changes();
        let metrics = Arc::new(Metrics::new());
        let fake = Fake::default();
        let mut sink = PinnedMapSink::with_capacity(fake.clone(), 2, store.clone(), metrics.clone()).unwrap();
        // The map is stuck: changes pile up beyond the queue's 2.
        let stuck = fake.hold.lock().unwrap();
        let mut out = Vec::new();
        for i in 0..10u64 {
            let path = format!("/docker/{:064x}", i + 1);
            tracker.apply(&[cgroup(CgroupChange::Mkdir, 100 + i, &path)], &mut out);
            sink.take(Output::Membership(&tracker.take_changes()));
        }
        // One removed while changes were being lost.
        tracker.apply(&[cgroup(CgroupChange::Rmdir, 100, &format!("/docker/{:064x}", 1))], &mut out);
        sink.take(Output::Membership(&tracker.take_changes()));
        assert!(metrics.queue_overflows("pinned_map") >= 7, "{}", metrics.queue_overflows("pinned_map"));
        drop(stuck);
        // The next output finds room: the map is rebuilt from the store.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            sink.flush();
            let want: BTreeMap<u64, String> =
                (1..10u64).map(|i| (100 + i, format!("/docker/{:064x}", i + 1))).collect();
            if *fake.entries.lock().unwrap() == want {
                break;
            }
            assert!(Instant::now() < deadline, "not rebuilt: {:?}", fake.entries.lock().unwrap());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
