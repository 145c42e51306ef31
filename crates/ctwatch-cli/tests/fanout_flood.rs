//! Lookups cannot stall the tracker: 50 clients flood `GetByMountNs` (a
//! mount namespace no container has, so every call scans `/proc` for every
//! live container) and `List` while 5,000 container cgroups are made and
//! removed, and a Watch client still sees every create and every remove.
//! (How much the flood slows the churn is measured by the `api` bench, not here.)

mod common;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::serve::Serve;
use common::*;
use ctwatch_api::pb;

const CONTAINERS: usize = 5_000;
const FLOODERS: usize = 50;

#[test]
fn fifty_clients_flooding_lookups_lose_no_event_of_a_5000_container_churn() {
    require_root();
    let mut tree = CgroupTree::new();
    let root = tree.mkdir_p(&default_hierarchy(), &unique("flood"));
    let docker = tree.mkdir_p(&root, "docker");
    let root_arg = root.display().to_string();
    let serve = Serve::start(&["--no-enrich", "--cgroup-root", &root_arg]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tag = std::process::id() as u64;
    let ids: Vec<String> =
        (0..CONTAINERS).map(|i| format!("{:016x}{:048x}", tag, 0x000f_100d_0000_u64 + i as u64)).collect();

    let own_mount_ns = std::fs::metadata("/proc/self/ns/mnt").unwrap().ino();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let (events, flooders) = rt.block_on(async {
        let mut watcher = serve.client().await;
        let request = pb::WatchRequest { skip_current: true, buffer: 65_536, ..Default::default() };
        let mut stream = watcher.watch(request).await.unwrap().into_inner();
        match stream.message().await {
            Ok(Some(pb::WatchResponse { item: Some(pb::watch_response::Item::Synced(_)) })) => {}
            other => panic!("expected synced first, got {other:?}"),
        }
        let mut flooders = Vec::new();
        for i in 0..FLOODERS {
            let mut client = serve.client().await;
            let (stop, calls) = (stop.clone(), calls.clone());
            flooders.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if i % 2 == 0 {
                        let missing = client.get_by_mount_ns(pb::GetByMountNsRequest { mount_ns: own_mount_ns }).await;
                        assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound, "the test's own mount ns");
                    } else {
                        client.list(pb::ListRequest::default()).await.expect("List");
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // Let the flood start, then churn on a thread of its own.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let dirs: Vec<_> = ids.iter().map(|id| docker.join(id)).collect();
        let churn = std::thread::spawn(move || {
            for dir in &dirs {
                std::fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                std::fs::remove_dir(dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
            }
        });
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut seen = HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while seen.len() < 2 * CONTAINERS {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(pb::WatchResponse { item: Some(pb::watch_response::Item::Event(e)) }))) => {
                    let id = e.container.as_ref().map(|c| c.container_id.clone()).unwrap_or_default();
                    if wanted.contains(id.as_str()) {
                        seen.insert((e.event, id));
                    }
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => panic!("the Watch stream ended"),
                Ok(Err(status)) => panic!("the Watch stream failed: {status}"),
                Err(_) => break,
            }
        }
        churn.join().expect("the churn");
        (seen, flooders)
    });
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for f in flooders {
            f.await.expect("a flooding client failed");
        }
    });
    let missing: Vec<String> = ["container_create", "container_remove"]
        .iter()
        .flat_map(|kind| ids.iter().map(move |id| (kind.to_string(), id.clone())))
        .filter(|key| !events.contains(key))
        .map(|(kind, id)| format!("{kind} {id}"))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} events lost, e.g. {:?}",
        missing.len(),
        2 * CONTAINERS,
        &missing[..missing.len().min(5)]
    );
    let calls = calls.load(Ordering::Relaxed);
    assert!(calls >= FLOODERS as u64, "the clients made only {calls} calls: no flood");
    eprintln!("{} events seen while {FLOODERS} clients made {calls} GetByMountNs/List calls", events.len());
}
