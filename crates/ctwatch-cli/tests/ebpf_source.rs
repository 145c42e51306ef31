//! The eBPF source on the real kernel: full 64-bit IDs and kernel times, paths
//! beyond the tracepoint's own 1024-byte cut, repair after ring-buffer loss,
//! the pinned map of container cgroups, and the fallback to inotify.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn events_carry_the_kernel_time_and_the_full_cgroup_id() {
    require_root();
    let parent_name = unique("ktime");
    let mut tree = CgroupTree::new();
    let parent = tree.mkdir_p(&default_hierarchy(), &parent_name);
    let mut watch = Watch::start_with("ebpf", &["--cgroup-root", parent.to_str().unwrap()]);
    assert!(watch.logged("source: ebpf"), "{:?}", watch.log.lock().unwrap());
    let id = hex_id(&parent_name);
    let dir = tree.mkdir_p(&parent, &format!("docker/{id}"));
    let ino = fs::metadata(&dir).unwrap().ino();
    watch.wait_until(WAIT, "create", |seen| !seen.is_empty());
    let e = &watch.seen[0];
    assert_eq!(e["cgroup_id"].as_u64(), Some(ino));
    let kernel_time = e["kernel_time"].as_str().expect("kernel_time in the JSON");
    let time = e["time"].as_str().unwrap();
    assert!(kernel_time <= time, "the kernel saw it before ctwatch printed it: {kernel_time} vs {time}");
    assert!(kernel_time.ends_with('Z') && kernel_time.len() == "2026-11-23T00:41:48.032878953Z".len(), "{kernel_time}");
}

#[test]
fn paths_longer_than_the_tracepoints_1024_bytes_are_reported_whole() {
    require_root();
    let parent_name = unique("deep");
    let mut tree = CgroupTree::new();
    let parent = tree.mkdir_p(&default_hierarchy(), &parent_name);
    let mut watch = Watch::start_with("ebpf", &["--cgroup-root", parent.to_str().unwrap()]);
    // ~2.5 KiB of path above a Kubernetes pod: the subtree filter only passes
    // events whose path starts with the test's parent, so a path cut at the
    // front would be dropped and the test would time out.
    let filler: Vec<String> = (0..10).map(|i| format!("{i:02}{}", "x".repeat(240))).collect();
    let pod = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    let id = hex_id(&parent_name);
    let rel = format!("{}/kubepods/besteffort/pod{pod}/{id}", filler.join("/"));
    assert!(rel.len() > 2500);
    tree.mkdir_p(&parent, &rel);
    watch.wait_for("container_create", &id);
    assert_eq!(watch.seen[0]["args"]["pod_uid"], pod);
    tree.remove_all();
    watch.wait_until(WAIT, "deep remove", |seen| seen.len() == 2);
    assert_eq!(watch.seen[1]["event"], "container_remove");
}

#[test]
fn a_ring_buffer_overflow_is_repaired_and_no_container_is_lost() {
    require_root();
    let parent_name = unique("overflow");
    let mut tree = CgroupTree::new();
    let parent = tree.mkdir_p(&default_hierarchy(), &parent_name);
    // One page of ring buffer holds a handful of these long-path records.
    let mut watch =
        Watch::start_with("ebpf", &["--cgroup-root", parent.to_str().unwrap(), "--ring-buffer-size", "4096"]);
    let long = "l".repeat(200);
    let base = tree.mkdir_p(&parent, &format!("{long}/{long}/docker"));
    let ids: Vec<String> = (0..1500).map(|i| hex_id(&format!("{parent_name}-{i}"))).collect();
    for id in &ids {
        fs::create_dir(base.join(id)).unwrap();
    }
    // Remove every third one again, also in a burst.
    for id in ids.iter().step_by(3) {
        fs::remove_dir(base.join(id)).unwrap();
    }
    let alive: HashSet<&str> = ids.iter().enumerate().filter(|(i, _)| i % 3 != 0).map(|(_, id)| id.as_str()).collect();
    let settled = |seen: &[Value]| net_alive(seen) == alive.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
    watch.wait_until(WAIT, "the store to match the cgroupfs", settled);
    watch.drain_for(Duration::from_millis(500));
    assert!(watch.logged("ring buffer overflowed"), "the test must really overflow the ring buffer");
    assert_pairs_well_formed(&watch.seen);
    for id in &ids {
        let _ = fs::remove_dir(base.join(id));
    }
    watch.wait_until(WAIT, "every alive container removed", |seen| net_alive(seen).is_empty());
    assert_pairs_well_formed(&watch.seen);
}

