//! Which process is each container's init, and which mount and network
//! namespaces it is in, found from cgroupfs and `/proc` on first use and
//! kept (so there is one cached PID per mount namespace).
//!
//! The cache holds at most [`NamespaceCache::capacity`] containers: past
//! that, the least recently used entry goes (counted in
//! `ctwatch_namespace_cache_evictions_total`; it is read again from `/proc`
//! when next asked for). `/proc` is never read under the store's lock: the
//! store is only held to copy out the containers to look at.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ctwatch::proc::{self, Namespace};
use ctwatch::{Container, ContainerState, SharedStore};
use lru::LruCache;

use crate::metrics::Metrics;

/// The most containers whose namespaces are kept, by default.
pub const DEFAULT_NAMESPACE_CACHE: usize = 65_536;

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

#[derive(Debug)]
struct Inner {
    by_container: LruCache<Arc<str>, Entry>,
    /// Every mount namespace found in `by_container`, to its container.
    by_mount_ns: HashMap<u64, Arc<str>>,
}

impl Inner {
    /// Keeps `entry` for `id`; true if another container's entry was evicted to make room.
    fn insert(&mut self, id: Arc<str>, entry: Entry) -> bool {
        if let Some(ns) = entry.found {
            self.by_mount_ns.insert(ns.mount_ns, id.clone());
        }
        match self.by_container.push(id.clone(), entry) {
            Some((old_id, old)) => {
                if let Some(ns) = old.found.filter(|ns| entry.found.is_none_or(|new| new.mount_ns != ns.mount_ns)) {
                    self.forget_mount_ns(ns.mount_ns, &old_id);
                }
                old_id != id
            }
            None => false,
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(ns) = self.by_container.pop(id).and_then(|e| e.found) {
            self.forget_mount_ns(ns.mount_ns, id);
        }
    }

    fn forget_mount_ns(&mut self, mount_ns: u64, id: &str) {
        if self.by_mount_ns.get(&mount_ns).is_some_and(|owner| &**owner == id) {
            self.by_mount_ns.remove(&mount_ns);
        }
    }
}

/// The cache; cheap to share.
pub struct NamespaceCache {
    proc_root: PathBuf,
    cgroup_mount: PathBuf,
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for NamespaceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceCache")
            .field("proc_root", &self.proc_root)
            .field("cgroup_mount", &self.cgroup_mount)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl NamespaceCache {
    /// A cache reading `/proc` at `proc_root` and cgroups under `cgroup_mount`,
    /// keeping at most `capacity` containers (at least 1), evictions counted in `metrics`.
    pub fn new(proc_root: &Path, cgroup_mount: &Path, capacity: usize, metrics: Arc<Metrics>) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        NamespaceCache {
            proc_root: proc_root.to_path_buf(),
            cgroup_mount: cgroup_mount.to_path_buf(),
            inner: Mutex::new(Inner { by_container: LruCache::new(capacity), by_mount_ns: HashMap::new() }),
            metrics,
        }
    }

    /// The most containers kept.
    pub fn capacity(&self) -> usize {
        self.lock().by_container.cap().get()
    }

    /// How many containers are kept now.
    pub fn len(&self) -> usize {
        self.lock().by_container.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        let entry = Entry { cgroup_id: container.cgroup_id, found, checked: now };
        if self.lock().insert(Arc::from(container.id.as_str()), entry) {
            self.metrics.namespace_cache_evicted(1);
        }
        found
    }

