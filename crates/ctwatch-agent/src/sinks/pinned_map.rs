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
    pub fn start(map: ContainersMap, store: SharedStore, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        Self::start_with(map.clone(), map.observer(), store, metrics)
    }

    fn start_with(
        map: ContainersMap,
        mut observer: Box<dyn CgroupObserver>,
        store: SharedStore,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded::<Op>(QUEUE_CAPACITY);
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

    fn send(&mut self, op: Op) {
        let Some(tx) = &self.tx else { return };
        if self.lost {
            let live = ctwatch::tracker::live_memberships(&self.store);
            match tx.try_send(Op::Rebuild(live)) {
                Ok(()) => self.lost = false,
                Err(_) => self.metrics.queue_overflow("pinned_map", 1),
            }
        }
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
