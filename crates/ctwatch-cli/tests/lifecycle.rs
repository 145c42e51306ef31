//! A container's whole life against real runtimes (issue 14):
//! `container_start` once after the create, and a `container_remove` that
//! says how it ended (exit code, signal, OOM kills), checked against the
//! runtime's own answer.

mod common;

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

fn exits_are_reported(mut watch: Watch, expect_start: bool) {
    // (`expect_start`: the kill's container has a `container_start` with Docker's init PID.)
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
    exits_are_reported(Watch::start_with("auto", &["--no-existing", "--hook", "auto"]), true);
}

#[test]
fn docker_exits_signals_and_oom_kills_under_inotify_without_the_hook() {
    require_root();
    exits_are_reported(Watch::start_with("inotify", &["--no-existing"]), true);
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
    struct Delete(String, std::path::PathBuf);
    impl Drop for Delete {
        fn drop(&mut self) {
            let _ = Command::new("runc").args(["delete", "-f", &self.0]).stderr(Stdio::null()).status();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
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
