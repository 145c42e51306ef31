//! The data source in process, on the real kernel: a container cgroup made
//! here with a real process in it (in its own mount namespace), looked up
//! every way, subscribed to, resolved into, and removed.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ctwatch::{ContainerEvent, EventKind, Runtime};
use ctwatch_agent::{Agent, AgentConfig, ContainerFilter, DataSourceError, LookupKey, Subscription};

fn next_about(rt: &tokio::runtime::Runtime, sub: &mut Subscription, kind: EventKind, id: &str) -> ContainerEvent {
    rt.block_on(async {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(15), sub.next())
                .await
                .unwrap_or_else(|_| panic!("no {} for {id}", kind.as_str()))
                .expect("not lagged")
                .expect("agent running");
            if event.kind == kind && event.container.id == id {
                return event;
            }
        }
    })
}

/// On a v1 cpuset hierarchy a cgroup takes processes only once it has CPUs and memory nodes.
fn make_usable(dir: &Path) {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let Ok(value) = fs::read_to_string(dir.parent().unwrap().join(file)) else { continue };
        let current = fs::read_to_string(dir.join(file)).unwrap_or_default();
        if current.trim().is_empty() {
            fs::write(dir.join(file), value.trim()).unwrap();
        }
    }
}

#[test]
fn a_container_is_found_every_way_and_its_paths_stay_inside() {
    assert!(nix::unistd::geteuid().is_root(), "run as root (scripts/test.sh)");
    let config = AgentConfig::for_host().unwrap();
    let mount_point = config.tree.hierarchy.mount_point.clone();
    let agent = Agent::start(config).unwrap();
    let ds = agent.data_source();
    let mut events = ds.subscribe();
    assert!(ds.wait_scanned(Duration::from_secs(30)));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let id = format!("{:012x}{}", 0xda7a_0000_0000u64 + std::process::id() as u64, "d".repeat(52));
    let docker = mount_point.join("docker");
    let made_docker = !docker.exists();
    if made_docker {
        fs::create_dir(&docker).unwrap();
    }
    make_usable(&docker);
    let dir: PathBuf = docker.join(&id);
    fs::create_dir(&dir).unwrap();
    make_usable(&dir);
    let created = next_about(&rt, &mut events, EventKind::ContainerCreate, &id);
    assert_eq!(created.container.runtime, Runtime::Docker);

    // A process in the container, in a mount namespace of its own.
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let own_ns = fs::metadata("/proc/self/ns/mnt").unwrap().ino();
    let mount_ns = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            let ns = fs::metadata(format!("/proc/{pid}/ns/mnt")).unwrap().ino();
            (ns != own_ns).then_some(ns)
        })
        .expect("unshare made a mount namespace");
    fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();

    let by_id = ds.get(&id[..12]).unwrap();
    assert_eq!(by_id.container_id, id);
    assert_eq!(ds.get_by_cgroup_id(created.cgroup_id).unwrap().container_id, id);
    let by_pid = ds.get_by_pid(pid).unwrap();
    assert_eq!(
        (by_pid.container_id.as_str(), by_pid.init_pid, by_pid.mount_ns),
        (id.as_str(), Some(pid), Some(mount_ns))
    );
    assert_eq!(ds.get_by_mount_ns(mount_ns).unwrap().container_id, id);
    assert_eq!(ds.lookup(&format!("cgroup:{}", created.cgroup_id).parse().unwrap()).unwrap().container_id, id);
    assert_eq!(ds.lookup(&LookupKey::Pid(pid)).unwrap().container_id, id);
    assert!(matches!("inode:1".parse::<LookupKey>(), Err(DataSourceError::UnsupportedKey(k)) if k == "inode"));
    assert!(matches!("pid:abc".parse::<LookupKey>(), Err(DataSourceError::InvalidKey { .. })));
    assert!(matches!(ds.get("zzzz-no-such"), Err(DataSourceError::NotFound(_))));
    let docker_only = ContainerFilter { runtime: Some(Runtime::Docker), ..ContainerFilter::default() };
    assert!(ds.list(&docker_only).iter().any(|r| r.container_id == id));
    let podman_only = ContainerFilter { runtime: Some(Runtime::Podman), ..ContainerFilter::default() };
    assert!(!ds.list(&podman_only).iter().any(|r| r.container_id == id));

    // Paths resolve through the process's root (the host's files, seen from its own mount namespace).
    let resolved = ds.resolve_path(&id, "/../../etc/hostname").unwrap();
    assert_eq!(resolved.container_path, PathBuf::from("/etc/hostname"));
    assert_eq!(resolved.host_path, PathBuf::from(format!("/proc/{pid}/root/etc/hostname")));

    // A later subscriber gets the container as current state.
    let late = ds.subscribe();
    assert!(late.current().iter().any(|e| e.container.id == id && e.kind == EventKind::ContainerCreate));

    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    fs::remove_dir(&dir).unwrap();
    next_about(&rt, &mut events, EventKind::ContainerRemove, &id);
    if made_docker {
        let _ = fs::remove_dir(&docker);
    }
    agent.stop();
    agent.join().unwrap();
    assert!(matches!(events.blocking_next(), Ok(None)), "subscriptions end with the agent");
}
