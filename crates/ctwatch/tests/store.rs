//! The store and tracker, driven with cgroup events: lookups by ID, prefix
//! and cgroup ID, the grace period, and sub-cgroup churn.

use std::time::{Duration, SystemTime};

use ctwatch::sources::{CgroupChange, CgroupEvent, Origin};
use ctwatch::state_dirs::PathOnly;
use ctwatch::{ContainerState, EventKind, LookupError, ManualClock, SharedStore, Store, Tracker};

const A: &str = "aaaa1c2d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
const B: &str = "aaab1c2d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";

fn ev(change: CgroupChange, id: u64, path: &str, ctime: u64) -> CgroupEvent {
    CgroupEvent {
        change,
        origin: Origin::Live,
        cgroup_id: id,
        path: path.into(),
        ctime_ns: ctime,
        observed: SystemTime::now(),
        kernel_time: None,
    }
}

fn tracker(grace: Duration) -> (Tracker, SharedStore) {
    let (t, store, _) = tracker_with_clock(grace);
    (t, store)
}

/// A tracker whose time moves only when the test says (no sleeping).
fn tracker_with_clock(grace: Duration) -> (Tracker, SharedStore, ManualClock) {
    let store = SharedStore::new(Store::new(grace));
    let clock = ManualClock::new();
    (Tracker::new(store.clone(), Box::new(PathOnly)).with_clock(std::sync::Arc::new(clock.clone())), store, clock)
}

#[test]
fn lookups_by_id_prefix_and_cgroup_id() {
    let (mut t, store) = tracker(Duration::from_secs(5));
    let mut out = Vec::new();
    t.apply(
        &[
            ev(CgroupChange::Mkdir, 10, &format!("/docker/{A}"), 100),
            ev(CgroupChange::Mkdir, 11, &format!("/docker/{A}/sub"), 200),
            ev(CgroupChange::Mkdir, 20, &format!("/docker/{B}"), 300),
        ],
        &mut out,
    );
    assert_eq!(out.len(), 2, "sub-cgroups make no event");
    let s = store.read();
    assert_eq!(s.get(A).unwrap().cgroup_id, 10);
    assert_eq!(s.get_by_prefix("aaaa").unwrap().id, A);
    assert_eq!(s.get_by_prefix(B).unwrap().id, B);
    assert_eq!(s.get_by_prefix("aaa"), Err(LookupError::Ambiguous { prefix: "aaa".into(), count: 2 }));
    assert_eq!(s.get_by_prefix("ff"), Err(LookupError::NotFound("ff".into())));
    assert_eq!(s.get_by_cgroup_id(11).unwrap().id, A, "a sub-cgroup resolves to its container");
    let sub = s.cgroup(11).unwrap();
    assert!(!sub.is_root);
    assert!(s.cgroup(10).unwrap().is_root);
    assert!(s.get_by_cgroup_id(99).is_none());
    assert!(s.get_by_cgroup_id(0).is_none());
}

#[test]
fn removed_containers_stay_readable_for_the_grace_period() {
    let grace = Duration::from_millis(300);
    let (mut t, store, clock) = tracker_with_clock(grace);
    let mut out = Vec::new();
    let root = format!("/docker/{A}");
    t.apply(
        &[ev(CgroupChange::Mkdir, 10, &root, 100), ev(CgroupChange::Mkdir, 11, &format!("{root}/sub"), 200)],
        &mut out,
    );
    t.apply(&[ev(CgroupChange::Rmdir, 11, &format!("{root}/sub"), 0), ev(CgroupChange::Rmdir, 10, &root, 0)], &mut out);
    assert_eq!(
        out.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::ContainerCreate, EventKind::ContainerRemove]
    );
    {
        let s = store.read();
        let c = s.get(A).expect("still readable within grace");
        assert_eq!(c.state, ContainerState::Removed);
        assert_eq!(s.get_by_cgroup_id(10).unwrap().id, A, "late lookup by cgroup ID resolves");
        assert_eq!(s.get_by_cgroup_id(11).unwrap().id, A, "and by a removed sub-cgroup's ID");
    }
    clock.advance(grace - Duration::from_millis(1));
    assert_eq!(t.expire(), 0, "not before the grace period is over");
    assert!(store.read().get(A).is_some());
    clock.advance(Duration::from_millis(1));
    assert_eq!(t.expire(), 1);
    let s = store.read();
    assert!(s.get(A).is_none() && s.get_by_cgroup_id(10).is_none() && s.get_by_cgroup_id(11).is_none());
    assert_eq!(s.cgroup_count(), 0);
}

