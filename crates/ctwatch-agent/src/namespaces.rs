//! Which process is each container's init, and which mount and network
//! namespaces it is in, found from cgroupfs and `/proc` on first use and
//! kept (so there is one cached PID per mount namespace).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ctwatch::proc::{self, Namespace};
use ctwatch::{Container, ContainerState, Store};

/// How long "this container has no process yet" is believed before asking again.
const RETRY_EMPTY: Duration = Duration::from_millis(100);

/// A container's init process and its namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespaces {
    /// The init process, as the host sees its PID.
    pub init_pid: u32,
    /// Its mount namespace's inode number.
    pub mount_ns: u64,
    /// Its network namespace's inode number.
    pub net_ns: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    cgroup_id: u64,
    found: Option<Namespaces>,
    checked: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    by_container: HashMap<Arc<str>, Entry>,
    by_mount_ns: HashMap<u64, Arc<str>>,
}

/// The cache; cheap to share.
#[derive(Debug)]
pub struct NamespaceCache {
    proc_root: PathBuf,
    cgroup_mount: PathBuf,
    inner: Mutex<Inner>,
}

impl NamespaceCache {
    /// A cache reading `/proc` at `proc_root` and cgroups under `cgroup_mount`.
    pub fn new(proc_root: &Path, cgroup_mount: &Path) -> Self {
        NamespaceCache {
            proc_root: proc_root.to_path_buf(),
            cgroup_mount: cgroup_mount.to_path_buf(),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `container`'s init and namespaces, or `None` while it has no process
    /// (created but not started) or once it is removed.
    pub fn of(&self, container: &Container) -> Option<Namespaces> {
        if container.state == ContainerState::Removed {
            return None;
        }
        let now = Instant::now();
        if let Some(e) = self.lock().by_container.get(container.id.as_str()) {
            if e.cgroup_id == container.cgroup_id && (e.found.is_some() || now < e.checked + RETRY_EMPTY) {
                return e.found;
            }
        }
        let found = self.read(container);
        let mut inner = self.lock();
        let id: Arc<str> = Arc::from(container.id.as_str());
        if let Some(ns) = found {
            inner.by_mount_ns.insert(ns.mount_ns, id.clone());
        }
        inner.by_container.insert(id, Entry { cgroup_id: container.cgroup_id, found, checked: now });
        found
    }

    /// What the cache already knows of `container`, without reading `/proc`.
    pub fn cached(&self, container: &Container) -> Option<Namespaces> {
        let inner = self.lock();
        let e = inner.by_container.get(container.id.as_str())?;
        (e.cgroup_id == container.cgroup_id).then_some(e.found).flatten()
    }

    fn read(&self, container: &Container) -> Option<Namespaces> {
        let dir = ctwatch::cgroupfs::absolute_path(&self.cgroup_mount, &container.cgroup_path);
        let init_pid = proc::container_init_pid(&self.proc_root, &dir)?;
        let mount_ns = proc::namespace_of(&self.proc_root, init_pid, Namespace::Mount).ok()?;
        let net_ns = proc::namespace_of(&self.proc_root, init_pid, Namespace::Net).ok()?;
        Some(Namespaces { init_pid, mount_ns, net_ns })
    }

    /// The live container whose init is in mount namespace `mount_ns`:
    /// from the cache, else after learning the namespaces of those not known yet.
    pub fn container_in_mount_ns(&self, mount_ns: u64, store: &Store) -> Option<Arc<Container>> {
        let known = self.lock().by_mount_ns.get(&mount_ns).cloned();
        if let Some(c) = known.and_then(|id| store.get(&id).cloned()) {
            if self.of(&c).is_some_and(|ns| ns.mount_ns == mount_ns) {
                return Some(c);
            }
        }
        self.forget_gone(store);
        store.live().find(|c| self.of(c).is_some_and(|ns| ns.mount_ns == mount_ns)).cloned()
    }

    /// The init PID to enter `container` by, checked to still be in the
    /// cached mount namespace (a dead init's PID may have been reused).
    pub fn live_init(&self, container: &Container) -> Option<Namespaces> {
        let ns = self.of(container)?;
        let now = proc::namespace_of(&self.proc_root, ns.init_pid, Namespace::Mount).ok();
        if now == Some(ns.mount_ns) {
            return Some(ns);
        }
        self.lock().by_container.remove(container.id.as_str());
        self.of(container)
    }

    /// Drops entries of containers the store no longer has live.
    fn forget_gone(&self, store: &Store) {
        let mut inner = self.lock();
        let alive = |id: &str, cgroup_id: u64| {
            store.get(id).is_some_and(|c| c.cgroup_id == cgroup_id && c.state != ContainerState::Removed)
        };
        inner.by_container.retain(|id, e| alive(id, e.cgroup_id));
        let Inner { by_container, by_mount_ns } = &mut *inner;
        by_mount_ns.retain(|_, id| by_container.contains_key(id));
    }
}
