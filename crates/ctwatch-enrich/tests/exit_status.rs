//! How containers ended, asked of the real runtimes (Docker, Podman's API
//! service, containerd through `ctr`, containerd's CRI plugin) and checked
//! against each runtime's own answer; OOM kills counted from the real
//! cgroup's counters before it is removed. Needs root and the daemons that
//! `scripts/setup-host.sh` starts, with the local busybox image.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctwatch::Runtime;
use ctwatch_enrich::containerd_api::ContainerdApi;
use ctwatch_enrich::cri_api::CriApi;
use ctwatch_enrich::docker_api::DockerApi;
use ctwatch_enrich::exit::parse_runtime_time;
use ctwatch_enrich::oom::{MemoryCgroup, OomWatcher};
use ctwatch_enrich::{ExitCache, ExitInfo};

const DOCKER: &str = "/var/run/docker.sock";
const PODMAN: &str = "/run/podman/podman.sock";
const CONTAINERD: &str = "/run/containerd/containerd.sock";
/// The v1 memory hierarchy on this kind of host (hybrid cgroups).
const MEMORY_V1: &str = "/sys/fs/cgroup/memory";
/// Grows a shell variable until the memory limit kills the shell (works offline, busybox only).
const EAT_MEMORY: &str = "sleep 1; tail /dev/zero";
const PODMAN_FLAGS: &[&str] = &["--runtime", "runc", "--cgroup-manager", "cgroupfs"];

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("ctwatch-lc-{tag}-{}-{nanos}", std::process::id())
}

