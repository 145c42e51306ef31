//! The containers store: every known container, found by ID, ID prefix or
//! cgroup ID, with removed containers kept for a grace period.
//!
//! The store only keeps cgroups that belong to containers (roots and
//! sub-cgroups), indexed both by cgroup ID and by path, because the kernel
//! sources report removals by ID (eBPF) or by path (inotify).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::container::{Container, ContainerState};

/// The default time a removed container stays readable.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// The shortest prefix accepted for a lookup by ID prefix.
pub const MIN_PREFIX_LEN: usize = 1;

/// Why a lookup found nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LookupError {
    /// No container has this ID, or no cgroup this ID.
    #[error("no container matches {0:?}")]
    NotFound(String),
    /// Several containers start with this prefix.
    #[error("{prefix:?} is ambiguous: it starts {count} container IDs")]
    Ambiguous {
        /// The prefix asked for.
        prefix: String,
        /// How many IDs start with it.
        count: usize,
    },
}

/// A cgroup that belongs to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMembership {
    /// The container it belongs to.
    pub container_id: Arc<str>,
    /// Its path, relative to the hierarchy root.
    pub path: Arc<str>,
    /// True for the container's root cgroup.
    pub is_root: bool,
}

/// A cgroup that [`Store::remove_cgroup`] marked removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedCgroup {
    /// What it belonged to.
    pub membership: CgroupMembership,
    /// Its ID (0 if it was never read).
    pub cgroup_id: u64,
}

#[derive(Debug)]
struct CgroupEntry {
    membership: CgroupMembership,
    removed: bool,
}

#[derive(Debug)]
struct ContainerEntry {
    container: Arc<Container>,
    /// Bumped when a container ID is reused, so stale expiries are ignored.
    incarnation: u64,
}

#[derive(Debug)]
enum Expiring {
    Cgroup(u64),
    Container { id: Arc<str>, incarnation: u64 },
}

/// Keys at and above this value stand for cgroups whose real ID could not be
/// read (the directory vanished first); real kernfs IDs never get this high.
const UNREAD_ID_BASE: u64 = 1 << 63;

/// The containers store. Not synchronised: wrap it (see [`crate::SharedStore`]).
#[derive(Debug)]
pub struct Store {
    containers: BTreeMap<Arc<str>, ContainerEntry>,
    /// Every container cgroup, live or within grace, by cgroup ID.
    cgroups: HashMap<u64, CgroupEntry>,
    /// Live container cgroups by path.
    live_paths: HashMap<Arc<str>, u64>,
    expiring: VecDeque<(Instant, Expiring)>,
    grace: Duration,
    next_incarnation: u64,
    next_unread_id: u64,
}

impl Default for Store {
    fn default() -> Self {
        Store::new(DEFAULT_GRACE)
    }
}

impl Store {
    /// An empty store whose removed containers stay readable for `grace`.
    pub fn new(grace: Duration) -> Self {
        Store {
            containers: BTreeMap::new(),
            cgroups: HashMap::new(),
            live_paths: HashMap::new(),
            expiring: VecDeque::new(),
            grace,
            next_incarnation: 0,
            next_unread_id: UNREAD_ID_BASE,
        }
    }

    /// The grace period for removed containers.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// The container with exactly this ID (live or within its grace period).
    pub fn get(&self, id: &str) -> Option<&Arc<Container>> {
        self.containers.get(id).map(|e| &e.container)
    }

