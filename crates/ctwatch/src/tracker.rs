//! The tracker: turns cgroup changes into container events and keeps the store.
//!
//! A container's root cgroup `mkdir` makes a `container_create` (or an
//! `existing_container` when the scan at start found it), its `rmdir` a
//! `container_remove`; sub-cgroups are recorded against their container and
//! make no event. Duplicate reports of the same cgroup are dropped, so each
//! container is announced exactly once however its cgroup was learned.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

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

/// Turns [`CgroupEvent`]s into [`ContainerEvent`]s.
pub struct Tracker {
    store: SharedStore,
    state_dirs: Box<dyn StateDirs>,
}

impl Tracker {
    /// A tracker over `store`, confirming ambiguous names with `state_dirs`.
    pub fn new(store: SharedStore, state_dirs: Box<dyn StateDirs>) -> Self {
        Tracker { store, state_dirs }
    }

    /// The store this tracker keeps.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Applies a batch of cgroup changes, appending the resulting events to `out`.
    pub fn apply(&mut self, events: &[CgroupEvent], out: &mut Vec<ContainerEvent>) {
        let now = Instant::now();
        let mut store = self.store.write();
        store.expire(now);
        for event in events {
            match event.change {
                CgroupChange::Mkdir => self.on_mkdir(&mut store, event, out),
                CgroupChange::Rmdir => on_rmdir(&mut store, event, now, out),
            }
        }
    }

    /// Forgets removed containers whose grace period is over.
    pub fn expire(&mut self) -> usize {
        self.store.write().expire(Instant::now())
    }

    fn on_mkdir(&self, store: &mut Store, event: &CgroupEvent, out: &mut Vec<ContainerEvent>) {
        if let Some((_, known_id)) = store.cgroup_at(&event.path) {
            if known_id == event.cgroup_id {
                return; // reported twice
            }
            // A new directory under a known name: the old one's rmdir was missed.
            let stale = CgroupEvent {
                change: CgroupChange::Rmdir,
                cgroup_id: known_id,
                ..event.clone()
            };
            on_rmdir(store, &stale, Instant::now(), out);
        }
        if store
            .cgroup(event.cgroup_id)
            .is_some_and(|m| *m.path == *event.path)
        {
            return;
        }
        match classify(&event.path, self.state_dirs.as_ref()) {
            Some(c) if c.is_root => add_root(store, event, c, out),
            Some(c) => {
                if store
                    .get(&c.container_id)
                    .is_none_or(|k| k.state == ContainerState::Removed)
                {
                    // Its root was never reported (lost, or outside the watched tree):
                    // announce the container from what the sub-cgroup's path says.
                    let root = root_event_for(event, &c);
                    add_root(
                        store,
                        &root,
                        Classification {
                            is_root: true,
                            ..c.clone()
                        },
                        out,
                    );
                }
                store.insert_cgroup(event.cgroup_id, &event.path, &c.container_id, false);
            }
            None => {
                if let Some(container) = store.container_above(&event.path) {
                    let id = container.id.clone();
                    store.insert_cgroup(event.cgroup_id, &event.path, &id, false);
                }
            }
        }
    }
}

fn add_root(
    store: &mut Store,
    event: &CgroupEvent,
    c: Classification,
    out: &mut Vec<ContainerEvent>,
) {
    if let Some(existing) = store.get(&c.container_id) {
        if existing.state != ContainerState::Removed {
            // Same container seen at a second root path: keep the first, record this one.
            debug!(id = %c.container_id, path = %event.path, "second root cgroup for a live container");
            let id = existing.id.clone();
            store.insert_cgroup(event.cgroup_id, &event.path, &id, false);
            return;
        }
    }
    let (kind, state) = match event.origin {
        Origin::Existing => (EventKind::ExistingContainer, ContainerState::Existing),
        Origin::Live => (EventKind::ContainerCreate, ContainerState::Created),
    };
    let container = store.insert_container(Container {
        id: c.container_id,
        runtime: c.runtime,
        cgroup_id: event.cgroup_id,
        cgroup_path: event.path.clone(),
        ctime_ns: event.ctime_ns,
        image: String::new(),
        image_digest: String::new(),
        name: String::new(),
        pod: PodInfo {
            uid: c.pod_uid.unwrap_or_default(),
            ..PodInfo::default()
        },
        state,
    });
    out.push(ContainerEvent {
        time: event.observed,
        kind,
        cgroup_id: event.cgroup_id,
        container,
    });
}

fn root_event_for(sub: &CgroupEvent, c: &Classification) -> CgroupEvent {
    let mount_relative = c.root_path.clone();
    CgroupEvent {
        cgroup_id: 0,
        path: mount_relative,
        ctime_ns: 0,
        ..sub.clone()
    }
}

fn on_rmdir(store: &mut Store, event: &CgroupEvent, now: Instant, out: &mut Vec<ContainerEvent>) {
    let Some((_, Some(container))) = store.remove_cgroup(&event.path, now) else {
        return;
    };
    out.push(ContainerEvent {
        time: event.observed,
        kind: EventKind::ContainerRemove,
        cgroup_id: container.cgroup_id,
        container,
    });
}
