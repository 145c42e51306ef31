//! A container's whole life against real runtimes (issue 14):
//! `container_start` once after the create, and a `container_remove` that
//! says how it ended (exit code, signal, OOM kills), checked against the
//! runtime's own answer. With `--source ebpf` and the pinned map, the start,
//! the init's exit and OOM kills come from the kernel's process events; under
//! inotify, from `/proc` and the runtimes. Docker, `ctr run`, `podman run`
//! and bare `runc run` (whose exit only the kernel sees).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const DOCKER: &str = "/usr/bin/docker";
const IMAGE: &str = "local/busybox:1";

/// Removes a Docker container by name when dropped (a failing test leaves none behind).
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(DOCKER).args(["rm", "-f", &self.0]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

fn inspect(name: &str, format: &str) -> String {
    run(DOCKER, &["inspect", "-f", format, name])
}

/// Runs a container to its end (`docker run` without `-d`), returns its ID and Docker's `State`.
fn run_to_end(tag: &str, args: &[&str]) -> (String, RemoveOnDrop, Value) {
    let name = unique(tag);
    let guard = RemoveOnDrop(name.clone());
    let mut all = vec!["run", "--name", &name];
    all.extend_from_slice(args);
    let _ = output(DOCKER, &all); // exits non-zero on purpose
    let id = inspect(&name, "{{.Id}}");
    let state: Value = serde_json::from_str(&inspect(&name, "{{json .State}}")).unwrap();
    (id, guard, state)
}

/// The remove of `id` once `docker rm` made it.
fn removed(watch: &mut Watch, name: &str, id: &str) -> Value {
    run(DOCKER, &["rm", "-f", name]);
    watch.wait_for("container_remove", id);
    watch.event("container_remove", id).clone()
}

/// A private pin directory for the map of container cgroups, removed when dropped
/// (declare it before the `Watch`, so ctwatch stops first).
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> PinDir {
        PinDir(Path::new("/sys/fs/bpf").join(unique(tag)))
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("ctwatch_containers"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `ctwatch watch` with the eBPF source and its process events (they need the pinned map).
fn watch_ebpf(pin: &PinDir, more: &[&str]) -> Watch {
    let mut args = vec!["--no-existing", "--pin-path", pin.arg()];
    args.extend_from_slice(more);
    let watch = Watch::start_with("ebpf", &args);
    assert!(watch.logged("eBPF process events loaded"), "process events: {:#?}", watch.log.lock().unwrap());
    watch
}

/// `ctwatch watch` for `source` (`ebpf`, with its process events, or `inotify`).
fn watch_for(source: &str, pin: &PinDir) -> Watch {
    match source {
        "ebpf" => watch_ebpf(pin, &[]),
        other => Watch::start_with(other, &["--no-existing"]),
    }
}

fn exits_are_reported(mut watch: Watch, expect_start: bool, kernel: bool) {
    // (`expect_start`: the kill's container has a `container_start` with Docker's init PID;
    // `kernel`: the eBPF process events are on, so the init's OOM kill is the kernel's word.)
    // exit 3
    let (id, guard, state) = run_to_end("life-exit3", &[IMAGE, "sh", "-c", "exit 3"]);
    assert_eq!(state["ExitCode"], 3);
    let remove = removed(&mut watch, &guard.0, &id);
    let args = &remove["args"];
    assert_eq!(args["exit_code"], 3, "{remove}");
    assert!(args.get("exit_signal").is_none(), "{remove}");
    assert_eq!(args["container_name"], guard.0.as_str(), "the remove carries the name: {remove}");
    assert_eq!(args["container_image"], IMAGE);
    // Absent when its memory cgroup was gone before it could be read (it exits at once), never a guess.
    assert!(args.get("oom_kills").is_none_or(|k| k == 0), "{remove}");
    assert!(args["finished_at"].is_string(), "{remove}");
    assert!(watch.about(&id).iter().filter(|e| e["event"] == "container_start").count() <= 1, "at most one start");

    // docker kill -s KILL
    let name = unique("life-kill");
    let _guard = RemoveOnDrop(name.clone());
    let id = run(DOCKER, &["run", "-d", "--name", &name, IMAGE, "sleep", "60"]);
    let pid: u64 = inspect(&name, "{{.State.Pid}}").parse().unwrap();
    if expect_start {
        watch.wait_for("container_start", &id);
        let start = watch.event("container_start", &id).clone();
        assert_eq!(start["args"]["init_pid"], pid, "{start}");
        assert_eq!(start["args"]["argv0"], "sleep", "{start}");
        assert!(start["args"]["started_at"].is_string());
        if kernel {
            assert_eq!(start["args"]["started_at"], start["kernel_time"], "the kernel's exec: {start}");
        }
    }
    run(DOCKER, &["kill", "-s", "KILL", &name]);
    assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "137");
    let remove = removed(&mut watch, &name, &id);
    assert_eq!(remove["args"]["exit_signal"], 9, "{remove}");
    assert!(remove["args"].get("exit_code").is_none(), "{remove}");

    // OOM: a shell doubling a string past --memory 16m (after a second, so
    // the counter is watched before). Docker's own flag can miss a kill that
    // ends the container at once: tried again until Docker says OOMKilled.
    for attempt in 0..3 {
        let oom =
            ["--memory", "16m", "--memory-swap", "16m", IMAGE, "sh", "-c", "sleep 1; x=a; while true; do x=$x$x; done"];
        let (id, guard, state) = run_to_end("life-oom", &oom);
        let remove = removed(&mut watch, &guard.0, &id);
        assert_eq!(state["ExitCode"], 137, "{state}");
        assert_eq!(remove["args"]["exit_signal"], 9, "{remove}");
        assert!(remove["args"]["oom_kills"].as_u64().unwrap_or(0) >= 1, "the kernel counted the kill: {remove}");
        if kernel {
            // The shell allocating is the container's init (PID 1): the OOM killer's victim.
            assert_eq!(remove["args"]["oom_killed"], true, "the kernel saw the init killed: {remove}");
            break;
        }
        assert_eq!(remove["args"]["oom_killed"], state["OOMKilled"], "Docker's flag: {remove}");
        if state["OOMKilled"] == true {
            break;
        }
        assert!(attempt < 2, "Docker never flagged the OOM kill: {state}");
    }
}

#[test]
fn docker_exits_signals_and_oom_kills_with_the_default_flags() {
    require_root();
    exits_are_reported(Watch::start_with("auto", &["--no-existing", "--hook", "auto"]), true, false);
}

#[test]
fn docker_exits_signals_and_oom_kills_from_the_kernels_process_events() {
    require_root();
    let pin = PinDir::new("life-pin");
    exits_are_reported(watch_ebpf(&pin, &["--hook", "auto"]), true, true);
}

#[test]
fn docker_exits_signals_and_oom_kills_under_inotify_without_the_hook() {
    require_root();
    exits_are_reported(Watch::start_with("inotify", &["--no-existing"]), true, false);
}

#[test]
fn a_container_running_before_ctwatch_has_no_start_and_its_remove_says_how_it_ended() {
    require_root();
    let name = unique("life-existing");
    let _guard = RemoveOnDrop(name.clone());
    let id = run(DOCKER, &["run", "-d", "--name", &name, IMAGE, "sleep", "60"]);
    let mut watch = Watch::start_with("auto", &["--hook", "auto"]);
    watch.wait_for("existing_container", &id);
    run(DOCKER, &["kill", "-s", "KILL", &name]);
    let remove = removed(&mut watch, &name, &id);
    assert_eq!(remove["args"]["exit_signal"], 9, "{remove}");
    watch.drain_for(Duration::from_millis(200));
    let kinds: Vec<&str> = watch.about(&id).iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["existing_container", "container_remove"], "no container_start");
}

#[test]
fn runc_create_then_start_without_the_hook_starts_at_the_start() {
    require_root();
    let mut watch = Watch::start_with("inotify", &["--no-existing"]);
    let id = unique("life-runc-cs");
    let bundle = runc_bundle(&id, &["sleep", "60"]);
    let _delete = Delete(id.clone(), bundle.clone());
    let status = Command::new("runc")
        .args(["create", "--bundle", bundle.to_str().unwrap(), &id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    watch.wait_for("container_create", &id);
    std::thread::sleep(Duration::from_secs(2));
    watch.drain_for(Duration::from_millis(100));
    assert!(!has_event(&watch.seen, "container_start", &id), "no start before runc start: {:?}", watch.about(&id));
    let state: Value = serde_json::from_str(&run("runc", &["state", &id])).unwrap();
    run("runc", &["start", &id]);
    watch.wait_for("container_start", &id);
    let start = watch.event("container_start", &id).clone();
    assert_eq!(start["args"]["init_pid"], state["pid"], "runc state's init PID: {start}");
    assert_eq!(start["args"]["argv0"], "sleep");
    run("runc", &["delete", "-f", &id]);
    watch.wait_for("container_remove", &id);
    let kinds: Vec<&str> = watch.about(&id).iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["container_create", "container_start", "container_remove"]);
}

/// The remove of `id`, once `cleanup` made it, with its `container_start` (if any).
fn remove_after(watch: &mut Watch, id: &str, cleanup: impl FnOnce()) -> Value {
    cleanup();
    watch.wait_for("container_remove", id);
    let remove = watch.event("container_remove", id).clone();
    let starts = watch.about(id).iter().filter(|e| e["event"] == "container_start").count();
    assert!(starts <= 1, "at most one start: {:#?}", watch.about(id));
    remove
}

#[test]
fn ctr_run_exit_code_under_ebpf_and_inotify() {
    require_root();
    for source in ["ebpf", "inotify"] {
        let pin = PinDir::new("life-ctr-pin");
        let mut watch = watch_for(source, &pin);
        let id = unique("life-ctr");
        // Foreground: `ctr run` exits with the task's status and deletes the task (its cgroup goes).
        let ran = output("ctr", &["run", "docker.io/local/busybox:1", &id, "sh", "-c", "sleep 1; exit 3"]);
        let remove = remove_after(&mut watch, &id, || {
            let _ = output("ctr", &["task", "rm", "-f", &id]);
            let _ = output("ctr", &["container", "rm", &id]);
        });
        assert_eq!(ran.status.code(), Some(3), "containerd's own answer: {ran:?}");
        assert_eq!(remove["args"]["runtime"], "containerd", "{remove}");
        assert_eq!(remove["args"]["exit_code"], 3, "{source}: {remove}");
        assert!(remove["args"].get("exit_signal").is_none(), "{source}: {remove}");
        if source == "ebpf" {
            let start = watch.event("container_start", &id);
            assert_eq!(start["args"]["argv0"], "sh", "the kernel's exec: {start}");
            assert_eq!(start["args"]["started_at"], start["kernel_time"], "{start}");
        }
    }
}

#[test]
fn podman_run_exit_code_under_ebpf_and_inotify_and_kill_under_ebpf() {
    require_root();
    let podman = |args: &[&str]| {
        let mut all = vec!["--runtime", "runc", "--cgroup-manager", "cgroupfs"];
        all.extend_from_slice(args);
        output("podman", &all)
    };
    for source in ["ebpf", "inotify"] {
        let pin = PinDir::new("life-podman-pin");
        let mut watch = watch_for(source, &pin);
        // exit 3
        let name = unique("life-podman-exit");
        let ran = podman(&["run", "--name", &name, IMAGE, "sh", "-c", "sleep 1; exit 3"]);
        assert_eq!(ran.status.code(), Some(3), "podman's own answer: {ran:?}");
        let id = String::from_utf8_lossy(&podman(&["inspect", "-f", "{{.Id}}", &name]).stdout).trim().to_string();
        let remove = remove_after(&mut watch, &id, || {
            podman(&["rm", "-f", "-t", "0", &name]);
        });
        assert_eq!(remove["args"]["runtime"], "podman", "{remove}");
        assert_eq!(remove["args"]["exit_code"], 3, "{source}: {remove}");
        assert!(remove["args"].get("exit_signal").is_none(), "{source}: {remove}");

        // Killed with SIGKILL: under inotify only Podman's record could say so, and Podman
        // (4.3, its API service) records a kill after `podman container cleanup`, often
        // later than the remove's hold (seen: nothing after 1.5 s); the kernel sees it at once.
        if source != "ebpf" {
            continue;
        }
        let name = unique("life-podman-kill");
        let started = podman(&["run", "-d", "--name", &name, IMAGE, "sleep", "60"]);
        let id = String::from_utf8_lossy(&started.stdout).trim().to_string();
        assert_eq!(id.len(), 64, "{started:?}");
        watch.wait_for("container_start", &id);
        podman(&["kill", "-s", "KILL", &name]);
        let status = podman(&["wait", &name]);
        assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "137", "podman's own answer");
        let remove = remove_after(&mut watch, &id, || {
            podman(&["rm", "-f", "-t", "0", &name]);
        });
        assert_eq!(remove["args"]["exit_signal"], 9, "{remove}");
        assert!(remove["args"].get("exit_code").is_none(), "{remove}");
    }
}

#[test]
fn bare_runc_run_exit_code_from_the_kernel() {
    require_root();
    let pin = PinDir::new("life-runc-pin");
    let mut watch = watch_ebpf(&pin, &[]);
    let id = unique("life-runc-exit");
    let bundle = runc_bundle(&id, &["sh", "-c", "sleep 1; exit 3"]);
    let _delete = Delete(id.clone(), bundle.clone());
    let status = Command::new("runc")
        .args(["run", "-d", "--bundle", bundle.to_str().unwrap(), &id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    watch.wait_for("container_start", &id);
    let start = watch.event("container_start", &id).clone();
    // runc's own answer: stopped once the init exited (its cgroup stays until `runc delete`).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let state: Value = serde_json::from_str(&run("runc", &["state", &id])).unwrap();
        if state["status"] == "stopped" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "runc never said stopped: {state}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let remove = remove_after(&mut watch, &id, || {
        run("runc", &["delete", "-f", &id]);
    });
    assert_eq!(remove["args"]["exit_code"], 3, "{remove}");
    assert!(remove["args"].get("exit_signal").is_none(), "{remove}");
    assert_eq!(remove["args"]["init_pid"], start["args"]["init_pid"], "{remove}");
    let (started, finished) =
        (remove["args"]["started_at"].as_str().unwrap(), remove["args"]["finished_at"].as_str().unwrap());
    assert!(started < finished, "{remove}");
}

#[test]
fn a_container_running_before_ctwatch_ends_with_the_kernels_exit_status_without_enrichment() {
    require_root();
    // --no-enrich: no runtime is asked, so the exit status can only be the kernel's
    // (the init found in the container's cgroup at the scan, its exit seen by eBPF).
    let name = unique("life-existing-ebpf");
    let _guard = RemoveOnDrop(name.clone());
    let id = run(DOCKER, &["run", "-d", "--name", &name, IMAGE, "sh", "-c", "sleep 60"]);
    let pid: u64 = inspect(&name, "{{.State.Pid}}").parse().unwrap();
    let pin = PinDir::new("life-existing-pin");
    let mut watch = Watch::start_with("ebpf", &["--pin-path", pin.arg(), "--no-enrich"]);
    assert!(watch.logged("eBPF process events loaded"), "{:#?}", watch.log.lock().unwrap());
    watch.wait_for("existing_container", &id);
    run(DOCKER, &["kill", "-s", "KILL", &name]);
    let remove = removed(&mut watch, &name, &id);
    assert_eq!(remove["args"]["exit_signal"], 9, "{remove}");
    assert!(remove["args"].get("exit_code").is_none(), "{remove}");
    assert!(remove["args"]["finished_at"].is_string(), "{remove}");
    watch.drain_for(Duration::from_millis(200));
    let kinds: Vec<&str> = watch.about(&id).iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["existing_container", "container_remove"], "no container_start (init {pid})");
}

/// A bare runc container and its bundle, deleted when dropped.
struct Delete(String, PathBuf);

impl Drop for Delete {
    fn drop(&mut self) {
        let _ = Command::new("runc").args(["delete", "-f", &self.0]).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}