    /// The one container whose ID is `id` or starts with it.
    pub fn get_by_prefix(&self, prefix: &str) -> Result<&Arc<Container>, LookupError> {
        if let Some(c) = self.get(prefix) {
            return Ok(c);
        }
        if prefix.len() < MIN_PREFIX_LEN {
            return Err(LookupError::NotFound(prefix.to_string()));
        }
        let mut matches = self
            .containers
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(id, _)| id.starts_with(prefix));
        match (matches.next(), matches.next()) {
            (Some((_, e)), None) => Ok(&e.container),
            (None, _) => Err(LookupError::NotFound(prefix.to_string())),
            (Some(_), Some(_)) => {
                let count = 2 + matches.count();
                Err(LookupError::Ambiguous { prefix: prefix.to_string(), count })
            }
        }
    }

    /// The container that a cgroup (root or sub-cgroup) belongs to.
    pub fn get_by_cgroup_id(&self, cgroup_id: u64) -> Option<&Arc<Container>> {
        self.get(&self.cgroup(cgroup_id)?.container_id)
    }

    /// Which container a cgroup ID belongs to, and whether it is that container's root.
    pub fn cgroup(&self, cgroup_id: u64) -> Option<&CgroupMembership> {
        if cgroup_id == 0 || cgroup_id >= UNREAD_ID_BASE {
            return None;
        }
        self.cgroups.get(&cgroup_id).map(|e| &e.membership)
    }

    /// Which container the live cgroup at `path` belongs to, with the cgroup's ID
    /// (0 when it could not be read).
    pub fn cgroup_at(&self, path: &str) -> Option<(&CgroupMembership, u64)> {
        let key = *self.live_paths.get(path)?;
        let entry = self.cgroups.get(&key)?;
        Some((&entry.membership, if key >= UNREAD_ID_BASE { 0 } else { key }))
    }

    /// The container whose cgroup is the nearest live ancestor of `path`.
    pub fn container_above(&self, path: &str) -> Option<&Arc<Container>> {
        let mut current = path;
        while let Some((parent, _)) = current.rsplit_once('/') {
            if parent.is_empty() {
                return None;
            }
            if let Some((m, _)) = self.cgroup_at(parent) {
                return self.get(&m.container_id);
            }
            current = parent;
        }
        None
    }

    /// The live container cgroups, as (path, cgroup ID or 0, membership).
    pub fn live_cgroups(&self) -> impl Iterator<Item = (&str, u64, &CgroupMembership)> {
        self.live_paths.iter().filter_map(|(path, key)| {
            let entry = self.cgroups.get(key)?;
            Some((&**path, if *key >= UNREAD_ID_BASE { 0 } else { *key }, &entry.membership))
        })
    }

    /// Every container (live and within grace), ordered by ID.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Container>> {
        self.containers.values().map(|e| &e.container)
    }

    /// The containers that are not removed.
    pub fn live(&self) -> impl Iterator<Item = &Arc<Container>> {
        self.iter().filter(|c| c.state != ContainerState::Removed)
    }

    /// How many containers the store holds (live and within grace).
    pub fn len(&self) -> usize {
        self.containers.len()
    }

    /// True when the store holds no container.
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }

    /// How many cgroups (roots and sub-cgroups, live and within grace) the store holds.
    pub fn cgroup_count(&self) -> usize {
        self.cgroups.len()
    }

    /// Adds (or replaces) a container and records its root cgroup.
    pub fn insert_container(&mut self, container: Container) -> Arc<Container> {
        let id: Arc<str> = Arc::from(container.id.as_str());
        let root = (container.cgroup_id, container.cgroup_path.clone());
        let container = Arc::new(container);
        self.next_incarnation += 1;
        self.containers
            .insert(id.clone(), ContainerEntry { container: container.clone(), incarnation: self.next_incarnation });
        self.insert_cgroup(root.0, &root.1, &id, true);
        container
    }

    /// Records a cgroup of a known container (a root or a sub-cgroup);
    /// `cgroup_id` 0 means the ID could not be read.
    pub fn insert_cgroup(&mut self, cgroup_id: u64, path: &str, container_id: &str, is_root: bool) {
        let container_id = self
            .containers
            .get_key_value(container_id)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Arc::from(container_id));
        let key = if cgroup_id == 0 {
            self.next_unread_id += 1;
            self.next_unread_id
        } else {
            cgroup_id
        };
        let path: Arc<str> = Arc::from(path);
        self.live_paths.insert(path.clone(), key);
        let membership = CgroupMembership { container_id, path, is_root };
        self.cgroups.insert(key, CgroupEntry { membership, removed: false });
    }

    /// Replaces a container's record, keeping its place (used by enrichment).
    pub fn update_container(&mut self, container: Container) -> Option<Arc<Container>> {
        let entry = self.containers.get_mut(container.id.as_str())?;
        entry.container = Arc::new(container);
        Some(entry.container.clone())
    }

    /// Marks the live cgroup at `path` removed. Returns what it was and,
    /// when it was a container's root, the container (now marked removed).
    pub fn remove_cgroup(&mut self, path: &str, now: Instant) -> Option<(RemovedCgroup, Option<Arc<Container>>)> {
        let key = self.live_paths.remove(path)?;
        let entry = self.cgroups.get_mut(&key)?;
        entry.removed = true;
        let membership = entry.membership.clone();
        self.expiring.push_back((now + self.grace, Expiring::Cgroup(key)));
        let cgroup_id = if key >= UNREAD_ID_BASE { 0 } else { key };
        let removed = RemovedCgroup { membership, cgroup_id };
        if !removed.membership.is_root {
            return Some((removed, None));
        }
        let Some(entry) = self.containers.get_mut(&removed.membership.container_id) else {
            return Some((removed, None));
        };
        if entry.container.cgroup_path.as_str() != path || entry.container.state == ContainerState::Removed {
            return Some((removed, None));
        }
        let mut container = (*entry.container).clone();
        container.state = ContainerState::Removed;
        entry.container = Arc::new(container);
        let id = removed.membership.container_id.clone();
        self.expiring.push_back((now + self.grace, Expiring::Container { id, incarnation: entry.incarnation }));
        let container = entry.container.clone();
        Some((removed, Some(container)))
    }

    /// Forgets what was removed more than the grace period before `now`.
    /// Returns how many containers were forgotten.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut forgotten = 0;
        while let Some((deadline, _)) = self.expiring.front() {
            if *deadline > now {
                break;
            }
            let (_, what) = self.expiring.pop_front().expect("front exists");
            match what {
                Expiring::Cgroup(key) => {
                    if self.cgroups.get(&key).is_some_and(|e| e.removed) {
                        self.cgroups.remove(&key);
                    }
                }
                Expiring::Container { id, incarnation } => {
                    if self
                        .containers
                        .get(&id)
                        .is_some_and(|e| e.incarnation == incarnation && e.container.state == ContainerState::Removed)
                    {
                        self.containers.remove(&id);
                        forgotten += 1;
                    }
                }
            }
        }
        forgotten
    }

    /// When the next removed item expires, if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiring.front().map(|(d, _)| *d)
    }
}