/// Runs a command; its stdout, trimmed (whatever its exit status).
fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs a command that must succeed; its stdout, trimmed.
fn ok(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Watches `dir` (a v1 memory cgroup) as soon as it exists; the container
/// sleeps a second before allocating, as the agent watches at the mkdir.
fn watch_when_created(watcher: &OomWatcher, key: &str, dir: &Path) -> u64 {
    wait_for("the memory cgroup", || dir.exists().then_some(()));
    watcher.watch(key, MemoryCgroup::V1(dir.to_path_buf())).expect("memory.oom_control readable")
}

/// The runtime's own times in an inspect template, parsed.
fn inspect_times(cmd: &str, id: &str) -> (Option<std::time::SystemTime>, Option<std::time::SystemTime>) {
    let t = sh(cmd, &["inspect", "-f", "{{.State.StartedAt}}|{{.State.FinishedAt}}", id]);
    let (s, f) = t.split_once('|').unwrap();
    // `docker inspect`'s template prints RFC 3339; Podman's prints Go's time format.
    let parse = |v: &str| parse_runtime_time(v).or_else(|| parse_go_time(v));
    (parse(s), parse(f))
}

/// Go's default time format (`2006-01-02 15:04:05.999999999 -0700 MST`).
fn parse_go_time(v: &str) -> Option<std::time::SystemTime> {
    let mut parts = v.split_whitespace();
    let (date, time, zone) = (parts.next()?, parts.next()?, parts.next()?);
    let zone = format!("{}:{}", &zone[..3], &zone[3..]);
    parse_runtime_time(&format!("{date}T{time}{zone}"))
}

fn assert_times(info: &ExitInfo, runtime_says: (Option<std::time::SystemTime>, Option<std::time::SystemTime>)) {
    assert!(info.started_at.is_some() && info.finished_at.is_some(), "{info:?}");
    // As the runtime says them (Docker may record a start after the finish for a container that
    // exits at once: it sets StartedAt when `start` returns).
    assert_eq!((info.started_at, info.finished_at), runtime_says, "the runtime's own times");
}

fn docker_like_exit_code_signal_and_oom(runtime: Runtime, cmd: &str, extra: &[&str], image: &str, socket: &str) {
    let rt = rt();
    let api = DockerApi::new(runtime, Path::new(socket));
    // `<cmd> run <extra...> <args...>`: its stdout's last line (the ID with -d).
    let run = |args: &[&str]| -> String {
        let mut all = vec!["run"];
        all.extend_from_slice(extra);
        all.extend_from_slice(args);
        sh(cmd, &all).lines().last().unwrap_or("").to_string()
    };

    // exit 3
    let name = unique("exit3");
    run(&["--name", &name, image, "sh", "-c", "exit 3"]);
    let id = ok(cmd, &["inspect", "-f", "{{.Id}}", &name]);
    assert_eq!(sh(cmd, &["inspect", "-f", "{{.State.ExitCode}}", &id]), "3", "the runtime's own answer");
    let info = rt.block_on(api.exit_info(&id)).unwrap().expect("known");
    assert_eq!((info.exit_code, info.exit_signal, info.oom_killed), (Some(3), None, Some(false)), "{info:?}");
    assert_times(&info, inspect_times(cmd, &id));
    sh(cmd, &["rm", "-f", &id]);

    // kill -s KILL: the runtime says 137, i.e. 128 + 9.
    let name = unique("kill");
    let id = run(&["-d", "--name", &name, image, "sleep", "60"]);
    ok(cmd, &["kill", "-s", "KILL", &id]);
    assert_eq!(sh(cmd, &["wait", &id]), "137", "the runtime's own answer");
    let info = rt.block_on(api.exit_info(&id)).unwrap().expect("known");
    assert_eq!((info.exit_code, info.exit_signal, info.oom_killed), (None, Some(9), Some(false)), "{info:?}");
    sh(cmd, &["rm", "-f", &id]);

    // --memory 16m, allocating beyond it.
    let watcher = OomWatcher::start(16).unwrap();
    let name = unique("oom");
    let id = run(&["-d", "--name", &name, "--memory", "16m", "--memory-swap", "16m", image, "sh", "-c", EAT_MEMORY]);
    let parent = if runtime == Runtime::Podman { format!("libpod_parent/libpod-{id}") } else { format!("docker/{id}") };
    let dir = PathBuf::from(MEMORY_V1).join(parent);
    assert_eq!(watch_when_created(&watcher, &id, &dir), 0);
    sh(cmd, &["wait", &id]);
    wait_for("the cgroup removed", || (!dir.exists()).then_some(()));
    let kills = watcher.finish(&id);
    assert!(kills >= Some(1), "oom_kills {kills:?}");
    let info = rt.block_on(api.exit_info(&id)).unwrap().expect("known");
    let runtime_says = sh(cmd, &["inspect", "-f", "{{.State.OOMKilled}}", &id]);
    assert_eq!(info.oom_killed, Some(runtime_says == "true"), "the runtime's own answer");
    if runtime == Runtime::Docker {
        assert_eq!(info.oom_killed, Some(true), "Docker knows");
    }
    assert_eq!(info.exit_signal, Some(9), "{info:?}");
    sh(cmd, &["rm", "-f", &id]);
}

#[test]
fn docker_reports_exit_code_signal_and_oom_kill() {
    docker_like_exit_code_signal_and_oom(Runtime::Docker, "docker", &[], "local/busybox:1", DOCKER);
}

#[test]
fn podman_reports_exit_code_signal_and_oom_kill() {
    docker_like_exit_code_signal_and_oom(Runtime::Podman, "podman", PODMAN_FLAGS, "localhost/local/busybox:1", PODMAN);
}

#[test]
fn docker_rm_containers_are_known_from_the_die_event() {
    let rt = rt();
    let api = Arc::new(DockerApi::new(Runtime::Docker, Path::new(DOCKER)));
    let cache = Arc::new(ExitCache::new(1024));
    let follower = {
        let (api, cache) = (api.clone(), cache.clone());
        rt.spawn(async move { api.follow_exits(&cache).await })
    };
    std::thread::sleep(Duration::from_millis(500));
    let id = ok("docker", &["run", "-d", "--rm", "local/busybox:1", "sh", "-c", "sleep 1; exit 3"]);
    let info = wait_for("the die event", || cache.get(&id).filter(|i| i.exit_code.is_some()));
    assert_eq!((info.exit_code, info.exit_signal), (Some(3), None));
    assert!(info.finished_at.is_some());
    wait_for("the container removed", || (sh("docker", &["inspect", &id]) == "[]").then_some(()));
    assert_eq!(rt.block_on(api.exit_info(&id)).unwrap(), None, "inspect knows nothing after --rm");
    follower.abort();
}

fn ctr(args: &[&str]) -> String {
    let mut all = vec!["-n", "default"];
    all.extend_from_slice(args);
    sh("ctr", &all)
}

fn ctr_cleanup(id: &str) {
    ctr(&["task", "rm", "-f", id]);
    ctr(&["containers", "rm", id]);
}

#[test]
fn containerd_reports_exit_code_signal_and_oom_kill() {
    const IMAGE: &str = "docker.io/local/busybox:1";
    let rt = rt();
    let api = Arc::new(ContainerdApi::new(Path::new(CONTAINERD)));
    let cache = Arc::new(ExitCache::new(1024));
    let follower = {
        let (api, cache) = (api.clone(), cache.clone());
        rt.spawn(async move { api.follow_exits(&cache).await })
    };
    std::thread::sleep(Duration::from_millis(500));

    // exit 3: the stopped task (kept until deleted) and the /tasks/exit event agree.
    let id = unique("ctr-exit3");
    ctr(&["run", "-d", IMAGE, &id, "sh", "-c", "exit 3"]);
    let info = wait_for("the stopped task", || rt.block_on(api.task_exit(&id, "default")).unwrap());
    assert_eq!((info.exit_code, info.exit_signal), (Some(3), None), "{info:?}");
    assert!(ctr(&["task", "ls"]).lines().any(|l| l.starts_with(&id) && l.contains("STOPPED")));
    let event = wait_for("/tasks/exit", || cache.get(&id));
    assert_eq!((event.exit_code, event.finished_at), (info.exit_code, info.finished_at));
    ctr_cleanup(&id);

    // kill -s KILL
    let id = unique("ctr-kill");
    ctr(&["run", "-d", IMAGE, &id, "sleep", "60"]);
    ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    let info = wait_for("the stopped task", || rt.block_on(api.task_exit(&id, "default")).unwrap());
    assert_eq!((info.exit_code, info.exit_signal), (None, Some(9)), "{info:?}");
    ctr_cleanup(&id);

    // --rm: the task is gone, the event said how it ended.
    let id = unique("ctr-rm");
    ctr(&["run", "--rm", IMAGE, &id, "sh", "-c", "exit 5"]);
    let event = wait_for("/tasks/exit", || cache.get(&id));
    assert_eq!(event.exit_code, Some(5));
    assert_eq!(rt.block_on(api.task_exit(&id, "default")).unwrap(), None);

    // 16 MiB, allocating beyond it: /tasks/oom and the cgroup's counter.
    let watcher = OomWatcher::start(16).unwrap();
    let id = unique("ctr-oom");
    ctr(&["run", "-d", "--memory-limit", "16777216", IMAGE, &id, "sh", "-c", EAT_MEMORY]);
    let dir = PathBuf::from(MEMORY_V1).join("default").join(&id);
    assert_eq!(watch_when_created(&watcher, &id, &dir), 0);
    let info = wait_for("the stopped task", || rt.block_on(api.task_exit(&id, "default")).unwrap());
    assert!(watcher.sample(&id) >= Some(1), "counted while the cgroup exists");
    ctr_cleanup(&id);
    wait_for("the cgroup removed", || (!dir.exists()).then_some(()));
    assert!(watcher.finish(&id) >= Some(1), "kept after the cgroup went");
    assert_eq!(info.exit_signal, Some(9), "{info:?}");
    let event = wait_for("/tasks/oom", || cache.get(&id).filter(|i| i.oom_killed.is_some()));
    assert_eq!(event.oom_killed, Some(true));
    follower.abort();
}

#[test]
fn a_v1_memory_cgroup_oom_is_counted_before_the_cgroup_goes() {
    // A bare cgroup (no runtime): a child allocates past 8 MiB; the counter
    // is read on the kernel's notification, then the cgroup is removed.
    let dir = PathBuf::from(MEMORY_V1).join(unique("bare"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("memory.limit_in_bytes"), "8388608").unwrap();
    let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), "8388608");
    let watcher = OomWatcher::start(4).unwrap();
    assert_eq!(watcher.watch("bare", MemoryCgroup::V1(dir.clone())), Some(0));
    let procs = dir.join("cgroup.procs");
    let status = Command::new("sh")
        .args(["-c", &format!("echo $$ > {}; x=a; while :; do x=$x$x; done", procs.display())])
        .status()
        .unwrap();
    assert!(!status.success(), "killed");
    wait_for("the notification", || (watcher.notifications() > 0).then_some(()));
    std::thread::sleep(Duration::from_millis(300)); // the re-reads after the v1 notification
    std::fs::remove_dir(&dir).unwrap();
    assert!(watcher.finish("bare") >= Some(1), "counted before rmdir, by the notification alone");
}