/// Containers created and not removed, according to the events.
fn net_alive(seen: &[Value]) -> HashSet<String> {
    let mut alive = HashSet::new();
    for e in seen {
        let id = e["args"]["container_id"].as_str().unwrap().to_string();
        match e["event"].as_str().unwrap() {
            "container_remove" => {
                alive.remove(&id);
            }
            _ => {
                alive.insert(id);
            }
        }
    }
    alive
}

/// No duplicate creates or removes, and every remove follows its create.
fn assert_pairs_well_formed(seen: &[Value]) {
    let mut state: HashMap<String, &str> = HashMap::new();
    for e in seen {
        let id = e["args"]["container_id"].as_str().unwrap().to_string();
        let kind = e["event"].as_str().unwrap();
        let before = state.get(&id).copied();
        match kind {
            "container_create" | "existing_container" => {
                assert_ne!(before, Some("alive"), "duplicate create for {id}")
            }
            "container_remove" => {
                assert_eq!(before, Some("alive"), "remove without create for {id}")
            }
            other => panic!("unexpected event {other}"),
        }
        state.insert(id, if kind == "container_remove" { "gone" } else { "alive" });
    }
}

/// `bpftool map dump` of a pinned map, as key → value.
fn dump_map(pin: &Path) -> HashMap<u64, Value> {
    let out = run("bpftool", &["-j", "map", "dump", "pinned", pin.to_str().unwrap()]);
    let entries: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
    entries.into_iter().map(|e| (e["formatted"]["key"].as_u64().unwrap(), e["formatted"]["value"].clone())).collect()
}

/// A v1 cpuset cgroup takes no task until its cpus and mems are set: copy
/// them down from the hierarchy's root.
fn allow_tasks(hierarchy: &Path, dir: &Path) {
    let mut levels: Vec<&Path> = dir.ancestors().take_while(|d| *d != hierarchy).collect();
    levels.reverse();
    for level in levels {
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let target = level.join(file);
            if target.exists() && fs::read_to_string(&target).unwrap_or_default().trim().is_empty() {
                let value = fs::read_to_string(hierarchy.join(file)).unwrap();
                fs::write(&target, value.trim()).unwrap();
            }
        }
    }
}

/// Dumps the pinned map until `done` holds (2 s at most); the last dump.
fn map_when(pin: &Path, done: impl Fn(&HashMap<u64, Value>) -> bool) -> HashMap<u64, Value> {
    let mut map = dump_map(pin);
    for _ in 0..100 {
        if done(&map) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        map = dump_map(pin);
    }
    map
}

/// A docker container started while a `ctwatch watch` with its own pinned map runs.
struct DockerWithMap {
    watch: Watch,
    name: String,
    cid: String,
    pin_dir: std::path::PathBuf,
}

