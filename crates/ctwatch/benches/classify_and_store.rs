//! Classification of cgroup paths, and store lookups with 10k containers.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ctwatch::classify::classify;
use ctwatch::sources::{CgroupChange, CgroupEvent, Origin};
use ctwatch::state_dirs::PathOnly;
use ctwatch::{SharedStore, Store, Tracker};

fn hex(i: u64) -> String {
    format!("{:016x}{:016x}{:016x}{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i, !i, i.rotate_left(17))
}

fn bench_classify(c: &mut Criterion) {
    let id = hex(7);
    let paths = [
        ("docker_cgroupfs", format!("/docker/{id}")),
        ("kubepods_systemd", format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b1c2d3e_4f50_6172_8394_a5b6c7d8e9f0.slice/cri-containerd-{id}.scope")),
        ("kubepods_cgroupfs_sub", format!("/kubepods/besteffort/pod0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0/{id}/sub")),
        ("not_a_container", "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-1234.scope".to_string()),
    ];
    let mut group = c.benchmark_group("classify");
    for (name, path) in &paths {
        group.bench_with_input(BenchmarkId::from_parameter(name), path, |b, p| {
            b.iter(|| classify(black_box(p), &PathOnly))
        });
    }
    group.finish();
}

fn filled_store(n: u64) -> SharedStore {
    let store = SharedStore::new(Store::new(Duration::from_secs(5)));
    let mut tracker = Tracker::new(store.clone(), Box::new(PathOnly));
    let events: Vec<CgroupEvent> = (0..n)
        .flat_map(|i| {
            let root = format!("/docker/{}", hex(i));
            let mk = |id, path: String| CgroupEvent {
                change: CgroupChange::Mkdir,
                origin: Origin::Existing,
                cgroup_id: id,
                path,
                ctime_ns: 1,
                observed: SystemTime::now(),
                kernel_time: None,
            };
            [mk(1000 + 2 * i, root.clone()), mk(1001 + 2 * i, format!("{root}/sub"))]
        })
        .collect();
    tracker.apply(&events, &mut Vec::new());
    store
}

fn bench_store(c: &mut Criterion) {
    const N: u64 = 10_000;
    let store = filled_store(N);
    let store = store.read();
    let ids: Vec<String> = (0..N).step_by(97).map(hex).collect();
    let mut group = c.benchmark_group("store_10k");
    let mut i = 0usize;
    group.bench_function("get_by_id", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(store.get(&ids[i]))
        })
    });
    group.bench_function("get_by_prefix_12", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(store.get_by_prefix(&ids[i][..12]).ok())
        })
    });
    let cgroup_ids: Vec<u64> = (0..N).step_by(97).map(|k| 1001 + 2 * k).collect();
    group.bench_function("get_by_cgroup_id_sub", |b| {
        b.iter(|| {
            i = (i + 1) % cgroup_ids.len();
            black_box(store.get_by_cgroup_id(cgroup_ids[i]))
        })
    });
    group.finish();
}

fn bench_tracker(c: &mut Criterion) {
    // One container's life through the tracker: mkdir root, mkdir sub, rmdir both.
    let store = filled_store(10_000);
    let mut tracker = Tracker::new(store, Box::new(PathOnly));
    let mut out = Vec::new();
    let mut n = 1u64 << 40;
    c.bench_function("tracker/container_life_10k_store", |b| {
        b.iter(|| {
            n += 2;
            let root = format!("/docker/{}", hex(n));
            let sub = format!("{root}/sub");
            let ev = |change, id, path: &str| CgroupEvent {
                change,
                origin: Origin::Live,
                cgroup_id: id,
                path: path.to_string(),
                ctime_ns: 1,
                observed: SystemTime::UNIX_EPOCH,
                kernel_time: None,
            };
            tracker.apply(
                &[
                    ev(CgroupChange::Mkdir, n, &root),
                    ev(CgroupChange::Mkdir, n + 1, &sub),
                    ev(CgroupChange::Rmdir, n + 1, &sub),
                    ev(CgroupChange::Rmdir, n, &root),
                ],
                &mut out,
            );
            out.clear();
        })
    });
}

criterion_group!(benches, bench_classify, bench_store, bench_tracker);
criterion_main!(benches);
