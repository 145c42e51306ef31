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