fn docker_with_map(tag: &str) -> DockerWithMap {
    let name = unique(tag);
    let pin_dir = Path::new("/sys/fs/bpf").join(&name);
    let mut watch = Watch::start_with("ebpf", &["--no-existing", "--pin-path", pin_dir.to_str().unwrap()]);
    let cid = run("/usr/bin/docker", &["run", "-d", "--name", &name, "local/busybox:1", "sleep", "60"]);
    watch.wait_for("container_create", &cid);
    DockerWithMap { watch, name, cid, pin_dir }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[test]
fn the_pinned_map_holds_container_cgroups_while_they_live() {
    require_root();
    let name = unique("pin");
    let pin_dir = Path::new("/sys/fs/bpf").join(&name);
    let pin = pin_dir.join("ctwatch_containers");
    let mut tree = CgroupTree::new();
    let parent = tree.mkdir_p(&default_hierarchy(), &name);
    let mut watch = Watch::start_with(
        "ebpf",
        &["--cgroup-root", parent.to_str().unwrap(), "--pin-path", pin_dir.to_str().unwrap()],
    );
    assert!(pin.exists(), "map pinned at {}", pin.display());

    let id = hex_id(&name);
    let root = tree.mkdir_p(&parent, &format!("docker/{id}"));
    let sub = tree.mkdir_p(&root, "sub");
    let (root_id, sub_id) = (fs::metadata(&root).unwrap().ino(), fs::metadata(&sub).unwrap().ino());
    watch.wait_until(WAIT, "create", |seen| !seen.is_empty());
    let map = map_when(&pin, |m| m.contains_key(&sub_id));
    let root_v = map.get(&root_id).expect("root cgroup in the map");
    let sub_v = map.get(&sub_id).expect("sub-cgroup in the map");
    assert_eq!(root_v["handle"].as_u64(), Some(fnv1a(&id)));
    assert_eq!(sub_v["handle"].as_u64(), Some(fnv1a(&id)));
    assert_eq!((root_v["flags"].as_u64(), sub_v["flags"].as_u64()), (Some(1), Some(0)));
    assert_eq!(root_v["state"].as_u64(), Some(2), "created");

    // A task entering the container's cgroup marks it started, in the kernel.
    allow_tasks(&default_hierarchy(), &root);
    let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    fs::write(root.join("cgroup.procs"), child.id().to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(dump_map(&pin)[&root_id]["state"].as_u64(), Some(3), "started");
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100)); // the task leaves the cgroup

    tree.remove_all();
    watch.wait_until(WAIT, "remove", |seen| seen.len() == 2);
    let left = map_when(&pin, |m| !m.contains_key(&root_id) && !m.contains_key(&sub_id));
    assert!(!left.contains_key(&root_id) && !left.contains_key(&sub_id), "removed from the map: {left:?}");
    assert!(watch.interrupt().success(), "clean exit on SIGINT");
    assert!(!pin.exists(), "unpinned on exit without --keep-pinned");
    let _ = fs::remove_dir(&pin_dir);
}

#[test]
fn a_kept_map_is_reused_and_refilled_after_a_restart() {
    require_root();
    let name = unique("keep");
    let pin_dir = Path::new("/sys/fs/bpf").join(&name);
    let pin = pin_dir.join("ctwatch_containers");
    let mut tree = CgroupTree::new();
    let parent = tree.mkdir_p(&default_hierarchy(), &name);
    let id = hex_id(&name);
    let root = tree.mkdir_p(&parent, &format!("docker/{id}"));
    let root_id = fs::metadata(&root).unwrap().ino();
    let args = ["--cgroup-root", parent.to_str().unwrap(), "--pin-path", pin_dir.to_str().unwrap(), "--keep-pinned"];

    let first = Watch::start_with("ebpf", &args);
    assert_eq!(dump_map(&pin)[&root_id]["state"].as_u64(), Some(1), "existing at start");
    assert!(first.interrupt().success());
    assert!(pin.exists(), "--keep-pinned leaves it");
    let ino_before = fs::metadata(&pin).unwrap().ino();

    // While ctwatch is down the container goes away: the restart must prune it.
    tree.rmdir(&root);
    let second = Watch::start_with("ebpf", &args);
    assert!(second.logged("reused=true"), "{:?}", second.log.lock().unwrap());
    assert_eq!(fs::metadata(&pin).unwrap().ino(), ino_before, "the same pinned map");
    assert!(!dump_map(&pin).contains_key(&root_id), "stale entry pruned at start");
    assert!(second.interrupt().success());
    let _ = fs::remove_file(&pin);
    let _ = fs::remove_dir(&pin_dir);
}