#[test]
fn sub_cgroup_churn_keeps_the_container_and_its_earliest_ctime() {
    let (mut t, store, clock) = tracker_with_clock(Duration::from_millis(10));
    let mut out = Vec::new();
    let root = format!("/kubepods/burstable/pod0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0/{A}");
    t.apply(&[ev(CgroupChange::Mkdir, 10, &root, 100)], &mut out);
    for i in 0..100u64 {
        let sub = format!("{root}/s{}", i % 3);
        t.apply(&[ev(CgroupChange::Mkdir, 1000 + i, &sub, 500 + i)], &mut out);
        t.apply(&[ev(CgroupChange::Rmdir, 1000 + i, &sub, 0)], &mut out);
    }
    clock.advance(Duration::from_millis(10));
    t.expire();
    assert_eq!(out.len(), 1, "only the root's create");
    let s = store.read();
    let c = s.get(A).unwrap();
    assert_eq!(
        (c.ctime_ns, c.state, c.pod.uid.as_str()),
        (100, ContainerState::Created, "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0")
    );
    assert_eq!(s.cgroup_count(), 1, "expired sub-cgroups are forgotten, the root is kept");
}

#[test]
fn duplicates_are_dropped_and_reused_ids_pair_up() {
    let (mut t, _store) = tracker(Duration::from_secs(5));
    let mut out = Vec::new();
    let root = format!("/docker/{A}");
    let mkdir = ev(CgroupChange::Mkdir, 10, &root, 100);
    t.apply(&[mkdir.clone(), mkdir.clone()], &mut out);
    t.apply(&[CgroupEvent { origin: Origin::Existing, ..mkdir }], &mut out);
    t.apply(&[ev(CgroupChange::Rmdir, 10, &root, 0), ev(CgroupChange::Rmdir, 10, &root, 0)], &mut out);
    // The same container ID again (runc run with a reused name), within grace.
    t.apply(&[ev(CgroupChange::Mkdir, 30, &root, 900), ev(CgroupChange::Rmdir, 30, &root, 0)], &mut out);
    let kinds: Vec<_> = out.iter().map(|e| (e.kind, e.cgroup_id)).collect();
    assert_eq!(
        kinds,
        [
            (EventKind::ContainerCreate, 10),
            (EventKind::ContainerRemove, 10),
            (EventKind::ContainerCreate, 30),
            (EventKind::ContainerRemove, 30)
        ]
    );
}

#[test]
fn a_missed_rmdir_is_inferred_from_a_new_directory_at_the_same_path() {
    let (mut t, _store) = tracker(Duration::from_secs(5));
    let mut out = Vec::new();
    let root = format!("/docker/{A}");
    t.apply(&[ev(CgroupChange::Mkdir, 10, &root, 100), ev(CgroupChange::Mkdir, 11, &root, 200)], &mut out);
    let kinds: Vec<_> = out.iter().map(|e| (e.kind, e.cgroup_id)).collect();
    assert_eq!(
        kinds,
        [(EventKind::ContainerCreate, 10), (EventKind::ContainerRemove, 10), (EventKind::ContainerCreate, 11)]
    );
}

#[test]
fn a_sub_cgroup_whose_root_was_missed_still_announces_its_container() {
    let (mut t, store) = tracker(Duration::from_secs(5));
    let mut out = Vec::new();
    t.apply(&[ev(CgroupChange::Mkdir, 11, &format!("/docker/{A}/init"), 200)], &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].container.id, A);
    assert!(!store.read().cgroup(11).unwrap().is_root);
}

