//! Process events of a container cgroup against the real kernel: a cgroup
//! (in the unified hierarchy, plus a v1 memory cgroup with a small limit on
//! a hybrid host) entered in a private pinned map; a process execs in it and
//! exits with 3, another is killed by SIGKILL, a third is OOM-killed; each
//! decoded event is checked.
//!
//! Needs root, BTF, bpffs at /sys/fs/bpf and cgroup v2 (alone or beside v1).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use ctwatch_ebpf::abi::{container_handle, exit_signal, exit_status, ContainerValue, MapState, CGROUP_IS_ROOT};
use ctwatch_ebpf::{ContainersMap, ProcessEvent, ProcessEventSource, ProcessEventsConfig};

/// A cgroup directory removed on drop (once its processes are gone).
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn unified_root() -> PathBuf {
    for p in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        if Path::new(p).join("cgroup.procs").exists() && Path::new(p).join("cgroup.controllers").exists() {
            return PathBuf::from(p);
        }
    }
    panic!("no cgroup v2 hierarchy mounted");
}

/// Where to put a memory limit, and its file: v1's memory controller if mounted, else v2's memory.max.
fn memory_cgroup(name: &str, unified: &Path) -> (Option<Cgroup>, PathBuf) {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() {
        let dir = v1.join(name);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("memory.limit_in_bytes"), "8M").unwrap();
        (Some(Cgroup(dir.clone())), dir.join("cgroup.procs"))
    } else {
        fs::write(unified.join("memory.max"), "8M").unwrap();
        (None, unified.join("cgroup.procs"))
    }
}