#[test]
fn containers_of_real_runtimes_are_in_the_map_under_their_unified_ids() {
    // On a hybrid host bpf_get_current_cgroup_id() returns the unified
    // hierarchy's ID: the map must hold it for a running container.
    require_root();
    let Some(unified) = all_hierarchies().into_iter().find(|h| {
        fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .any(|l| l.contains(&format!(" {} cgroup2 ", h.display())))
    }) else {
        return; // no unified hierarchy mounted: nothing to check
    };
    let DockerWithMap { mut watch, name, cid, pin_dir } = docker_with_map("unified");
    let pin = pin_dir.join("ctwatch_containers");
    let pid = run("/usr/bin/docker", &["inspect", "-f", "{{.State.Pid}}", &cid]);
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2_path = cgroup.lines().find_map(|l| l.strip_prefix("0::")).expect("a unified line");
    let unified_id = fs::metadata(unified.join(v2_path.trim_start_matches('/'))).unwrap().ino();
    let map = map_when(&pin, |m| m.contains_key(&unified_id));
    let value = map.get(&unified_id).unwrap_or_else(|| panic!("unified cgroup {unified_id} of {cid} in the map"));
    assert_eq!(value["handle"].as_u64(), Some(fnv1a(&cid)));
    run("/usr/bin/docker", &["rm", "-f", &name]);
    watch.wait_for("container_remove", &cid);
    let left = map_when(&pin, |m| !m.contains_key(&unified_id));
    assert!(!left.contains_key(&unified_id), "gone from the map after the container");
    assert!(watch.interrupt().success());
    let _ = fs::remove_dir(&pin_dir);
}