mod cri {
    use super::*;
    use ctwatch_protos::cri::v1::runtime_service_client::RuntimeServiceClient;
    use ctwatch_protos::cri::v1::*;

    /// A pod (host network, cgroup parent under /kubepods) with one container running `command`.
    async fn run_pod(
        client: &mut RuntimeServiceClient<tonic::transport::Channel>,
        tag: &str,
        command: &[&str],
    ) -> (String, String) {
        let name = unique(tag);
        let uid = format!("0000{:04x}-0000-4000-8000-{:012x}", std::process::id() & 0xffff, rand_u48());
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.clone(),
                uid: uid.clone(),
                namespace: "ctwatch-test".into(),
                attempt: 0,
            }),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        ..NamespaceOption::default()
                    }),
                    ..LinuxSandboxSecurityContext::default()
                }),
                ..LinuxPodSandboxConfig::default()
            }),
            ..PodSandboxConfig::default()
        };
        let sandbox_id = client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: "app".into(), attempt: 0 }),
            image: Some(ImageSpec { image: "docker.io/local/busybox:1".into(), ..ImageSpec::default() }),
            command: command.iter().map(|s| s.to_string()).collect(),
            linux: Some(LinuxContainerConfig::default()),
            ..ContainerConfig::default()
        };
        let id = client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox_id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        client.start_container(StartContainerRequest { container_id: id.clone() }).await.expect("StartContainer");
        (sandbox_id, id)
    }

    fn rand_u48() -> u64 {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        (t.as_nanos() as u64) & 0xffff_ffff_ffff
    }

    async fn remove_pod(client: &mut RuntimeServiceClient<tonic::transport::Channel>, sandbox_id: &str) {
        let id = sandbox_id.to_string();
        let _ = client.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await;
        let _ = client.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }).await;
    }

    /// The manifest digest `ctr images ls` shows for `image` in `namespace`.
    fn ctr_images_digest(namespace: &str, image: &str) -> String {
        let listed = ok("ctr", &["-n", namespace, "images", "ls"]);
        let line = listed.lines().find(|l| l.split_whitespace().next() == Some(image)).expect("image listed");
        line.split_whitespace().find(|w| w.starts_with("sha256:")).expect("digest column").to_string()
    }

    #[test]
    fn cri_and_ctr_containers_of_one_image_have_one_digest() {
        let rt = rt();
        let mut client = rt.block_on(async {
            RuntimeServiceClient::new(ctwatch_protos::connect(CONTAINERD).await.expect("CRI socket"))
        });
        let (sandbox, id) = rt.block_on(run_pod(&mut client, "digest", &["sleep", "60"]));
        let cri = CriApi::new(Runtime::Containerd, Path::new(CONTAINERD));
        let containerd = ContainerdApi::new(Path::new(CONTAINERD));
        let from_cri = rt.block_on(cri.lookup(&id)).unwrap().expect("CRI knows it").image_digest;
        let from_containerd_api = rt.block_on(containerd.lookup(&id, Some("k8s.io"))).unwrap().unwrap().image_digest;

        let ctr_id = unique("ctr-digest");
        ctr(&["run", "-d", "docker.io/local/busybox:1", &ctr_id, "sleep", "60"]);
        let from_ctr = rt.block_on(containerd.lookup(&ctr_id, Some("default"))).unwrap().unwrap().image_digest;
        ctr_cleanup(&ctr_id);
        rt.block_on(remove_pod(&mut client, &sandbox));

        let listed = ctr_images_digest("k8s.io", "docker.io/local/busybox:1");
        assert_eq!(from_cri, listed, "CRI reports the manifest digest `ctr -n k8s.io images ls` shows");
        assert_eq!(from_containerd_api, listed, "containerd's API, same store");
        assert_eq!(from_ctr, ctr_images_digest("default", "docker.io/local/busybox:1"), "ctr's container");
        assert_eq!(from_ctr, from_cri, "one image, one digest, on every path");
    }

    #[test]
    fn cri_reports_exit_code_and_times() {
        let rt = rt();
        let mut client = rt.block_on(async {
            RuntimeServiceClient::new(ctwatch_protos::connect(CONTAINERD).await.expect("CRI socket"))
        });
        let (sandbox, id) = rt.block_on(run_pod(&mut client, "exit", &["sh", "-c", "sleep 0.5; exit 3"]));
        let cri = CriApi::new(Runtime::Containerd, Path::new(CONTAINERD));
        let info = wait_for("the exited container", || rt.block_on(cri.exit_info(&id)).unwrap());
        let status = rt
            .block_on(client.container_status(ContainerStatusRequest { container_id: id.clone(), verbose: false }))
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        rt.block_on(remove_pod(&mut client, &sandbox));
        assert_eq!(status.exit_code, 3, "the runtime's own answer");
        assert_eq!((info.exit_code, info.exit_signal, info.oom_killed), (Some(3), None, Some(false)), "{info:?}");
        let nanos = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
        assert_eq!(
            (nanos(info.started_at.unwrap()), nanos(info.finished_at.unwrap())),
            (status.started_at, status.finished_at)
        );
    }
}

