//! The runtime hook (fanotify `FAN_OPEN_EXEC_PERM` on runc/crun/conmon)
//! against the real runtimes: what it sees before a container starts, how it
//! links to the create, the init PID and its end, the policy, failing
//! creates, and ctwatch dying while a runtime waits.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const DOCKER: &str = "/usr/bin/docker";
const IMAGE: &str = "local/busybox:1";
const TASKS: &str = "/run/containerd/io.containerd.runtime.v2.task";

/// `ctwatch watch` with the default kernel source and the hook required.
fn hook_watch(args: &[&str]) -> Watch {
    let mut all = vec!["--no-existing", "--hook", "on"];
    all.extend_from_slice(args);
    Watch::start_with("auto", &all)
}

/// An event's `time` in ns since the epoch.
fn time_ns(event: &Value) -> i64 {
    let time = event["time"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(time).unwrap().timestamp_nanos_opt().unwrap()
}

/// The precreate came first in the stream, and before the kernel made the
/// container's cgroup (so before any of its processes could exist).
fn assert_precreate_before_create(watch: &Watch, id: &str) {
    let position = |kind: &str| watch.seen.iter().position(|e| e["event"] == kind && e["args"]["container_id"] == id);
    let about: Vec<&Value> = watch.seen.iter().filter(|e| e["args"]["container_id"] == id).collect();
    let (pre, create) = match (position("container_precreate"), position("container_create")) {
        (Some(pre), Some(create)) => (pre, create),
        _ => panic!("a precreate and a create for {id}: {about:?}"),
    };
    assert!(pre < create, "precreate is ahead of the create");
    let precreate = &watch.seen[pre];
    let ctime = watch.seen[create]["args"]["ctime"].as_i64().unwrap();
    assert!(ctime > 0, "{}", watch.seen[create]);
    assert!(time_ns(precreate) < ctime, "precreate read at {} ns, cgroup made at {ctime} ns", time_ns(precreate));
}

/// Deletes a runc container (and its bundle) when dropped, so a failing test
/// leaves no `runc init` behind holding the test's pipes.
struct RuncContainer {
    id: String,
    bundle: PathBuf,
}

impl RuncContainer {
    fn new(tag: &str, args: &[&str]) -> Self {
        let id = unique(tag);
        let bundle = runc_bundle(&id, args);
        RuncContainer { id, bundle }
    }

    fn bundle(&self) -> &str {
        self.bundle.to_str().unwrap()
    }
}

impl Drop for RuncContainer {
    fn drop(&mut self) {
        let _ = Command::new("runc").args(["delete", "-f", &self.id]).stderr(Stdio::null()).status();
        let _ = fs::remove_dir_all(&self.bundle);
    }
}

/// Removes a Docker container by name (`docker rm -f`) when dropped, so a
/// failing test leaves no container behind.
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(DOCKER).args(["rm", "-f", &self.0]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// The init PID of `id`'s `container_start` (waiting for it).
fn start_pid(watch: &mut Watch, id: &str) -> Value {
    watch.wait_for("container_start", id);
    watch.event("container_start", id)["args"]["init_pid"].clone()
}

fn docker_pid(id: &str) -> u32 {
    run(DOCKER, &["inspect", "-f", "{{.State.Pid}}", id]).parse().unwrap()
}

#[test]
fn docker_run_is_seen_before_it_starts_with_bundle_config_and_pid() {
    require_root();
    let mut watch = hook_watch(&[]);
    assert!(watch.logged("runtime binary hooked"), "the log names what was hooked");
    let name = unique("hook-docker");
    let _remove_name = RemoveOnDrop(name.clone());
    let id = run(DOCKER, &["run", "-d", "--name", &name, "--label", "team=blue", IMAGE, "sleep", "60"]);
    watch.wait_for("container_create", &id);
    assert_precreate_before_create(&watch, &id);
    let pre = watch.event("container_precreate", &id).clone();
    assert_eq!(pre["args"]["runtime"], "docker");
    assert_eq!(pre["args"]["container_name"], name.as_str());
    assert_eq!(pre["args"]["container_image"], IMAGE);
    let digest = run(DOCKER, &["inspect", "-f", "{{.Image}}", &id]);
    assert_eq!(pre["args"]["container_image_digest"], digest.as_str(), "no repo digest: the image ID");
    let hook = &pre["hook"];
    assert_eq!(hook["command"], "create");
    assert_eq!(hook["bundle"], format!("{TASKS}/moby/{id}").as_str());
    assert_eq!(hook["pid_file"], format!("{TASKS}/moby/{id}/init.pid").as_str());
    assert_eq!(hook["state_root"], "/var/run/docker/runtime-runc/moby");
    assert_eq!(hook["oci"]["args"], serde_json::json!(["sleep", "60"]));
    assert!(hook["oci"]["namespaces"].as_array().unwrap().contains(&"pid".into()), "{hook}");
    assert_eq!(hook["answered_by_deadline"], false);
    assert!(hook["init_pid"].is_null(), "no process yet at precreate");
    // The create carries the same findings (never held for the PID); the
    // start carries the init PID from the pid file.
    let create = watch.event("container_create", &id).clone();
    let pid = docker_pid(&id);
    assert_eq!(create["hook"]["bundle"], hook["bundle"]);
    assert_eq!(start_pid(&mut watch, &id), pid);
    let start = watch.event("container_start", &id).clone();
    assert_eq!((start["args"]["exe"].as_str(), start["args"]["argv0"].as_str()), (Some("/bin/busybox"), Some("sleep")));
    assert_eq!(start["args"]["container_name"], name.as_str());
    run(DOCKER, &["rm", "-f", &name]);
    watch.wait_for("container_remove", &id);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    watch.drain_for(Duration::from_millis(300));
    let kinds: Vec<&str> = watch.about(&id).iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["container_precreate", "container_create", "container_start", "container_remove"],
        "one of each"
    );
}

/// The precreate read the container's config (`sleep 60`), came out ahead of
/// its create, and knew of no process yet.
fn assert_seen_before_start(watch: &Watch, precreate: &Value, id: &str) {
    assert_eq!(precreate["hook"]["oci"]["args"], serde_json::json!(["sleep", "60"]), "{precreate}");
    assert!(precreate["hook"]["init_pid"].is_null(), "no process at precreate: {precreate}");
    let kinds: Vec<&str> = watch.about(id).iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"container_precreate"), "{kinds:?}");
}

