//! The tracker: turns cgroup changes into container events and keeps the store.
//!
//! A container's root cgroup `mkdir` makes a `container_create` (or an
//! `existing_container` when the scan at start found it), its `rmdir` a
//! `container_remove`; sub-cgroups are recorded against their container and
//! make no event. Duplicate reports of the same cgroup are dropped, so each
//! container is announced exactly once however its cgroup was learned.
//!
//! No I/O happens under the store's lock: cgroup paths are classified (which
//! may `stat` the runtimes' state directories) before the lock is taken, and
//! [`CgroupObserver`]s (the pinned BPF map) are told after it is released.
//! Time is read from an injected [`Clock`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use tracing::debug;

use crate::classify::{classify, Classification};
use crate::clock::{self, Clock};
use crate::container::{Container, ContainerState, PodInfo};
use crate::event::{ContainerEvent, EventKind};
use crate::sources::{CgroupChange, CgroupEvent, Origin};
use crate::state_dirs::StateDirs;
use crate::store::Store;

/// The store, shared between the tracker (the only writer) and readers.
#[derive(Debug, Clone, Default)]
pub struct SharedStore(Arc<RwLock<Store>>);

impl SharedStore {
    /// Wraps a store.
    pub fn new(store: Store) -> Self {
        SharedStore(Arc::new(RwLock::new(store)))
    }

    /// Reads the store (a poisoned lock is still readable: the store is never left half-updated).
    pub fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Learns of every container cgroup the tracker records or forgets (roots
/// and sub-cgroups), for example to keep a BPF map of container cgroups.
/// Called after the store's lock is released, on the tracker's thread: an
/// observer that does I/O should hand the change to its own thread.
pub trait CgroupObserver: Send {
    /// `cgroup_id` (0 if unread) at `path` now belongs to `container`.
    fn cgroup_added(&mut self, cgroup_id: u64, path: &str, container: &Container, is_root: bool);
    /// `cgroup_id` at `path` is gone.
    fn cgroup_removed(&mut self, cgroup_id: u64, path: &str);
}

/// A container cgroup the tracker recorded or forgot, as observers learn of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// `cgroup_id` (0 if unread) at `path` now belongs to `container`.
    Added {
        /// The cgroup's ID.
        cgroup_id: u64,
        /// Its path.
        path: String,
        /// The container it belongs to.
        container: Arc<Container>,
        /// True for the container's root cgroup.
        is_root: bool,
    },
    /// `cgroup_id` at `path` is gone.
    Removed {
        /// The cgroup's ID.
        cgroup_id: u64,
        /// Its path.
        path: String,
    },
}

impl MembershipChange {
    /// Tells `observer` of this change.
    pub fn tell(&self, observer: &mut dyn CgroupObserver) {
        match self {
            MembershipChange::Added { cgroup_id, path, container, is_root } => {
                observer.cgroup_added(*cgroup_id, path, container, *is_root)
            }
            MembershipChange::Removed { cgroup_id, path } => observer.cgroup_removed(*cgroup_id, path),
        }
    }
}

/// Turns [`CgroupEvent`]s into [`ContainerEvent`]s.
pub struct Tracker {
    store: SharedStore,
    state_dirs: Box<dyn StateDirs>,
    observers: Vec<Box<dyn CgroupObserver>>,
    clock: Arc<dyn Clock>,
    /// Membership changes kept for [`Tracker::take_changes`], when asked for.
    recorded: Option<Vec<MembershipChange>>,
}

impl Tracker {
    /// A tracker over `store`, confirming ambiguous names with `state_dirs`.
    pub fn new(store: SharedStore, state_dirs: Box<dyn StateDirs>) -> Self {
        Tracker { store, state_dirs, observers: Vec::new(), clock: clock::system(), recorded: None }
    }

    /// The same tracker keeping every membership change until
    /// [`Tracker::take_changes`] (which the caller must call after each batch).
    pub fn recording_changes(mut self) -> Self {
        self.recorded = Some(Vec::new());
        self
    }

