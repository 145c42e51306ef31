//! The tracker: turns cgroup changes into container events and keeps the store.
//!
//! A container's root cgroup `mkdir` makes a `container_create` (or an
//! `existing_container` when the scan at start found it), its `rmdir` a
//! `container_remove`; sub-cgroups are recorded against their container and
//! make no event. Duplicate reports of the same cgroup are dropped, so each
//! container is announced exactly once however its cgroup was learned.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Instant, SystemTime};

use tracing::debug;

use crate::classify::{classify, Classification};
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
pub trait CgroupObserver: Send {
    /// `cgroup_id` (0 if unread) at `path` now belongs to `container`.
    fn cgroup_added(&mut self, cgroup_id: u64, path: &str, container: &Container, is_root: bool);
    /// `cgroup_id` at `path` is gone.
    fn cgroup_removed(&mut self, cgroup_id: u64, path: &str);
}

/// Turns [`CgroupEvent`]s into [`ContainerEvent`]s.
pub struct Tracker {
    store: SharedStore,
    state_dirs: Box<dyn StateDirs>,
    observers: Vec<Box<dyn CgroupObserver>>,
}

impl Tracker {
    /// A tracker over `store`, confirming ambiguous names with `state_dirs`.
    pub fn new(store: SharedStore, state_dirs: Box<dyn StateDirs>) -> Self {
        Tracker { store, state_dirs, observers: Vec::new() }
    }

    /// Adds an observer of container cgroups; it is first told of those already known.
    pub fn add_observer(&mut self, mut observer: Box<dyn CgroupObserver>) {
        let store = self.store.read();
        for (path, cgroup_id, m) in store.live_cgroups() {
            if let Some(c) = store.get(&m.container_id) {
                observer.cgroup_added(cgroup_id, path, c, m.is_root);
            }
        }
        drop(store);
        self.observers.push(observer);
    }

    /// The store this tracker keeps.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Applies a batch of cgroup changes, appending the resulting events to `out`.
    pub fn apply(&mut self, events: &[CgroupEvent], out: &mut Vec<ContainerEvent>) {
        let now = Instant::now();
        let store = self.store.clone();
        let mut store = store.write();
        store.expire(now);
        let mut ctx =
            Ctx { store: &mut store, observers: &mut self.observers, state_dirs: self.state_dirs.as_ref(), out };
        for event in events {
            match event.change {
                CgroupChange::Mkdir => ctx.on_mkdir(event),
                CgroupChange::Rmdir => ctx.on_rmdir(event, now),
            }
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
                    observed: SystemTime::now(),
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

    /// Forgets removed containers whose grace period is over.
    pub fn expire(&mut self) -> usize {
        self.store.write().expire(Instant::now())
    }
}

/// One batch's working state.
struct Ctx<'a> {
    store: &'a mut Store,
    observers: &'a mut Vec<Box<dyn CgroupObserver>>,
    state_dirs: &'a dyn StateDirs,
    out: &'a mut Vec<ContainerEvent>,
}

impl Ctx<'_> {
    fn on_mkdir(&mut self, event: &CgroupEvent) {
        if let Some((_, known_id)) = self.store.cgroup_at(&event.path) {
            if known_id == event.cgroup_id {
                return; // reported twice
            }
            // A new directory under a known name: the old one's rmdir was missed.
            let stale = CgroupEvent { change: CgroupChange::Rmdir, cgroup_id: known_id, ..event.clone() };
            self.on_rmdir(&stale, Instant::now());
        }
        if self.store.cgroup(event.cgroup_id).is_some_and(|m| *m.path == *event.path) {
            return;
        }
        match classify(&event.path, self.state_dirs) {
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
            for o in self.observers.iter_mut() {
                o.cgroup_added(event.cgroup_id, &event.path, c, false);
            }
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
        for o in self.observers.iter_mut() {
            o.cgroup_added(event.cgroup_id, &event.path, &container, true);
        }
        self.out.push(ContainerEvent {
            time: event.observed,
            kind,
            cgroup_id: event.cgroup_id,
            container,
            kernel_time: event.kernel_time,
            enriched: None,
        });
    }

    fn on_rmdir(&mut self, event: &CgroupEvent, now: Instant) {
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
        let Some((removed, container)) = self.store.remove_cgroup(&path, now) else {
            return;
        };
        for o in self.observers.iter_mut() {
            o.cgroup_removed(removed.cgroup_id, &path);
        }
        if let Some(container) = container {
            self.out.push(ContainerEvent {
                time: event.observed,
                kind: EventKind::ContainerRemove,
                cgroup_id: container.cgroup_id,
                container,
                kernel_time: event.kernel_time,
                enriched: None,
            });
        }
    }
}
