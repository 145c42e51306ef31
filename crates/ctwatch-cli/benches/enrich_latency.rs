//! Enrichment latency, per runtime, from the kernel's cgroup mkdir to the
//! enriched `container_create` leaving ctwatch, next to Docker's own `start`
//! event for the same containers (same run); for Docker with three ctwatch
//! instances watching the same containers at once: the default flags (hook
//! auto), `--hook off`, and `--hook off --no-enrich` (issue 14's table: the
//! default must be ≥ 5× ahead of Docker's `start` at p50). Then 100 docker
//! containers started at once: all enriched, none missed, time to the last one.
//!
//! Run as root with the daemons up (scripts/setup-host.sh):
//! `cargo bench -p ctwatch-cli --bench enrich_latency` (`ENRICH_N`, default 20).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const DOCKER: &str = "/usr/bin/docker";
const IMAGE: &str = "local/busybox:1";

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(nix::unistd::geteuid().is_root(), "run as root, with the daemons up");
    let n: usize = std::env::var("ENRICH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    // The default flags pin the map of container cgroups (and so load the eBPF
    // process events): here under a private path, removed at the end.
    let pin_dir = format!("/sys/fs/bpf/ctwatch-bench-{}", std::process::id());
    let ctwatch = Watcher::start(&["--pin-path", &pin_dir]);
    let hook_off = Watcher::start(&["--hook", "off"]);
    let no_enrich = Watcher::start(&["--hook", "off", "--no-enrich"]);

    // Docker's own event stream, for the same containers.
    let mut events = Command::new(DOCKER)
        .args(["events", "--format", "{{json .}}", "--filter", "type=container", "--filter", "event=start"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker events");
    let (dtx, drx) = mpsc::channel::<(String, u64)>();
    let stdout = events.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            let id = v["id"].as_str().or(v["Actor"]["ID"].as_str()).unwrap_or("").to_string();
            let _ = dtx.send((id, v["timeNano"].as_u64().unwrap_or(0)));
        }
    });
    thread::sleep(Duration::from_millis(500));

    println!("enrichment latency, kernel mkdir → enriched container_create out of ctwatch ({n} containers each, one at a time)");
    println!("{:<28} {:>10} {:>10} {:>9}", "", "p50 ms", "p99 ms", "enriched");
    let docker_ids: Vec<String> = (0..n)
        .map(|i| {
            run(DOCKER, &["run", "-d", "--name", &format!("bench-d{i}-{}", std::process::id()), IMAGE, "sleep", "30"])
        })
        .collect();
    let docker = ctwatch.latencies(&docker_ids);
    let mut docker_start = HashMap::new();
    while docker_start.len() < docker_ids.len() {
        let Ok((id, t)) = drx.recv_timeout(Duration::from_secs(10)) else {
            break;
        };
        docker_start.insert(id, t);
    }
    let docker_own: Vec<f64> = docker_ids
        .iter()
        .filter_map(|id| Some((docker_start.get(id)? / 1000) as f64 / 1000.0 - ctwatch.kernel_ms(id)?))
        .collect();
    report("docker: ctwatch (default)", &docker);
    report("docker: --hook off", &hook_off.latencies(&docker_ids));
    report("docker: --hook off --no-enrich", &no_enrich.latencies(&docker_ids));
    report("docker: docker events start", &(docker_own.clone(), docker_own.len()));
    let p50 = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "default flags: p50 {:.1} ms, {:.1}x ahead of docker's start (goal: ≤ 25 ms, ≥ 5x)",
        p50(&docker.0),
        p50(&docker_own) / p50(&docker.0)
    );
    drop(hook_off);
    drop(no_enrich);
    let podman_ids: Vec<String> = (0..n)
        .map(|i| {
            run(
                "podman",
                &[
                    "--runtime",
                    "runc",
                    "--cgroup-manager",
                    "cgroupfs",
                    "run",
                    "-d",
                    "--name",
                    &format!("bench-p{i}-{}", std::process::id()),
                    IMAGE,
                    "sleep",
                    "30",
                ],
            )
        })
        .collect();
    report("podman: ctwatch", &ctwatch.latencies(&podman_ids));
    let ctr_ids: Vec<String> = (0..n).map(|i| format!("bench-c{i}-{}", std::process::id())).collect();
    for id in &ctr_ids {
        run("ctr", &["run", "-d", "docker.io/local/busybox:1", id, "sleep", "30"]);
    }
    report("containerd (ctr): ctwatch", &ctwatch.latencies(&ctr_ids));

    // 100 at once.
    let names: Vec<String> = (0..100).map(|i| format!("bench-burst{i}-{}", std::process::id())).collect();
    let started = Instant::now();
    let handles: Vec<_> = names
        .iter()
        .cloned()
        .map(|name| thread::spawn(move || run(DOCKER, &["run", "-d", "--name", &name, IMAGE, "sleep", "30"])))
        .collect();
    let burst: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let launched = started.elapsed();
    let (_, enriched) = ctwatch.latencies(&burst);
    println!("100 docker containers started at once: {enriched}/100 enriched; all launched after {launched:?}, last enriched event {:?} after the first launch", ctwatch.last_seen().duration_since(started));

    // Clean up.
    let all: Vec<&str> = docker_ids.iter().chain(&burst).map(String::as_str).collect();
    run(DOCKER, &[&["rm", "-f"][..], &all].concat());
    for id in &podman_ids {
        run("podman", &["rm", "-f", "-t", "0", id]);
    }
    for id in &ctr_ids {
        let _ = Command::new("ctr").args(["task", "kill", "-s", "KILL", id]).status();
    }
    thread::sleep(Duration::from_millis(500));
    for id in &ctr_ids {
        let _ = Command::new("ctr").args(["task", "rm", id]).stdout(Stdio::null()).status();
        let _ = Command::new("ctr").args(["container", "rm", id]).status();
    }
    let _ = events.kill();
    let _ = events.wait();
    drop(ctwatch);
    let _ = std::fs::remove_file(format!("{pin_dir}/ctwatch_containers"));
    let _ = std::fs::remove_dir(&pin_dir);
}