    /// The membership changes made since the last call (empty unless
    /// [`Tracker::recording_changes`]).
    pub fn take_changes(&mut self) -> Vec<MembershipChange> {
        self.recorded.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The same tracker reading time from `clock` (grace periods).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The clock it reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Every live container cgroup now, as `Added` changes (what an observer
    /// that lost track rebuilds from).
    pub fn live_memberships(&self) -> Vec<MembershipChange> {
        live_memberships(&self.store)
    }

    /// Adds an observer of container cgroups; it is first told of those already known.
    pub fn add_observer(&mut self, mut observer: Box<dyn CgroupObserver>) {
        for change in self.live_memberships() {
            change.tell(observer.as_mut());
        }
        self.observers.push(observer);
    }

    /// The store this tracker keeps.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Applies a batch of cgroup changes, appending the resulting events to `out`.
    pub fn apply(&mut self, events: &[CgroupEvent], out: &mut Vec<ContainerEvent>) {
        let now = self.clock.now();
        // Classified before the lock: classifying may stat state directories.
        let classes: Vec<Option<Classification>> = events
            .iter()
            .map(|e| match e.change {
                CgroupChange::Mkdir => classify(&e.path, self.state_dirs.as_ref()),
                CgroupChange::Rmdir => None,
            })
            .collect();
        let mut changes = Vec::new();
        {
            let store = self.store.clone();
            let mut store = store.write();
            store.expire(now);
            let mut ctx = Ctx { store: &mut store, changes: &mut changes, out, now };
            for (event, class) in events.iter().zip(classes) {
                match event.change {
                    CgroupChange::Mkdir => ctx.on_mkdir(event, class),
                    CgroupChange::Rmdir => ctx.on_rmdir(event),
                }
            }
        }
        for change in &changes {
            for o in self.observers.iter_mut() {
                change.tell(o.as_mut());
            }
        }
        if let Some(recorded) = &mut self.recorded {
            recorded.append(&mut changes);
        }
    }

    /// After a source lost events: `present` is every cgroup there is now (as
    /// `Mkdir`s). Containers whose cgroups are gone are removed, new ones are
    /// created, and nothing known and still present is reported again.
    pub fn reconcile(&mut self, present: &[CgroupEvent], out: &mut Vec<ContainerEvent>) {
        let by_path: HashMap<&str, u64> = present.iter().map(|e| (e.path.as_str(), e.cgroup_id)).collect();
        let gone: Vec<CgroupEvent> = {
            let store = self.store.read();
            let mut gone: Vec<(String, u64)> = store
                .live_cgroups()
                .filter(|(path, id, _)| by_path.get(path).is_none_or(|now_id| *id != 0 && now_id != id))
                .map(|(path, id, _)| (path.to_string(), id))
                .collect();
            // Deepest first, as the kernel removes them.
            gone.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| b.0.cmp(&a.0)));
            gone.into_iter()
                .map(|(path, cgroup_id)| CgroupEvent {
                    change: CgroupChange::Rmdir,
                    origin: Origin::Live,
                    cgroup_id,
                    path,
                    ctime_ns: 0,
                    observed: self.clock.wall(),
                    kernel_time: None,
                })
                .collect()
        };
        if !gone.is_empty() {
            debug!(count = gone.len(), "resync: cgroups gone while events were lost");
        }
        self.apply(&gone, out);
        self.apply(present, out);
    }

    /// Changes what is known about container `id` (its incarnation whose root
    /// cgroup is `cgroup_id`), for example after enrichment. Returns the new record.
    pub fn update_container(
        &mut self,
        id: &str,
        cgroup_id: u64,
        update: impl FnOnce(&mut Container),
    ) -> Option<Arc<Container>> {
        let mut store = self.store.write();
        let current = store.get(id).filter(|c| c.cgroup_id == cgroup_id)?;
        let mut container = (**current).clone();
        update(&mut container);
        store.update_container(container)
    }

    /// Forgets removed containers whose grace period is over (by the tracker's clock).
    pub fn expire(&mut self) -> usize {
        let now = self.clock.now();
        self.store.write().expire(now)
    }

    /// When the next removed container or cgroup is due to be forgotten.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.store.read().next_expiry()
    }
}

/// Every live container cgroup in `store` now, as `Added` changes (copied
/// under the read lock, no I/O): what an observer that lost track rebuilds from.
pub fn live_memberships(store: &SharedStore) -> Vec<MembershipChange> {
    let store = store.read();
    store
        .live_cgroups()
        .filter_map(|(path, cgroup_id, m)| {
            let container = store.get(&m.container_id)?.clone();
            Some(MembershipChange::Added { cgroup_id, path: path.to_string(), container, is_root: m.is_root })
        })
        .collect()
}

/// One batch's working state (under the store's write lock: no I/O here).
struct Ctx<'a> {
    store: &'a mut Store,
    changes: &'a mut Vec<MembershipChange>,
    out: &'a mut Vec<ContainerEvent>,
    now: Instant,
}

