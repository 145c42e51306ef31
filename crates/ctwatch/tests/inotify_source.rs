//! The inotify source on the real cgroupfs, feeding the tracker: root flags
//! and cgroup IDs land in the store as the kernel made them.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctwatch::cgroupfs;
use ctwatch::sources::inotify::InotifySource;
use ctwatch::sources::SourceMessage;
use ctwatch::state_dirs::PathOnly;
use ctwatch::{EventKind, SharedStore, Store, Tracker};

const ID: &str = "5eed1c2d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";

struct Cleanup(Vec<PathBuf>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

#[test]
fn root_and_sub_cgroups_are_recorded_with_their_kernel_ids() {
    assert!(nix::unistd::geteuid().is_root(), "run as root (scripts/test.sh)");
    let hierarchies = cgroupfs::mounted_hierarchies().unwrap();
    let h = cgroupfs::default_hierarchy(&hierarchies).unwrap().clone();
    let parent = h.mount_point.join(format!("ctwatch-lib-test-{}", std::process::id()));
    fs::create_dir(&parent).unwrap();
    let mut cleanup = Cleanup(vec![parent.clone()]);

    let source = InotifySource::new(&h.mount_point, &parent).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::spawn({
        let stop = stop.clone();
        move || source.run(tx, stop)
    });
    assert!(matches!(rx.recv().unwrap(), SourceMessage::Events(v) if v.is_empty()));
    assert_eq!(rx.recv().unwrap(), SourceMessage::ScanComplete);

    let docker = parent.join("docker");
    let root = docker.join(ID);
    let sub = root.join("sub");
    for d in [&docker, &root, &sub] {
        fs::create_dir(d).unwrap();
        cleanup.0.push(d.clone());
    }
    let (root_id, sub_id) = (fs::metadata(&root).unwrap().ino(), fs::metadata(&sub).unwrap().ino());

    let store = SharedStore::new(Store::default());
    let mut tracker = Tracker::new(store.clone(), Box::new(PathOnly));
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.read().cgroup(sub_id).is_none() && Instant::now() < deadline {
        if let Ok(SourceMessage::Events(batch)) = rx.recv_timeout(Duration::from_millis(100)) {
            tracker.apply(&batch, &mut events);
        }
    }
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap().unwrap();

    let s = store.read();
    let root_m = s.cgroup(root_id).expect("root recorded");
    let sub_m = s.cgroup(sub_id).expect("sub-cgroup recorded");
    assert!(root_m.is_root && !sub_m.is_root);
    assert_eq!((&*root_m.container_id, &*sub_m.container_id), (ID, ID));
    let rel = cgroupfs::relative_path(&h.mount_point, &root).unwrap();
    assert_eq!(s.get(ID).unwrap().cgroup_path, rel);
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].kind, events[0].cgroup_id), (EventKind::ContainerCreate, root_id));
}

/// A real tree under a test-owned parent: a container below a name that is
/// not UTF-8, and one 120 levels deep. Returns (non-UTF-8 root, deep root).
fn odd_tree(mount: &std::path::Path, parent: &std::path::Path, cleanup: &mut Cleanup, tag: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::ffi::OsStrExt;
    let mut mk = |d: PathBuf| {
        fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        cleanup.0.push(d.clone());
        d
    };
    let bad = mk(parent.join(std::ffi::OsStr::from_bytes(&[b"\xff\xfe-".as_slice(), tag.as_bytes()].concat())));
    let bad_docker = mk(bad.join("docker"));
    let bad_root = mk(bad_docker.join(hex(tag, 'a')));
    let mut deep = parent.to_path_buf();
    while deep.strip_prefix(mount).unwrap().components().count() < 118 {
        deep = mk(deep.join(format!("{tag}{}", deep.components().count())));
    }
    let deep_docker = mk(deep.join("docker"));
    let deep_root = mk(deep_docker.join(hex(tag, 'b')));
    assert_eq!(deep_root.strip_prefix(mount).unwrap().components().count(), 120);
    (bad_root, deep_root)
}

fn hex(tag: &str, c: char) -> String {
    let mut id: String = tag.bytes().map(|b| format!("{:02x}", b)).collect();
    id.truncate(63);
    format!("{c}{id:0>63}")
}

