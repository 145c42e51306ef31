//! The data source's lookups with 10k containers in the store: by ID, ID
//! prefix, cgroup ID and PID (the full record each time), against the bare
//! store lookup as a baseline; and the memory each tracked container costs.
//!
//! `cargo bench -p ctwatch-agent --bench lookups` (the PID lookup reads
//! this process's `/proc/<pid>/cgroup`; any user can run it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use ctwatch::cgroupfs;
use ctwatch::{Container, ContainerState, PodInfo, Runtime, SharedStore, Store};
use ctwatch_agent::{DataSource, HostView, Metrics};

/// Counts live heap bytes, for the memory-per-container figure.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const N: u64 = 10_000;

fn hex(i: u64) -> String {
    format!("{:016x}{:016x}{:016x}{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i, !i, i.rotate_left(17))
}

/// A container as enrichment leaves it: name, image, digest, pod, a few labels.
fn container(i: u64, path: String) -> Container {
    Container {
        id: hex(i),
        runtime: Runtime::Containerd,
        cgroup_id: 1000 + 2 * i,
        cgroup_path: path,
        ctime_ns: 1,
        image: "registry.example.com/team/service:1.2.3".into(),
        image_digest: format!("sha256:{}", hex(i ^ 0xffff)),
        name: format!("service-{i}"),
        pod: PodInfo {
            name: format!("service-{i}-7d9f8b6c5-x2x4z"),
            namespace: "production".into(),
            uid: "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0".into(),
            sandbox: false,
        },
        labels: [("app", "service"), ("tier", "backend"), ("io.kubernetes.container.name", "service")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        annotations: Default::default(),
        hook: None,
        security: None,
        state: ContainerState::Existing,
        ..Container::new(String::new(), Runtime::Containerd)
    }
}

/// 10k containers (each with one sub-cgroup), plus one whose cgroup is this process's.
fn filled(hierarchy: &cgroupfs::Hierarchy) -> (Store, String) {
    let mut store = Store::new(Duration::from_secs(5));
    for i in 0..N {
        let path = format!("/kubepods/besteffort/pod{i}/{}", hex(i));
        let c = store.insert_container(container(i, path.clone()));
        store.insert_cgroup(c.cgroup_id + 1, &format!("{path}/sub"), &c.id, false);
    }
    let own = ctwatch::proc::cgroup_path_of(&PathBuf::from("/proc"), std::process::id(), hierarchy)
        .expect("this process's cgroup");
    let mut mine = container(N, own.clone());
    mine.cgroup_id = 1;
    store.insert_container(mine);
    (store, own)
}

fn host() -> HostView {
    let hierarchies = cgroupfs::mounted_hierarchies().expect("cgroupfs");
    let hierarchy = cgroupfs::default_hierarchy(&hierarchies).expect("a hierarchy").clone();
    HostView { hierarchy, proc_root: PathBuf::from("/proc") }
}

fn bench_lookups(c: &mut Criterion) {
    let host = host();
    let (store, _) = filled(&host.hierarchy);
    let store = SharedStore::new(store);
    let ds = DataSource::new(store.clone(), host, Arc::new(Metrics::new()));
    let ids: Vec<String> = (0..N).step_by(97).map(hex).collect();
    let pid = std::process::id();
    let mut group = c.benchmark_group("lookup_10k");
    let mut i = 0;
    group.bench_function("baseline_store_get_by_id", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(store.read().get(&ids[i]).map(|c| c.cgroup_id))
        })
    });
    group.bench_function("get_by_id", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(ds.get(&ids[i]).unwrap())
        })
    });
    group.bench_function("get_by_prefix_12", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(ds.get(&ids[i][..12]).unwrap())
        })
    });
    group.bench_function("get_by_cgroup_id", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            black_box(ds.get_by_cgroup_id(1001 + 2 * (i as u64) * 7).unwrap())
        })
    });
    group.bench_function("get_by_pid", |b| b.iter(|| black_box(ds.get_by_pid(pid).unwrap())));
    group.finish();
}

fn memory_per_container() {
    let host = host();
    let before = LIVE.load(Ordering::Relaxed);
    let (store, _) = filled(&host.hierarchy);
    let ds = DataSource::new(SharedStore::new(store), host, Arc::new(Metrics::new()));
    // Fill the namespace cache too, as lookups would.
    for i in 0..N {
        let _ = ds.get(&hex(i));
    }
    let after = LIVE.load(Ordering::Relaxed);
    let per = (after - before) as f64 / (N + 1) as f64;
    println!(
        "memory: {per:.0} bytes per tracked container (10k, each with a sub-cgroup, name/image/digest/pod/3 labels)"
    );
    drop(ds);
}

criterion_group!(benches, bench_lookups);

fn main() {
    if !std::env::args().any(|a| a == "--list") {
        memory_per_container();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