impl Ctx<'_> {
    fn on_mkdir(&mut self, event: &CgroupEvent, class: Option<Classification>) {
        if let Some((_, known_id)) = self.store.cgroup_at(&event.path) {
            if known_id == event.cgroup_id {
                return; // reported twice
            }
            // A new directory under a known name: the old one's rmdir was missed.
            let stale = CgroupEvent { change: CgroupChange::Rmdir, cgroup_id: known_id, ..event.clone() };
            self.on_rmdir(&stale);
        }
        if self.store.cgroup(event.cgroup_id).is_some_and(|m| *m.path == *event.path) {
            return;
        }
        match class {
            Some(c) if c.is_root => self.add_root(event, c),
            Some(c) => {
                if self.store.get(&c.container_id).is_none_or(|k| k.state == ContainerState::Removed) {
                    // Its root was never reported (lost, or outside the watched tree):
                    // announce the container from what the sub-cgroup's path says.
                    let root = CgroupEvent { cgroup_id: 0, path: c.root_path.clone(), ctime_ns: 0, ..event.clone() };
                    self.add_root(&root, Classification { is_root: true, ..c.clone() });
                }
                self.add_sub(event, &c.container_id);
            }
            None => {
                if let Some(container) = self.store.container_above(&event.path) {
                    let id = container.id.clone();
                    self.add_sub(event, &id);
                }
            }
        }
    }

    fn add_sub(&mut self, event: &CgroupEvent, container_id: &str) {
        self.store.insert_cgroup(event.cgroup_id, &event.path, container_id, false);
        if let Some(c) = self.store.get(container_id) {
            self.changes.push(MembershipChange::Added {
                cgroup_id: event.cgroup_id,
                path: event.path.clone(),
                container: c.clone(),
                is_root: false,
            });
        }
    }

    fn add_root(&mut self, event: &CgroupEvent, c: Classification) {
        if let Some(existing) = self.store.get(&c.container_id) {
            if existing.state != ContainerState::Removed {
                // Same container seen at a second root path: keep the first, record this one.
                debug!(id = %c.container_id, path = %event.path, "second root cgroup for a live container");
                let id = existing.id.clone();
                self.add_sub(event, &id);
                return;
            }
        }
        let (kind, state) = match event.origin {
            Origin::Existing => (EventKind::ExistingContainer, ContainerState::Existing),
            Origin::Live => (EventKind::ContainerCreate, ContainerState::Created),
        };
        let container = self.store.insert_container(Container {
            cgroup_id: event.cgroup_id,
            cgroup_path: event.path.clone(),
            ctime_ns: event.ctime_ns,
            pod: PodInfo { uid: c.pod_uid.unwrap_or_default(), ..PodInfo::default() },
            state,
            ..Container::new(c.container_id, c.runtime)
        });
        self.changes.push(MembershipChange::Added {
            cgroup_id: event.cgroup_id,
            path: event.path.clone(),
            container: container.clone(),
            is_root: true,
        });
        self.out.push(ContainerEvent {
            time: event.observed,
            kind,
            cgroup_id: event.cgroup_id,
            container,
            kernel_time: event.kernel_time,
            enriched: None,
            seq: 0,
            late: false,
        });
    }

    fn on_rmdir(&mut self, event: &CgroupEvent) {
        // A source that could not give the whole path (eBPF beyond its walk's
        // depth) still gives the ID, which names one cgroup for ever.
        let path = match self.store.cgroup_at(&event.path) {
            None if event.cgroup_id != 0 => match self.store.cgroup(event.cgroup_id) {
                Some(m) if self.store.cgroup_at(&m.path).is_some_and(|(_, id)| id == event.cgroup_id) => {
                    m.path.to_string()
                }
                _ => return,
            },
            _ => event.path.clone(),
        };
        let Some((removed, container)) = self.store.remove_cgroup(&path, self.now) else {
            return;
        };
        self.changes.push(MembershipChange::Removed { cgroup_id: removed.cgroup_id, path: path.clone() });
        if let Some(container) = container {
            self.out.push(ContainerEvent {
                time: event.observed,
                kind: EventKind::ContainerRemove,
                cgroup_id: container.cgroup_id,
                container,
                kernel_time: event.kernel_time,
                enriched: None,
                seq: 0,
                late: false,
            });
        }
    }
}