#[test]
fn the_hook_alone_follows_docker_podman_ctr_and_runc() {
    require_root();
    let mut watch = Watch::start_with("hook", &["--no-existing"]);
    assert!(watch.logged("source: the runtime hook alone"));

    // Docker: the remove comes from the init's pidfd.
    let name = unique("hook-only-docker");
    let id = run(DOCKER, &["run", "-d", "--name", &name, IMAGE, "sleep", "60"]);
    watch.wait_for("container_create", &id);
    assert_eq!(start_pid(&mut watch, &id), docker_pid(&id));
    run(DOCKER, &["rm", "-f", &name]);
    watch.wait_for("container_remove", &id);

    // Podman: conmon is seen first (daemonized, so not followed); the runc it runs gives the PID.
    let pname = unique("hook-only-podman");
    let podman = |args: &[&str]| {
        let mut all = vec!["--runtime", "runc", "--cgroup-manager", "cgroupfs"];
        all.extend_from_slice(args);
        run("podman", &all)
    };
    let pid_of_podman = |id: &str| -> u32 { podman(&["inspect", "-f", "{{.State.Pid}}", id]).parse().unwrap() };
    let pod_id = podman(&["run", "-d", "--name", &pname, IMAGE, "sleep", "60"]);
    watch.wait_for("container_create", &pod_id);
    let pre = watch.event("container_precreate", &pod_id).clone();
    assert_eq!(pre["args"]["runtime"], "podman");
    assert_eq!(pre["args"]["container_name"], pname.as_str());
    assert_eq!(pre["args"]["container_image"], "localhost/local/busybox:1");
    assert!(pre["hook"]["bundle"].as_str().unwrap().ends_with(&format!("{pod_id}/userdata")), "{pre}");
    assert_seen_before_start(&watch, &pre, &pod_id);
    assert_eq!(start_pid(&mut watch, &pod_id), pid_of_podman(&pod_id));
    podman(&["rm", "-f", "-t", "0", &pname]);
    watch.wait_for("container_remove", &pod_id);

    // ctr: image from containerd's API.
    let cid = unique("hook-only-ctr");
    run("ctr", &["-n", "default", "run", "-d", "docker.io/local/busybox:1", &cid, "sleep", "60"]);
    watch.wait_for("container_create", &cid);
    let pre = watch.event("container_precreate", &cid).clone();
    assert_eq!(pre["args"]["runtime"], "containerd");
    assert_eq!(pre["args"]["container_image"], "docker.io/local/busybox:1");
    assert_eq!(pre["hook"]["bundle"], format!("{TASKS}/default/{cid}").as_str());
    assert_seen_before_start(&watch, &pre, &cid);
    let task_pid: u32 = run("ctr", &["-n", "default", "task", "ls"])
        .lines()
        .find(|l| l.starts_with(&cid))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(start_pid(&mut watch, &cid), task_pid);
    let _ = output("ctr", &["-n", "default", "task", "kill", "-s", "KILL", &cid]);
    watch.wait_for("container_remove", &cid);
    for _ in 0..50 {
        if output("ctr", &["-n", "default", "task", "rm", &cid]).status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    run("ctr", &["-n", "default", "container", "rm", &cid]);

    // Bare runc run -d: no pid file, the PID comes from runc's state.json.
    let container = RuncContainer::new("hook-only-runc", &["sleep", "60"]);
    let rid = container.id.as_str();
    run_detached("runc", &["run", "-d", "--bundle", container.bundle(), rid]);
    watch.wait_for("container_create", rid);
    let pre = watch.event("container_precreate", rid).clone();
    assert_eq!((pre["args"]["runtime"].as_str(), pre["hook"]["command"].as_str()), (Some("runc"), Some("run")));
    assert_eq!(pre["hook"]["bundle"], container.bundle());
    assert_seen_before_start(&watch, &pre, rid);
    let state: Value = serde_json::from_str(&run("runc", &["state", rid])).unwrap();
    assert_eq!(start_pid(&mut watch, rid), state["pid"]);
    run("runc", &["delete", "-f", rid]);
    watch.wait_for("container_remove", rid);
}

#[test]
fn runc_create_then_start_is_seen_before_the_init_exists() {
    require_root();
    let mut watch = hook_watch(&[]);
    let container = RuncContainer::new("hook-runc-cs", &["sleep", "60"]);
    let id = container.id.as_str();
    // A relative bundle: resolved against the runtime's working directory.
    let status = Command::new("runc")
        .current_dir(&container.bundle)
        .args(["create", "--bundle", ".", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    watch.wait_for("container_create", id);
    assert_precreate_before_create(&watch, id);
    let pre = watch.event("container_precreate", id).clone();
    assert_eq!(pre["hook"]["bundle"], container.bundle(), "relative bundle resolved: {pre}");
    assert_eq!(pre["hook"]["oci"]["args"], serde_json::json!(["sleep", "60"]));
    let state: Value = serde_json::from_str(&run("runc", &["state", id])).unwrap();
    assert_eq!(state["status"], "created");
    let init = state["pid"].as_u64().unwrap();
    // Created, not started: the init is still runc's, not the container's program.
    let cmdline = fs::read(format!("/proc/{init}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("sleep"), "not started yet");
    // No container_start while runc's init waits (2 s), one at `runc start`.
    std::thread::sleep(Duration::from_secs(2));
    watch.drain_for(Duration::from_millis(100));
    assert!(!has_event(&watch.seen, "container_start", id), "no start before runc start: {:?}", watch.about(id));
    let started = std::time::SystemTime::now();
    run("runc", &["start", id]);
    assert_eq!(start_pid(&mut watch, id), init, "runc state's init PID");
    let start = watch.event("container_start", id).clone();
    assert!(time_ns(&start) >= started.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64, "{start}");
    assert_eq!(start["args"]["argv0"], "sleep");
    run("runc", &["delete", "-f", id]);
    watch.wait_for("container_remove", id);
}

/// The process's open fds, as their link targets (sockets and pipes by inode).
fn open_fds(pid: u32) -> Vec<String> {
    let mut fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|entry| fs::read_link(entry.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .collect();
    fds.sort();
    fds
}

/// The open fds once every pidfd of a finished container is closed (the
/// lifecycle thread closes them when it sees the process end).
fn settled_fds(pid: u32) -> Vec<String> {
    let start = Instant::now();
    loop {
        let fds = open_fds(pid);
        if !fds.iter().any(|t| t.contains("pidfd")) || start.elapsed() > Duration::from_secs(5) {
            return fds;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fanotify_groups(fds: &[String]) -> usize {
    fds.iter().filter(|t| t.contains("fanotify")).count()
}

#[test]
fn two_hundred_failing_creates_leave_nothing_behind() {
    require_root();
    let mut watch = hook_watch(&[]);
    // A first good container warms up what is made once (threads, runtimes).
    let good = |tag: &str, watch: &mut Watch| {
        let container = RuncContainer::new(tag, &["sleep", "60"]);
        let id = container.id.clone();
        run_detached("runc", &["run", "-d", "--bundle", container.bundle(), &id]);
        watch.wait_for("container_create", &id);
        drop(container);
        watch.wait_for("container_remove", &id);
        id
    };
    good("hook-warm", &mut watch);
    watch.drain_for(Duration::from_millis(300));
    let before = settled_fds(watch.pid());
    assert_eq!(fanotify_groups(&before), 1, "one fanotify group");
    // A bundle whose bind mount source does not exist: runc create fails.
    let bad = unique("hook-bad");
    let bundle = runc_bundle(&bad, &["true"]);
    let config = bundle.join("config.json");
    let mut spec: Value = serde_json::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    spec["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": "/data", "type": "bind", "source": "/nonexistent/ctwatch-test", "options": ["rbind"]
    }));
    fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
    let ids: Vec<String> = (0..200).map(|i| format!("{bad}-{i}")).collect();
    for id in &ids {
        let out = output("runc", &["run", "-d", "--bundle", bundle.to_str().unwrap(), id]);
        assert!(!out.status.success(), "the bad mount fails");
        let _ = output("runc", &["delete", "-f", id]);
    }
    let last = good("hook-after", &mut watch);
    watch.wait_until(Duration::from_secs(30), "200 precreates", |seen| {
        ids.iter().all(|id| has_event(seen, "container_precreate", id))
    });
    watch.drain_for(Duration::from_millis(500));
    // runc makes the cgroup before the mount fails: the kernel source may see
    // it come and go, but no failed container is left behind.
    for id in &ids {
        let made = has_event(&watch.seen, "container_create", id);
        assert!(!made || has_event(&watch.seen, "container_remove", id), "{id} removed after its create failed");
        assert!(watch.seen.iter().all(|e| e["args"]["container_id"] != id.as_str() || e["hook"]["init_pid"].is_null()));
        assert!(!has_event(&watch.seen, "container_start", id), "no start for a failed create");
    }
    assert!(has_event(&watch.seen, "container_precreate", &last));
    assert!(!start_pid(&mut watch, &last).is_null());
    let after = settled_fds(watch.pid());
    assert_eq!(fanotify_groups(&after), 1, "still one fanotify group");
    // Runtime API clients open and close sockets on their own schedule (a
    // containerd lookup for another test's `ctr run`, an enrichment call), so
    // sockets may differ by one or two; a leak per failed create would be 200.
    // The OOM counters of live containers (a v1 eventfd and `memory.oom_control`
    // each) follow whatever other containers the host runs meanwhile.
    let per_container = |t: &String| t.ends_with("memory.oom_control") || t == "anon_inode:[eventfd]";
    let not_sockets = |fds: &[String]| {
        fds.iter().filter(|t| !t.starts_with("socket:") && !per_container(t)).cloned().collect::<Vec<_>>()
    };
    assert_eq!(not_sockets(&after), not_sockets(&before), "fds other than sockets back to the baseline");
    let (after_n, before_n) =
        (after.iter().filter(|t| !per_container(t)).count(), before.iter().filter(|t| !per_container(t)).count());
    assert!(after_n <= before_n + 3, "fds back to the baseline: before {before:?}, after {after:?}");
    assert!(!after.iter().any(|t| t.contains("pidfd")), "no pidfd left: {after:?}");
    let _ = fs::remove_dir_all(bundle);
}

fn write_policy(dir: &Path, mode: &str, image: &str) -> PathBuf {
    let path = dir.join(format!("policy-{mode}.toml"));
    fs::write(
        &path,
        format!(
            "mode = \"{mode}\"\n[[deny]]\nname = \"no-test-denied\"\nreason = \"this image is not allowed here\"\n\
             image = [\"{image}\"]\nruntime = [\"docker\"]\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn enforce_refuses_a_denied_image_and_audit_reports_it() {
    require_root();
    let denied_image = "local/ctwatch-denied:1";
    run(DOCKER, &["tag", IMAGE, denied_image]);
    let dir = tempfile::tempdir().unwrap();

    // Enforce: the create is refused, its process never appears.
    let policy = write_policy(dir.path(), "enforce", "local/ctwatch-denied:*");
    let mut watch = hook_watch(&["--policy", policy.to_str().unwrap()]);
    let name = unique("hook-denied");
    let _remove_name = RemoveOnDrop(name.clone());
    let out = output(DOCKER, &["run", "-d", "--name", &name, denied_image, "sleep", "60"]);
    assert!(!out.status.success(), "docker run of a denied image fails");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    // FAN_DENY fails the runtime's execve with EPERM.
    assert!(stderr.contains("operation not permitted"), "the runtime says why it failed: {stderr}");
    let id = run(DOCKER, &["ps", "-a", "-q", "--no-trunc", "--filter", &format!("name={name}")]);
    watch.wait_for("container_policy_violation", &id);
    let violation = watch.event("container_policy_violation", &id).clone();
    assert_eq!(violation["hook"]["verdict"]["denied"], true);
    assert_eq!(violation["hook"]["verdict"]["mode"], "enforce");
    assert_eq!(violation["hook"]["verdict"]["rule"], "no-test-denied");
    assert_eq!(violation["hook"]["verdict"]["reason"], "this image is not allowed here");
    assert_eq!(violation["args"]["container_image"], denied_image);
    assert_eq!(docker_pid(&id), 0, "never ran");
    // An allowed image runs.
    let ok_name = unique("hook-allowed");
    let _remove_ok_name = RemoveOnDrop(ok_name.clone());
    let ok_id = run(DOCKER, &["run", "-d", "--name", &ok_name, IMAGE, "sleep", "60"]);
    watch.wait_for("container_create", &ok_id);
    watch.drain_for(Duration::from_millis(500));
    assert!(!has_event(&watch.seen, "container_create", &id), "no create for the refused container");
    assert!(!has_event(&watch.seen, "container_policy_violation", &ok_id));
    assert!(docker_pid(&ok_id) > 0);
    run(DOCKER, &["rm", "-f", &name, &ok_name]);
    drop(watch);

    // Audit: the same image runs, and the violation is reported.
    let policy = write_policy(dir.path(), "audit", "local/ctwatch-denied:*");
    let mut watch = hook_watch(&["--policy", policy.to_str().unwrap()]);
    let name = unique("hook-audited");
    let _remove_name = RemoveOnDrop(name.clone());
    let id = run(DOCKER, &["run", "-d", "--name", &name, denied_image, "sleep", "60"]);
    watch.wait_for("container_create", &id);
    let violation = watch.event("container_policy_violation", &id).clone();
    assert_eq!(
        (violation["hook"]["verdict"]["denied"].as_bool(), violation["hook"]["verdict"]["mode"].as_str()),
        (Some(false), Some("audit"))
    );
    assert!(docker_pid(&id) > 0, "audit lets it run");
    run(DOCKER, &["rm", "-f", &name]);
}

#[test]
fn a_bad_policy_or_missing_binary_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    fs::write(&policy, "mode = \"enforce\"\n[[deny]]\nimagee = [\"x\"]\n").unwrap();
    let out = output(ctwatch_bin().to_str().unwrap(), &["watch", "--standalone", "--policy", policy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field `imagee`") && stderr.contains("p.toml"), "{stderr}");
    let out = output(
        ctwatch_bin().to_str().unwrap(),
        &["watch", "--standalone", "--source", "hook", "--runtime-path", "/nonexistent/runc", "--only-runtime-paths"],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no runtime binary to hook") && stderr.contains("--runtime-path"), "{stderr}");
    let out = output(ctwatch_bin().to_str().unwrap(), &["watch", "--standalone", "--hook-deadline", "5ms"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("between 10ms and 60s"));
}

#[test]
fn sigkill_while_a_runtime_waits_releases_it() {
    require_root();
    // A private copy of runc, so holding it stops no other test's containers.
    let dir = tempfile::tempdir().unwrap();
    let runc = dir.path().join("runc");
    fs::copy("/usr/sbin/runc", &runc).unwrap();
    let runc_path = runc.to_str().unwrap().to_string();
    let watch = hook_watch(&["--runtime-path", &runc_path, "--only-runtime-paths"]);
    let ctwatch = nix::unistd::Pid::from_raw(watch.pid() as i32);
    // Stopped, ctwatch cannot answer (neither can its deadline): the kernel holds the exec.
    nix::sys::signal::kill(ctwatch, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let container = RuncContainer::new("hook-sigkill", &["sleep", "60"]);
    let started = Instant::now();
    // Through a shell: `Command::spawn` itself waits for the exec it makes,
    // and that exec is the one the kernel now holds.
    let mut child = Command::new("sh")
        .args(["-c", "exec \"$0\" \"$@\"", &runc_path, "run", "-d", "--bundle", container.bundle(), &container.id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "the exec waits for the permission answer");
    let syscall = fs::read_to_string(format!("/proc/{}/syscall", child.id())).unwrap();
    assert!(syscall.starts_with("59 ") || syscall.starts_with("322 "), "held inside execve: {syscall}");
    // SIGKILL: the group's fd closes and the kernel allows what was pending.
    nix::sys::signal::kill(ctwatch, nix::sys::signal::Signal::SIGKILL).unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "runc still waits after ctwatch died");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the create went on");
    drop(watch);
}

#[test]
fn the_agent_exports_the_hooks_metrics() {
    require_root();
    let metrics_addr = format!("127.0.0.1:{}", serve::free_port());
    let _serve = serve::Serve::start(&["--no-enrich", "--hook", "on", "--metrics-addr", &metrics_addr]);
    let container = RuncContainer::new("hook-metrics", &["sleep", "60"]);
    run_detached("runc", &["run", "-d", "--bundle", container.bundle(), &container.id]);
    let start = Instant::now();
    let text = loop {
        let text = serve::scrape(&metrics_addr);
        let creates = serve::metric(&text, "ctwatch_events_total{kind=\"container_precreate\"}").unwrap_or(0.0);
        if creates >= 1.0 || start.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(serve::metric(&text, "ctwatch_hook_execs_total").unwrap() >= 1.0, "{text}");
    assert!(serve::metric(&text, "ctwatch_hook_answer_duration_seconds_count").unwrap() >= 1.0, "{text}");
    // Present (their values depend on what else runs runc meanwhile).
    assert!(serve::metric(&text, "ctwatch_hook_deadline_answers_total").is_some(), "{text}");
    assert!(serve::metric(&text, "ctwatch_hook_denied_total").is_some());
}

#[test]
fn without_cap_sys_admin_the_hook_says_so_and_ctwatch_keeps_working() {
    require_root();
    // Real missing privilege: CAP_SYS_ADMIN dropped from the bounding and inheritable sets.
    let drop_sys_admin = ["--inh-caps=-sys_admin", "--bounding-set=-sys_admin"];
    let bin = ctwatch_bin();
    let mut child = Command::new("setpriv")
        .args(drop_sys_admin)
        .arg(&bin)
        .args(["watch", "--standalone", "--no-pin", "--no-existing"])
        .env("CTWATCH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = Vec::new();
    for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
        let done = line.contains("scan at start complete");
        log.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let warning = log.iter().find(|l| l.contains("runtime hook off")).unwrap_or_else(|| panic!("{log:#?}"));
    assert!(warning.contains("CAP_SYS_ADMIN"), "says what is missing: {warning}");
    assert!(log.iter().any(|l| l.contains("scan at start complete")), "and keeps working: {log:#?}");

    // Asked for explicitly, the hook's absence is an error with the same reason.
    let out = Command::new("setpriv")
        .args(drop_sys_admin)
        .arg(&bin)
        .args(["watch", "--standalone", "--no-pin", "--hook", "on"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CAP_SYS_ADMIN"));
}

/// The first line of `ctwatch watch --socket` about `id` (Watch's current state).
fn first_watched(socket: &Path, id: &str) -> Value {
    let mut child = Command::new(ctwatch_bin())
        .args(["watch", "--format", "json", "--socket"])
        .arg(socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut found = None;
    for line in lines.map_while(Result::ok) {
        let event: Value = serde_json::from_str(&line).unwrap();
        if event["args"]["container_id"] == id {
            found = Some(event);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    found.unwrap_or_else(|| panic!("watch never printed {id}"))
}

#[test]
fn get_ls_list_and_watchs_current_state_show_the_hooks_findings() {
    require_root();
    let serve = serve::Serve::start(&["--no-enrich", "--hook", "on"]);
    let socket = serve.socket.to_str().unwrap().to_string();
    let container = RuncContainer::new("hook-in-store", &["sleep", "60"]);
    run_detached("runc", &["run", "-d", "--bundle", container.bundle(), &container.id]);
    let pid: u32 = {
        let state = run("runc", &["state", &container.id]);
        serde_json::from_str::<Value>(&state).unwrap()["pid"].as_u64().unwrap() as u32
    };
    let get = || -> Value {
        let out = output(ctwatch_bin().to_str().unwrap(), &["get", "--socket", &socket, &container.id]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let start = Instant::now();
    let mut got = get();
    // The start (exe, argv0, started_at) comes after the hook's findings: wait for both, so ls and get agree.
    while (got["hook"]["init_pid"] != pid || got["started_at"].is_null()) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        got = get();
    }
    // get (the API's Get): the hook's findings are part of the container.
    assert_eq!(got["hook"]["init_pid"], pid, "{got:#}");
    assert_eq!(got["hook"]["bundle"], container.bundle(), "{got:#}");
    assert_eq!(got["hook"]["oci"]["args"], serde_json::json!(["sleep", "60"]), "{got:#}");
    assert_eq!(got["hook"]["trusted"], true, "{got:#}");
    // ls --format json (the API's List): the same record.
    let listed = run(ctwatch_bin().to_str().unwrap(), &["ls", "--socket", &socket, "--format", "json"]);
    let line = listed.lines().find(|l| l.contains(&container.id)).unwrap_or_else(|| panic!("{listed}"));
    let record: Value = serde_json::from_str(line).unwrap();
    assert_eq!(record, got, "ls and get print the same record");
    // Watch's current state: a new client learns the findings too.
    let current = first_watched(&serve.socket, &container.id);
    assert_eq!(current["hook"]["init_pid"], pid, "{current}");
    assert_eq!(current["hook"]["bundle"], container.bundle(), "{current}");
}