/// One create seen: when the kernel made the cgroup (ms), when the event came
/// out (ms), whether it was enriched, and when it was read.
#[derive(Clone, Copy)]
struct Seen {
    kernel_ms: f64,
    out_ms: f64,
    enriched: bool,
    at: Instant,
}

/// A running `ctwatch watch` whose enriched creates are recorded.
struct Watcher {
    child: std::process::Child,
    seen: std::sync::Arc<std::sync::Mutex<HashMap<String, Seen>>>,
}

impl Watcher {
    /// `ctwatch watch` with its default flags plus `extra` (`--no-pin` unless `extra` names a `--pin-path`).
    fn start(extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ctwatch"))
            .args(["watch", "--standalone", "--no-existing"])
            .args(if extra.contains(&"--pin-path") { &[][..] } else { &["--no-pin"][..] })
            .args(extra)
            .env("CTWATCH_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("ctwatch");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
        let out = child.stdout.take().unwrap();
        let writer = seen.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0;
                let v: Value = serde_json::from_str(&line).unwrap_or_default();
                if v["event"] != "container_create" {
                    continue;
                }
                let kernel_ms = v["args"]["ctime"].as_u64().unwrap_or(0) as f64 / 1e6;
                let id = v["args"]["container_id"].as_str().unwrap_or("").to_string();
                writer.lock().unwrap().insert(
                    id,
                    Seen { kernel_ms, out_ms: now_ms, enriched: v["enriched"] == true, at: Instant::now() },
                );
            }
        });
        thread::sleep(Duration::from_secs(1));
        Watcher { child, seen }
    }

    /// Latencies (ms) for `ids`, waiting for their creates; and how many were enriched.
    fn latencies(&self, ids: &[String]) -> (Vec<f64>, usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && ids.iter().any(|id| !self.seen.lock().unwrap().contains_key(id)) {
            thread::sleep(Duration::from_millis(20));
        }
        let seen = self.seen.lock().unwrap();
        let found: Vec<_> = ids.iter().filter_map(|id| seen.get(id)).collect();
        (found.iter().map(|s| s.out_ms - s.kernel_ms).collect(), found.iter().filter(|s| s.enriched).count())
    }

    fn kernel_ms(&self, id: &str) -> Option<f64> {
        self.seen.lock().unwrap().get(id).map(|s| s.kernel_ms)
    }

    fn last_seen(&self) -> Instant {
        self.seen.lock().unwrap().values().map(|s| s.at).max().unwrap_or_else(Instant::now)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn report(label: &str, (values, enriched): &(Vec<f64>, usize)) {
    let mut v = values.clone();
    v.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if v.is_empty() {
            f64::NAN
        } else {
            v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
        }
    };
    println!("{label:<28} {:>10.1} {:>10.1} {:>9}", pct(50.0), pct(99.0), format!("{enriched}/{}", v.len()));
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).stdin(Stdio::null()).stderr(Stdio::null()).output().expect(cmd);
    assert!(out.status.success(), "{cmd} {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