#[test]
fn the_engine_answers_how_a_removed_container_ended() {
    // As the agent would: at the container_remove (cgroup gone), ask.
    let (results, _keep) = crossbeam_channel::unbounded();
    let engine = ctwatch_enrich::Enrichment::start(ctwatch_enrich::EnrichConfig::default(), results).unwrap();
    let ask = |id: &str, runtime: Runtime, cgroup_path: &str, in_pod: bool| {
        let (tx, rx) = std::sync::mpsc::channel();
        engine.submit_exit(id, runtime, cgroup_path, in_pod, Duration::from_secs(5), move |info| {
            let _ = tx.send(info);
        });
        rx.recv_timeout(Duration::from_secs(30)).expect("an answer")
    };
    std::thread::sleep(Duration::from_millis(500)); // the event streams are followed from the start

    // Docker --rm: only the die event knows.
    let id = ok("docker", &["run", "-d", "--rm", "local/busybox:1", "sh", "-c", "sleep 1; exit 7"]);
    let dir = PathBuf::from(MEMORY_V1).join("docker").join(&id);
    wait_for("the cgroup", || dir.exists().then_some(()));
    wait_for("the cgroup removed", || (!dir.exists()).then_some(()));
    let info = ask(&id, Runtime::Docker, &format!("/docker/{id}"), false);
    assert_eq!((info.exit_code, info.exit_signal), (Some(7), None), "{info:?}");

    // ctr, killed: containerd's event or its stopped task.
    let id = unique("engine-ctr");
    ctr(&["run", "-d", "docker.io/local/busybox:1", &id, "sleep", "60"]);
    ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_for("the task stopped", || {
        ctr(&["task", "ls"]).lines().any(|l| l.starts_with(&id) && l.contains("STOPPED")).then_some(())
    });
    // containerd removes the cgroup when the task is deleted.
    ctr(&["task", "rm", &id]);
    let dir = PathBuf::from(MEMORY_V1).join("default").join(&id);
    wait_for("the cgroup removed", || (!dir.exists()).then_some(()));
    let info = ask(&id, Runtime::Containerd, &format!("/default/{id}"), false);
    ctr_cleanup(&id);
    assert_eq!((info.exit_code, info.exit_signal), (None, Some(9)), "{info:?}");

    // Unknown to every runtime: nothing invented.
    let info =
        ask("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", Runtime::Docker, "/docker/x", false);
    assert!(info.is_empty(), "{info:?}");
    assert_eq!(engine.exits_evicted(), 0);
}
