//! The pinned map of container cgroups, for other eBPF programs.
//!
//! Key: the full u64 ID of every cgroup that belongs to a container (roots
//! and sub-cgroups); value: [`ContainerValue`]. On a hybrid host the map also
//! holds each container cgroup's ID in the unified hierarchy, which is what
//! `bpf_get_current_cgroup_id()` returns there.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::{Ebpf, EbpfLoader};
use ctwatch::sources::{CgroupChange, CgroupEvent};
use ctwatch::{CgroupObserver, Container, ContainerState};
use tracing::{debug, info, warn};

use crate::abi::{container_handle, ContainerValue, MapState, CGROUP_IS_ROOT};
use crate::loader::{kernel_btf, load_and_attach, preflight, refused, EbpfUnavailable, CONTAINERS_MAP_OBJECT};

/// The map's name, and so its file name under the pin directory.
pub const MAP_NAME: &str = "ctwatch_containers";
/// Where the map is pinned by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ctwatch";
/// How many cgroups the map holds at most by default.
pub const DEFAULT_MAX_ENTRIES: u32 = 65536;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Mirror mkdirs not yet matched to a container cgroup, kept at most.
const MAX_PENDING_MIRRORS: usize = 4096;

/// A handle on the pinned map; clones share it.
#[derive(Clone)]
pub struct ContainersMap(Arc<Mutex<Inner>>);

struct Inner {
    _ebpf: Ebpf,
    map: BpfHashMap<MapData, u64, ContainerValue>,
    pin_file: PathBuf,
    keep_on_exit: bool,
    /// The unified hierarchy's mount point on a hybrid host.
    mirror_root: Option<PathBuf>,
    /// Container cgroups by path (tracked hierarchy): their map value.
    by_path: HashMap<String, ContainerValue>,
    /// Mirror IDs entered in the map, by path.
    mirror_ids: HashMap<String, u64>,
    /// Mirror mkdirs seen before the tracked hierarchy's.
    pending_mirrors: HashMap<String, u64>,
    /// Keys this run has written (to prune what a previous run left).
    written: HashSet<u64>,
}