#[test]
fn without_bpf_capabilities_auto_falls_back_to_inotify_and_ebpf_says_why() {
    require_root();
    let bin = ctwatch_bin();
    let drop_caps = ["--bounding-set", "-bpf,-perfmon,-sys_admin"];
    // --source ebpf refuses, in one line, exit code 2.
    let out = output(
        "setpriv",
        &[&drop_caps[..], &[bin.to_str().unwrap(), "watch", "--source", "ebpf", "--no-pin"]].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--source ebpf: missing capabilities"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    // auto takes inotify, says why, and still sees containers come and go.
    let parent_name = unique("nocap");
    let mut tree = CgroupTree::new();
    let parent = tree.mkdir_p(&default_hierarchy(), &parent_name);
    let mut child = std::process::Command::new("setpriv")
        .args(drop_caps)
        .arg(&bin)
        .args(["watch", "--no-pin", "--cgroup-root", parent.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("source: inotify, because eBPF is unavailable: missing capabilities"), "{first}");
    let _ = lines.next(); // scan at start complete
    let id = hex_id(&parent_name);
    tree.mkdir_p(&parent, &format!("docker/{id}"));
    let stdout = child.stdout.take().unwrap();
    let line = std::io::BufRead::lines(std::io::BufReader::new(stdout)).next().unwrap().unwrap();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["args"]["container_id"], id.as_str());
    assert!(event.get("kernel_time").is_none(), "inotify does not know the kernel's time");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn another_tools_ebpf_program_tells_container_processes_apart_with_the_map() {
    // The example consumer (crates/ctwatch-ebpf/src/bpf/count_container_execs.bpf.c)
    // looks up bpf_get_current_cgroup_id() in the pinned map on every exec.
    use aya::maps::HashMap as BpfHashMap;
    use aya::programs::BtfTracePoint;
    require_root();
    let DockerWithMap { watch, name, cid, pin_dir } = docker_with_map("consumer");
    std::thread::sleep(Duration::from_millis(200));

    let btf = aya::Btf::from_sys_fs().unwrap();
    let mut ebpf = aya::EbpfLoader::new()
        .btf(Some(&btf))
        .map_pin_path(&pin_dir)
        .load(aya::include_bytes_aligned!("../../ctwatch-ebpf/bpf/count_container_execs.bpf.o"))
        .unwrap();
    let program: &mut BtfTracePoint = ebpf.program_mut("count_container_execs").unwrap().try_into().unwrap();
    program.load("sched_process_exec", &btf).unwrap();
    program.attach().unwrap();
    for _ in 0..3 {
        run("/usr/bin/docker", &["exec", &name, "true"]);
    }
    let counts: BpfHashMap<_, u64, u64> = BpfHashMap::try_from(ebpf.map("execs_by_container").unwrap()).unwrap();
    let by_handle: HashMap<u64, u64> = counts.iter().map(|e| e.unwrap()).collect();
    drop(ebpf);
    run("/usr/bin/docker", &["rm", "-f", &name]);
    assert_eq!(by_handle.get(&fnv1a(&cid)), Some(&3), "3 execs in {cid}: {by_handle:?}");
    assert!(watch.interrupt().success());
    let _ = fs::remove_dir(&pin_dir);
}

/// Test-only: makes the agent's eBPF source end this many ms after it starts.
const END_EBPF_AFTER_MS: &str = "CTWATCH_TEST_END_EBPF_AFTER_MS";

#[test]
fn under_hook_auto_the_kernel_sources_end_is_seen_and_auto_falls_back_to_inotify() {
    require_root();
    let parent_name = unique("src-end");
    let mut tree = CgroupTree::new();
    let parent = tree.mkdir_p(&default_hierarchy(), &parent_name);
    let before = hex_id(&format!("{parent_name}-before"));
    let before_dir = tree.mkdir_p(&parent, &format!("docker/{before}"));
    // The hook holds clones of the inbox's sender: the source's end must still be noticed.
    let args = ["--hook", "auto", "--cgroup-root", parent.to_str().unwrap()];
    let mut watch = Watch::start_with_env("auto", &args, &[(END_EBPF_AFTER_MS, "1000")]);
    assert!(watch.logged("source: ebpf"), "{:?}", watch.log.lock().unwrap());
    let start = std::time::Instant::now();
    while !watch.logged("falling back to inotify") {
        assert!(start.elapsed() < WAIT, "no fallback: {:#?}", watch.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(watch.logged(END_EBPF_AFTER_MS), "the warning says why: {:#?}", watch.log.lock().unwrap());
    // inotify follows from here on: a container made and one removed after the end are seen.
    let after = hex_id(&format!("{parent_name}-after"));
    let start = std::time::Instant::now();
    while !watch.logged("source: inotify (fallback)") {
        assert!(start.elapsed() < WAIT, "{:#?}", watch.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300)); // inotify's scan and watches in place
    tree.mkdir_p(&parent, &format!("docker/{after}"));
    watch.wait_for("container_create", &after);
    tree.rmdir(&before_dir);
    watch.wait_for("container_remove", &before);
    watch.drain_for(Duration::from_millis(300));
    let kinds = |id: &str| watch.about(id).iter().map(|e| e["event"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(kinds(&before), ["existing_container", "container_remove"], "nothing known is reported again");
    assert_eq!(kinds(&after), ["container_create"]);
}

#[test]
fn an_explicit_ebpf_source_that_ends_exits_2_with_the_reason() {
    require_root();
    let parent_name = unique("src-end-explicit");
    let mut tree = CgroupTree::new();
    let parent = tree.mkdir_p(&default_hierarchy(), &parent_name);
    let mut child = std::process::Command::new(ctwatch_bin())
        .args(["watch", "--standalone", "--no-pin", "--source", "ebpf", "--hook", "auto", "--cgroup-root"])
        .arg(&parent)
        .env(END_EBPF_AFTER_MS, "500")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            panic!("ctwatch kept running on the hook alone after its eBPF source ended");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the ebpf source ended") && stderr.contains(END_EBPF_AFTER_MS), "{stderr}");
}