fn sh_in(procs: &[&Path], then: &str) -> Child {
    let joins: Vec<String> = procs.iter().map(|p| format!("echo $$ > {}", p.display())).collect();
    Command::new("/bin/sh")
        .args(["-c", &format!("{} && exec {then}", joins.join(" && "))])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_events(
    source: &mut ProcessEventSource,
    cgroup_id: u64,
    seen: &mut Vec<ProcessEvent>,
    done: impl Fn(&[ProcessEvent]) -> bool,
) {
    let started = Instant::now();
    while !done(seen) {
        assert!(started.elapsed() < Duration::from_secs(20), "events seen: {seen:#?}");
        for e in source.poll(Duration::from_millis(200)).unwrap() {
            let id = match &e {
                ProcessEvent::Exec { cgroup_id, .. }
                | ProcessEvent::Exit { cgroup_id, .. }
                | ProcessEvent::OomKill { cgroup_id, .. } => *cgroup_id,
                _ => 0,
            };
            if id == cgroup_id {
                seen.push(e);
            }
        }
    }
}

fn exit_of(seen: &[ProcessEvent], of: u32) -> Option<u32> {
    seen.iter().find_map(|e| match e {
        ProcessEvent::Exit { pid, exit_code, .. } if *pid == of => Some(*exit_code),
        _ => None,
    })
}

#[test]
fn exec_exit_kill_and_oom_kill_in_a_container_cgroup() {
    assert!(nix::unistd::geteuid().is_root(), "this test loads eBPF programs: run it as root");
    let name = format!("ctwatch-test-procev-{}", std::process::id());
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
    let map = ContainersMap::open(&pin_dir, 1024, false, None).expect("the pinned map opens");
    let unified = unified_root().join(&name);
    fs::create_dir(&unified).unwrap();
    let unified_cgroup = Cgroup(unified.clone());
    let cgroup_id = fs::metadata(&unified).unwrap().ino();
    let (_memory_cgroup, memory_procs) = memory_cgroup(&name, &unified);

    let config = ProcessEventsConfig { pin_dir: pin_dir.clone(), ..ProcessEventsConfig::default() };
    let mut source = ProcessEventSource::load(&config).expect("the process events load");
    // The container's cgroup, as ctwatch's tracker would enter it.
    let mut containers: BpfHashMap<MapData, u64, ContainerValue> =
        BpfHashMap::try_from(Map::HashMap(MapData::from_pin(pin_dir.join("ctwatch_containers")).unwrap())).unwrap();
    let value =
        ContainerValue { handle: container_handle(&name), state: MapState::Created as u32, flags: CGROUP_IS_ROOT };
    containers.insert(cgroup_id, value, 0).unwrap();
    assert_eq!(map.get(cgroup_id), Some(value));

    let procs = unified.join("cgroup.procs");
    let mut seen = Vec::new();

    // 1. Exec in the cgroup, exit 3.
    let mut first = sh_in(&[&procs], "/bin/sh -c 'exit 3'");
    let first_pid = first.id();
    assert_eq!(first.wait().unwrap().code(), Some(3));
    wait_events(&mut source, cgroup_id, &mut seen, |s| exit_of(s, first_pid).is_some());
    let exec = seen.iter().find(|e| matches!(e, ProcessEvent::Exec { .. })).expect("the exec was reported");
    let ProcessEvent::Exec { pid, tgid, filename, argv0, ktime_ns, .. } = exec else { unreachable!() };
    assert_eq!((*pid, *tgid), (first_pid, first_pid));
    assert!(filename.ends_with("/sh"), "{filename}");
    assert_eq!(argv0, "/bin/sh");
    assert!(*ktime_ns > 0);
    let wall = source.wall_time(*ktime_ns);
    assert!(wall.elapsed().unwrap_or_default() < Duration::from_secs(60), "kernel time is recent: {wall:?}");
    let code = exit_of(&seen, first_pid).unwrap();
    assert_eq!((exit_status(code), exit_signal(code)), (Some(3), None), "exit code {code:#x}");

    // 2. Killed by SIGKILL.
    let mut second = sh_in(&[&procs], "sleep 100");
    let second_pid = second.id();
    // Wait for it to be in the cgroup and exec'd.
    let started = Instant::now();
    while !fs::read_to_string(&procs).unwrap().lines().any(|l| l == second_pid.to_string())
        || fs::read_to_string(format!("/proc/{second_pid}/comm")).unwrap_or_default().trim() != "sleep"
    {
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    second.kill().unwrap();
    second.wait().unwrap();
    wait_events(&mut source, cgroup_id, &mut seen, |s| exit_of(s, second_pid).is_some());
    let code = exit_of(&seen, second_pid).unwrap();
    assert_eq!((exit_status(code), exit_signal(code)), (None, Some(9)), "exit code {code:#x}");

    // 3. OOM-killed: 64 MiB written under an 8 MiB limit.
    let mut third = sh_in(&[&procs, &memory_procs], "python3 -c 'b = bytearray(b\"x\" * (64 << 20)); print(len(b))'");
    let third_pid = third.id();
    let status = third.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "the OOM killer ended it: {status:?}");
    wait_events(&mut source, cgroup_id, &mut seen, |s| {
        exit_of(s, third_pid).is_some() && s.iter().any(|e| matches!(e, ProcessEvent::OomKill { .. }))
    });
    let oom = seen.iter().find(|e| matches!(e, ProcessEvent::OomKill { .. })).unwrap();
    assert!(
        matches!(oom, ProcessEvent::OomKill { pid, tgid, .. } if *pid == third_pid && *tgid == third_pid),
        "{oom:?}"
    );
    let code = exit_of(&seen, third_pid).unwrap();
    assert_eq!(exit_signal(code), Some(9), "exit code {code:#x}");

    // Only the container's first exec was reported.
    assert_eq!(seen.iter().filter(|e| matches!(e, ProcessEvent::Exec { .. })).count(), 1, "{seen:#?}");
    assert_eq!(source.dropped(), 0);
    drop(source);
    drop(map);
    let _ = fs::remove_dir(&pin_dir);
    drop(unified_cgroup);
}

/// A bare `runc run` in a cgroup the map holds (every exec reported): runc's own execs happen
/// before its init joins the cgroup, so the first exec there is the entrypoint's (what the agent
/// reports as `container_start`), and its process's exit is the container's exit status.
#[test]
fn a_runc_containers_execs_start_with_its_entrypoint_and_its_init_exit_is_reported() {
    assert!(nix::unistd::geteuid().is_root(), "this test loads eBPF programs: run it as root");
    let rootfs_source = Path::new("/var/lib/ctwatch-test/rootfs");
    assert!(rootfs_source.join("bin/sh").exists(), "scripts/setup-host.sh makes the test rootfs");
    let name = format!("ctwatch-test-procev-runc-{}", std::process::id());
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
    let map = ContainersMap::open(&pin_dir, 1024, false, None).expect("the pinned map opens");
    let unified = unified_root().join(&name);
    fs::create_dir(&unified).unwrap();
    let unified_cgroup = Cgroup(unified.clone());
    let cgroup_id = fs::metadata(&unified).unwrap().ino();
    let config = ProcessEventsConfig { pin_dir: pin_dir.clone(), every_exec: true, ..ProcessEventsConfig::default() };
    let mut source = ProcessEventSource::load(&config).expect("the process events load");
    let mut containers: BpfHashMap<MapData, u64, ContainerValue> =
        BpfHashMap::try_from(Map::HashMap(MapData::from_pin(pin_dir.join("ctwatch_containers")).unwrap())).unwrap();
    let value =
        ContainerValue { handle: container_handle(&name), state: MapState::Created as u32, flags: CGROUP_IS_ROOT };
    containers.insert(cgroup_id, value, 0).unwrap();

    let bundle = tempfile::tempdir().unwrap();
    let rootfs = bundle.path().join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    assert!(Command::new("cp").arg("-a").arg(rootfs_source.join(".")).arg(&rootfs).status().unwrap().success());
    assert!(Command::new("runc").args(["spec", "--bundle"]).arg(bundle.path()).status().unwrap().success());
    let config_path = bundle.path().join("config.json");
    let mut spec: serde_json::Value = serde_json::from_str(&fs::read_to_string(&config_path).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", "/bin/true; exit 7"]);
    spec["linux"]["cgroupsPath"] = format!("/{name}").into();
    fs::write(&config_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let status = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg(&name)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    let _ = Command::new("runc").args(["delete", "-f", &name]).status();
    assert_eq!(status.code(), Some(7), "the container's exit status is runc's");

    let mut seen = Vec::new();
    wait_events(&mut source, cgroup_id, &mut seen, |s| {
        s.iter().any(|e| matches!(e, ProcessEvent::Exit { exit_code, .. } if exit_status(*exit_code) == Some(7)))
    });
    // runc's own helpers (runc init's intermediate processes) exit in the cgroup before any exec;
    // the first exec is the entrypoint, and the init that exits with 7 is the process that made it.
    let execs: Vec<(u32, &str, &str)> = seen
        .iter()
        .filter_map(|e| match e {
            ProcessEvent::Exec { tgid, filename, argv0, .. } => Some((*tgid, filename.as_str(), argv0.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(execs.len(), 2, "{seen:#?}");
    let (init_pid, filename, argv0) = execs[0];
    assert_eq!((filename, argv0), ("/bin/sh", "/bin/sh"), "{seen:#?}");
    assert_eq!(execs[1].1, "/bin/true");
    let code = exit_of(&seen, init_pid).expect("the init's exit");
    assert_eq!(exit_status(code), Some(7), "{seen:#?}");
    drop(source);
    drop(map);
    let _ = fs::remove_dir(&pin_dir);
    for controller in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = fs::remove_dir(controller.path().join(&name));
    }
    drop(unified_cgroup);
}