    /// What the cache already knows of `container`, without reading `/proc`
    /// (and without counting as a use).
    pub fn cached(&self, container: &Container) -> Option<Namespaces> {
        let inner = self.lock();
        let e = inner.by_container.peek(container.id.as_str())?;
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
    /// from the cache, else after learning the namespaces of those not known
    /// yet. The store is read-locked only to copy containers out, never
    /// while `/proc` is read.
    pub fn container_in_mount_ns(&self, mount_ns: u64, store: &SharedStore) -> Option<Arc<Container>> {
        let known = self.lock().by_mount_ns.get(&mount_ns).cloned();
        let known = known.and_then(|id| store.read().get(&id).cloned());
        if let Some(c) = known {
            if self.of(&c).is_some_and(|ns| ns.mount_ns == mount_ns) {
                return Some(c);
            }
        }
        let live: Vec<Arc<Container>> = store.read().live().cloned().collect();
        self.forget_gone(&live);
        live.into_iter().find(|c| self.of(c).is_some_and(|ns| ns.mount_ns == mount_ns))
    }

    /// The init PID to enter `container` by, checked to still be in the
    /// cached mount namespace (a dead init's PID may have been reused).
    pub fn live_init(&self, container: &Container) -> Option<Namespaces> {
        let ns = self.of(container)?;
        let now = proc::namespace_of(&self.proc_root, ns.init_pid, Namespace::Mount).ok();
        if now == Some(ns.mount_ns) {
            return Some(ns);
        }
        self.lock().remove(container.id.as_str());
        self.of(container)
    }

    /// Drops entries of containers not in `live` (the store's live containers).
    fn forget_gone(&self, live: &[Arc<Container>]) {
        let alive: HashSet<(&str, u64)> = live.iter().map(|c| (c.id.as_str(), c.cgroup_id)).collect();
        let mut inner = self.lock();
        let gone: Vec<Arc<str>> = inner
            .by_container
            .iter()
            .filter(|(id, e)| !alive.contains(&(&***id, e.cgroup_id)))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            inner.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use ctwatch::{Runtime, Store};

    use super::*;

    fn line(metrics: &Metrics, name: &str) -> String {
        let text = metrics.encode(crate::metrics::Format::Text);
        text.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_string()
    }

    /// A fake /proc and cgroupfs: container `i` has init PID 1000+i, whose
    /// mount namespace is the inode of the file `proc/<pid>/ns/mnt` (returned).
    fn host(dir: &Path, n: usize) -> (Vec<Container>, Vec<u64>) {
        use std::os::unix::fs::MetadataExt;
        (0..n)
            .map(|i| {
                let id = format!("{i:064x}");
                let cgroup = dir.join("cg/docker").join(&id);
                fs::create_dir_all(&cgroup).unwrap();
                let pid = 1000 + i;
                fs::write(cgroup.join("cgroup.procs"), format!("{pid}\n")).unwrap();
                let ns = dir.join(format!("proc/{pid}/ns"));
                fs::create_dir_all(&ns).unwrap();
                fs::write(ns.join("mnt"), "").unwrap();
                fs::write(ns.join("net"), "").unwrap();
                fs::write(dir.join(format!("proc/{pid}/status")), "NSpid:\t{pid}\t1\n").unwrap();
                let mut c = Container::new(id.clone(), Runtime::Docker);
                c.cgroup_id = 1 + i as u64;
                c.cgroup_path = format!("/docker/{id}");
                (c, fs::metadata(ns.join("mnt")).unwrap().ino())
            })
            .unzip()
    }

    #[test]
    fn the_cache_is_bounded_and_counts_its_evictions() {
        let dir = tempfile::tempdir().unwrap();
        let (containers, mount_ns) = host(dir.path(), 5);
        let metrics = Arc::new(Metrics::new());
        let cache = NamespaceCache::new(&dir.path().join("proc"), &dir.path().join("cg"), 3, metrics.clone());
        let ns = cache.of(&containers[0]).expect("read from the fake /proc");
        assert_eq!((ns.init_pid, ns.mount_ns), (1000, mount_ns[0]));
        for c in &containers[1..] {
            assert!(cache.of(c).is_some());
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(
            line(&metrics, "ctwatch_namespace_cache_evictions_total"),
            "ctwatch_namespace_cache_evictions_total 2"
        );
        // The evicted ones are forgotten, mount namespace included; the kept ones answer without /proc.
        assert_eq!(cache.cached(&containers[0]), None);
        assert!(!cache.lock().by_mount_ns.contains_key(&mount_ns[0]));
        assert_eq!(cache.lock().by_mount_ns.len(), 3);
        fs::remove_dir_all(dir.path().join("proc/1004")).unwrap();
        assert_eq!(cache.of(&containers[4]).map(|n| n.mount_ns), Some(mount_ns[4]));
    }

    #[test]
    fn a_mount_ns_lookup_finds_a_container_and_forgets_the_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (containers, mount_ns) = host(dir.path(), 4);
        let mut store = Store::new(Duration::from_secs(60));
        for c in &containers {
            store.insert_container(c.clone());
        }
        let store = SharedStore::new(store);
        let cache =
            NamespaceCache::new(&dir.path().join("proc"), &dir.path().join("cg"), 100, Arc::new(Metrics::new()));
        let found = cache.container_in_mount_ns(mount_ns[2], &store).expect("container 2");
        assert_eq!(found.id, containers[2].id);
        assert!(cache.container_in_mount_ns(4242, &store).is_none());
        assert_eq!(cache.len(), 4, "every live container learnt on the miss");
        // Gone from the store: forgotten at the next miss.
        let store = SharedStore::new(Store::new(Duration::from_secs(60)));
        assert!(cache.container_in_mount_ns(4242, &store).is_none());
        assert!(cache.is_empty());
        assert!(cache.lock().by_mount_ns.is_empty());
    }
}