#[test]
fn a_cgroup_that_vanished_before_it_was_read_still_pairs() {
    let (mut t, store) = tracker(Duration::from_secs(5));
    let mut out = Vec::new();
    let root = format!("/docker/{A}");
    t.apply(&[ev(CgroupChange::Mkdir, 0, &root, 0), ev(CgroupChange::Rmdir, 0, &root, 0)], &mut out);
    assert_eq!(
        out.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::ContainerCreate, EventKind::ContainerRemove]
    );
    assert!(store.read().get_by_cgroup_id(0).is_none());
}

#[test]
fn an_rmdir_known_only_by_its_cgroup_id_pairs_with_its_mkdir() {
    // eBPF cannot give the whole path of a cgroup deeper than its walk: the ID names it.
    let (mut t, store) = tracker(Duration::from_secs(5));
    let mut out = Vec::new();
    let deep: String = (0..118).map(|i| format!("/l{i}")).collect::<String>() + &format!("/docker/{A}");
    t.apply(&[ev(CgroupChange::Mkdir, 10, &deep, 1), ev(CgroupChange::Mkdir, 11, &format!("{deep}/sub"), 2)], &mut out);
    assert_eq!(out.len(), 1);
    // An unknown path with an unknown ID removes nothing.
    t.apply(&[ev(CgroupChange::Rmdir, 99, "", 0)], &mut out);
    assert_eq!(out.len(), 1);
    t.apply(&[ev(CgroupChange::Rmdir, 11, "", 0), ev(CgroupChange::Rmdir, 10, "", 0)], &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!((out[1].kind, out[1].cgroup_id), (EventKind::ContainerRemove, 10));
    assert_eq!(store.read().get(A).unwrap().state, ContainerState::Removed);
    assert!(store.read().cgroup_at(&format!("{deep}/sub")).is_none());
    // Reported again by ID: nothing more.
    t.apply(&[ev(CgroupChange::Rmdir, 10, "", 0)], &mut out);
    assert_eq!(out.len(), 2);
}

#[test]
fn a_resync_keeps_containers_whose_paths_are_not_utf8_or_deep() {
    use ctwatch::cgroupfs::path_from_bytes;
    let (mut t, store) = tracker(Duration::from_secs(5));
    let mut out = Vec::new();
    let bad = path_from_bytes(&[b"/\xff\xfe/docker/", A.as_bytes()].concat());
    let deep: String = (0..118).map(|i| format!("/l{i}")).collect::<String>() + &format!("/docker/{B}");
    let present = [ev(CgroupChange::Mkdir, 10, &bad, 1), ev(CgroupChange::Mkdir, 20, &deep, 2)];
    t.apply(&present, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(store.read().get(A).unwrap().cgroup_path, bad);
    t.reconcile(&present, &mut out);
    assert_eq!(out.len(), 2, "a resync that finds them again reports nothing: {out:#?}");
    assert_eq!(store.read().live().count(), 2);
}

/// An observer that reads the store: it would deadlock if the tracker told
/// it while holding the store's write lock.
struct ReadsTheStore(SharedStore, std::sync::mpsc::Sender<usize>);

impl ctwatch::CgroupObserver for ReadsTheStore {
    fn cgroup_added(&mut self, _: u64, _: &str, _: &ctwatch::Container, _: bool) {
        let _ = self.1.send(self.0.read().len());
    }
    fn cgroup_removed(&mut self, _: u64, _: &str) {
        let _ = self.1.send(self.0.read().len());
    }
}

#[test]
fn observers_are_told_after_the_store_lock_is_released() {
    let (mut t, store) = tracker(Duration::from_secs(5));
    let (tx, rx) = std::sync::mpsc::channel();
    t.add_observer(Box::new(ReadsTheStore(store.clone(), tx)));
    let root = format!("/docker/{A}");
    let worker = std::thread::spawn(move || {
        let mut out = Vec::new();
        t.apply(&[ev(CgroupChange::Mkdir, 10, &root, 1), ev(CgroupChange::Rmdir, 10, &root, 0)], &mut out);
        out.len()
    });
    // Both changes are seen, with the store already holding the container.
    for _ in 0..2 {
        let len = rx.recv_timeout(Duration::from_secs(10)).expect("the observer ran (no deadlock under the lock)");
        assert_eq!(len, 1);
    }
    assert_eq!(worker.join().unwrap(), 2);
}