impl ContainersMap {
    /// Loads the map (reusing one already pinned at `pin_dir`, so programs
    /// that opened it keep working across restarts) and pins it there.
    pub fn open(
        pin_dir: &Path,
        max_entries: u32,
        keep_on_exit: bool,
        mirror_root: Option<PathBuf>,
    ) -> Result<Self, EbpfUnavailable> {
        preflight()?;
        let bpffs = pin_dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
        let magic = ctwatch::cgroupfs::filesystem_magic(bpffs).unwrap_or(0);
        if magic != BPF_FS_MAGIC {
            return Err(EbpfUnavailable::Refused(format!(
                "{} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)",
                pin_dir.display()
            )));
        }
        fs::create_dir_all(pin_dir)
            .map_err(|e| EbpfUnavailable::Refused(format!("cannot create {}: {e}", pin_dir.display())))?;
        let pin_file = pin_dir.join(MAP_NAME);
        let reused = pin_file.exists();
        let btf = kernel_btf()?;
        let mut loader = EbpfLoader::new();
        loader.btf(Some(&btf)).map_pin_path(pin_dir).set_max_entries(MAP_NAME, max_entries);
        let mut ebpf = load_and_attach(
            &mut loader,
            &btf,
            CONTAINERS_MAP_OBJECT,
            &[("ctwatch_cgroup_attach_task", "cgroup_attach_task")],
        )?;
        let map = BpfHashMap::try_from(
            ebpf.take_map(MAP_NAME).ok_or_else(|| EbpfUnavailable::Refused(format!("map {MAP_NAME} missing")))?,
        )
        .map_err(|e| refused("containers map", &e))?;
        info!(path = %pin_file.display(), reused, "container cgroups map pinned");
        Ok(ContainersMap(Arc::new(Mutex::new(Inner {
            _ebpf: ebpf,
            map,
            pin_file,
            keep_on_exit,
            mirror_root,
            by_path: HashMap::new(),
            mirror_ids: HashMap::new(),
            pending_mirrors: HashMap::new(),
            written: HashSet::new(),
        }))))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An observer to register with the tracker.
    pub fn observer(&self) -> Box<dyn CgroupObserver> {
        Box::new(self.clone())
    }

    /// Removes the keys a previous run left that this run has not written
    /// (call once the scan at start is applied).
    pub fn prune_stale(&self) -> usize {
        let mut inner = self.lock();
        let stale: Vec<u64> = inner.map.keys().flatten().filter(|k| !inner.written.contains(k)).collect();
        for k in &stale {
            let _ = inner.map.remove(k);
        }
        if !stale.is_empty() {
            debug!(count = stale.len(), "removed stale entries from the containers map");
        }
        stale.len()
    }

    /// Applies changes seen in the mirror (unified) hierarchy.
    pub fn apply_mirror(&self, events: &[CgroupEvent]) {
        let mut inner = self.lock();
        for e in events {
            match e.change {
                CgroupChange::Mkdir => match inner.by_path.get(&e.path).copied() {
                    Some(value) => inner.put_mirror(&e.path, e.cgroup_id, value),
                    None => {
                        if inner.pending_mirrors.len() >= MAX_PENDING_MIRRORS {
                            inner.pending_mirrors.clear();
                        }
                        inner.pending_mirrors.insert(e.path.clone(), e.cgroup_id);
                    }
                },
                CgroupChange::Rmdir => {
                    inner.pending_mirrors.remove(&e.path);
                    if inner.mirror_ids.get(&e.path) == Some(&e.cgroup_id) {
                        inner.mirror_ids.remove(&e.path);
                        inner.delete(e.cgroup_id);
                    }
                }
            }
        }
    }

    /// Whether the map holds `cgroup_id`, and its value.
    pub fn get(&self, cgroup_id: u64) -> Option<ContainerValue> {
        self.lock().map.get(&cgroup_id, 0).ok()
    }
}

impl Inner {
    fn put(&mut self, key: u64, value: ContainerValue) {
        if key == 0 {
            return;
        }
        if let Err(e) = self.map.insert(key, value, 0) {
            warn!(cgroup_id = key, %e, "cannot update the containers map (full? raise --map-max-entries)");
            return;
        }
        self.written.insert(key);
    }

    fn delete(&mut self, key: u64) {
        if key != 0 {
            let _ = self.map.remove(&key);
            self.written.remove(&key);
        }
    }

    fn put_mirror(&mut self, path: &str, id: u64, value: ContainerValue) {
        self.mirror_ids.insert(path.to_string(), id);
        self.put(id, value);
    }
}

impl CgroupObserver for ContainersMap {
    fn cgroup_added(&mut self, cgroup_id: u64, path: &str, container: &Container, is_root: bool) {
        let state = match container.state {
            ContainerState::Existing => MapState::Existing,
            _ => MapState::Created,
        };
        let value = ContainerValue {
            handle: container_handle(&container.id),
            state: state as u32,
            flags: if is_root { CGROUP_IS_ROOT } else { 0 },
        };
        let mut inner = self.lock();
        inner.put(cgroup_id, value);
        inner.by_path.insert(path.to_string(), value);
        let mirror = inner.pending_mirrors.remove(path).or_else(|| {
            let root = inner.mirror_root.as_ref()?;
            fs::symlink_metadata(ctwatch::cgroupfs::absolute_path(root, path)).ok().map(|m| m.ino())
        });
        if let Some(mirror_id) = mirror {
            inner.put_mirror(path, mirror_id, value);
        }
    }

    fn cgroup_removed(&mut self, cgroup_id: u64, path: &str) {
        let mut inner = self.lock();
        inner.delete(cgroup_id);
        inner.by_path.remove(path);
        if let Some(mirror_id) = inner.mirror_ids.remove(path) {
            inner.delete(mirror_id);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.keep_on_exit {
            return;
        }
        match fs::remove_file(&self.pin_file) {
            Ok(()) => debug!(path = %self.pin_file.display(), "unpinned the containers map"),
            Err(e) => {
                debug!(path = %self.pin_file.display(), %e, "could not unpin the containers map")
            }
        }
    }
}