#[test]
fn odd_paths_are_followed_found_by_id_and_kept_by_a_resync() {
    use ctwatch::sources::scan::scan;
    use ctwatch::sources::Origin;
    assert!(nix::unistd::geteuid().is_root(), "run as root (scripts/test.sh)");
    let hierarchies = cgroupfs::mounted_hierarchies().unwrap();
    let h = cgroupfs::default_hierarchy(&hierarchies).unwrap().clone();
    let parent = h.mount_point.join(format!("ctwatch-lib-odd-{}", std::process::id()));
    fs::create_dir(&parent).unwrap();
    let mut cleanup = Cleanup(vec![parent.clone()]);

    // Made before the watch: found by its scan. Made after: followed live.
    let (old_bad, old_deep) = odd_tree(&h.mount_point, &parent, &mut cleanup, "old");
    let source = InotifySource::new(&h.mount_point, &parent).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::spawn({
        let stop = stop.clone();
        move || source.run(tx, stop)
    });
    let store = SharedStore::new(Store::default());
    let mut tracker = Tracker::new(store.clone(), Box::new(PathOnly));
    let mut events = Vec::new();
    let Ok(SourceMessage::Events(batch)) = rx.recv() else { panic!("the scan at start") };
    tracker.apply(&batch, &mut events);
    assert_eq!(rx.recv().unwrap(), SourceMessage::ScanComplete);
    let (new_bad, new_deep) = odd_tree(&h.mount_point, &parent, &mut cleanup, "new");
    let roots = [&old_bad, &old_deep, &new_bad, &new_deep];
    let ids: Vec<u64> = roots.iter().map(|r| fs::metadata(r).unwrap().ino()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.read().live().count() < 4 && Instant::now() < deadline {
        if let Ok(SourceMessage::Events(batch)) = rx.recv_timeout(Duration::from_millis(100)) {
            tracker.apply(&batch, &mut events);
        }
    }
    assert_eq!(events.len(), 4, "{events:#?}");
    for (root, id) in roots.iter().zip(&ids) {
        let rel = cgroupfs::relative_path(&h.mount_point, root).unwrap();
        let c = store.read().get_by_cgroup_id(*id).cloned().unwrap_or_else(|| panic!("{} tracked", root.display()));
        assert_eq!(c.cgroup_path, rel);
        assert_eq!(cgroupfs::absolute_path(&h.mount_point, &rel), **root, "the path's bytes are kept");
        // The kernel's way to name a cgroup by ID gives the same path, at any depth.
        assert_eq!(cgroupfs::path_of_cgroup_id(&h.mount_point, *id).unwrap(), rel);
    }
    assert!(cgroupfs::path_is_escaped(&store.read().get_by_cgroup_id(ids[0]).unwrap().cgroup_path));

    // A resync (what follows a lost event) finds them all again and removes none.
    let present = scan(&h.mount_point, &parent, Origin::Live);
    let before = events.len();
    tracker.reconcile(&present, &mut events);
    assert_eq!(events.len(), before, "{:#?}", &events[before..]);
    assert_eq!(store.read().live().count(), 4);

    // Removed: each one remove, found by path (inotify).
    drop(cleanup);
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.len() < 8 && Instant::now() < deadline {
        if let Ok(SourceMessage::Events(batch)) = rx.recv_timeout(Duration::from_millis(100)) {
            tracker.apply(&batch, &mut events);
        }
    }
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap().unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == EventKind::ContainerRemove).count(), 4, "{events:#?}");
    assert_eq!(events.len(), 8);
    assert!(cgroupfs::path_of_cgroup_id(&h.mount_point, ids[1]).is_err(), "a removed cgroup is not found");
}

/// A subdirectory made between the walk's read of a directory and its visit
/// (where the inotify source adds its watch) is still listed: the race that
/// lost the `b` of a `mkdir -p a/b` made right after the watch began.
#[test]
fn a_subdirectory_made_while_a_directory_is_visited_is_walked() {
    assert!(nix::unistd::geteuid().is_root(), "run as root (scripts/test.sh)");
    let hierarchies = cgroupfs::mounted_hierarchies().unwrap();
    let h = cgroupfs::default_hierarchy(&hierarchies).unwrap().clone();
    let parent = h.mount_point.join(format!("ctwatch-walk-race-{}", std::process::id()));
    fs::create_dir(&parent).unwrap();
    let child = parent.join("made-during-visit");
    let _cleanup = Cleanup(vec![parent.clone(), child.clone()]);
    let mut visited = Vec::new();
    ctwatch::sources::scan::walk(&h.mount_point, &parent, |dir| {
        if dir.abs == parent {
            // The parent had no subdirectory when it was read; one appears now.
            fs::create_dir(&child).unwrap();
        }
        visited.push(dir.abs.to_path_buf());
    });
    assert_eq!(visited, vec![parent.clone(), child.clone()]);
}
