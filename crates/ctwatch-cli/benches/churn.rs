//! End-to-end churn: N container cgroups created and removed as fast as one
//! thread can, with `ctwatch watch` running. Reports the raw mkdir/rmdir rate
//! (the kernel's own, measured first in the same run), events/s, lost events,
//! ctwatch's CPU time per 10k events and the mkdir→event latency.
//!
//! Run as root: `cargo bench -p ctwatch-cli --bench churn`.
//! Environment: `CHURN_N` (default 20000), `CHURN_SOURCES` (default
//! `ebpf,inotify,ebpf+serve,ebpf+journal`, comma-separated). A source written
//! `ebpf+serve` or `ebpf+journal` runs `ctwatch serve --no-journal` or
//! `ctwatch serve` with a fresh journal, read by `ctwatch watch --socket`
//! (CPU is the agent's): the journal's cost is `ebpf+journal` against
//! `ebpf+serve` in the same run, plus the journal's bytes on disk per event.
//!
//! `ev % raw` is events/s against the raw mkdir+rmdir rate (each makes one
//! event), the rate the kernel alone reaches.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches` probe this
    }
    assert!(nix::unistd::geteuid().is_root(), "the churn bench makes real cgroups: run it as root");
    let n: usize = std::env::var("CHURN_N").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let sources: Vec<String> = std::env::var("CHURN_SOURCES")
        .unwrap_or_else(|_| "ebpf,inotify,ebpf+serve,ebpf+journal".to_string())
        .split(',')
        .map(str::to_string)
        .collect();
    let hierarchy = common::default_hierarchy();
    println!("churn bench: {n} container cgroups (mkdir + rmdir each) in {}", hierarchy.display());

    let parent = hierarchy.join(format!("ctwatch-churn-{}", std::process::id()));
    fs::create_dir_all(parent.join("docker")).unwrap();
    let ids: Vec<String> = (0..n).map(|i| format!("{:064x}", 0x00c0_ffee_0000_0000_u64 + i as u64)).collect();

    println!(
        "{:<13} {:>10} {:>9} {:>10} {:>9} {:>6} {:>14} {:>8} {:>8} {:>8}",
        "source", "ops/s", "% of raw", "events/s", "ev % raw", "lost", "cpu ms/10k ev", "p50 µs", "p99 µs", "B/event"
    );
    // Each phase leaves n removed cgroups for the kernel's deferred teardown
    // (cgroup_release/cgroup_offline workers), which slows whatever runs next:
    // every phase starts on a settled machine, and the raw rate is measured
    // first and last so that drift shows.
    settle();
    let raw_first = rate(n, churn(&parent, &ids, |_| {}));
    print_raw("raw first", raw_first);
    let mut runs = Vec::new();
    for source in &sources {
        settle();
        runs.push((source, with_watcher(&parent, &ids, source)));
    }
    settle();
    let raw_last = rate(n, churn(&parent, &ids, |_| {}));
    print_raw("raw last", raw_last);
    let raw = (raw_first + raw_last) / 2.0;
    let mut by_source = HashMap::new();
    for (source, r) in &runs {
        let ops = rate(n, r.churn);
        let events_per_s = r.events as f64 / r.until_last_event.as_secs_f64();
        println!(
            "{:<13} {:>10.0} {:>8.0}% {:>10.0} {:>8.0}% {:>6} {:>14.1} {:>8.0} {:>8.0} {:>8}",
            source,
            ops,
            100.0 * ops / raw,
            events_per_s,
            100.0 * events_per_s / raw,
            2 * n - r.events,
            r.cpu.as_secs_f64() * 1000.0 / (r.events.max(1) as f64 / 10_000.0),
            percentile(&r.latencies_us, 50.0),
            percentile(&r.latencies_us, 99.0),
            r.disk_bytes.map_or("-".to_string(), |b| format!("{:.0}", b as f64 / r.events.max(1) as f64)),
        );
        by_source.insert(source.as_str(), (events_per_s, 2 * n - r.events, percentile(&r.latencies_us, 99.0)));
    }
    // The goal: the journal at >= 90% of the no-journal rate, 0 lost,
    // p99 create latency within 2 ms of no-journal.
    if let (Some(off), Some(on)) = (by_source.get("ebpf+serve"), by_source.get("ebpf+journal")) {
        println!(
            "journal vs --no-journal (same run): events/s {:.0}%, lost {} vs {}, p99 {:+.0} µs",
            100.0 * on.0 / off.0,
            on.1,
            off.1,
            on.2 - off.2
        );
    }
    let _ = fs::remove_dir(parent.join("docker"));
    let _ = fs::remove_dir(&parent);
}

/// mkdir + rmdir operations per second.
fn rate(n: usize, took: Duration) -> f64 {
    2.0 * n as f64 / took.as_secs_f64()
}

fn print_raw(label: &str, ops: f64) {
    println!("{label:<10} {ops:>12.0} {:>9} {:>12} {:>8} {:>14} {:>10} {:>10}", "100%", "-", "-", "-", "-", "-");
}

/// Waits (30 s at most) until the 1-minute load is low enough that the
/// kernel's deferred cgroup teardown from the previous phase is done.
fn settle() {
    for _ in 0..60 {
        let busy: f64 = fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0.0);
        let kworkers = cgroup_worker_ticks();
        thread::sleep(Duration::from_millis(500));
        if busy < 1.5 && cgroup_worker_ticks().saturating_sub(kworkers) < 5 {
            return;
        }
    }
}

/// CPU ticks spent so far by the kernel workers that tear cgroups down.
fn cgroup_worker_ticks() -> u64 {
    let Ok(dir) = fs::read_dir("/proc") else { return 0 };
    dir.flatten()
        .filter_map(|e| {
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            let (comm, rest) = stat.split_once(") ")?;
            comm.contains("cgroup").then(|| {
                let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
                f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)
            })
        })
        .sum()
}

struct Run {
    churn: Duration,
    until_last_event: Duration,
    events: usize,
    cpu: Duration,
    latencies_us: Vec<f64>,
    /// The journal's bytes on disk at the end (journal rows only).
    disk_bytes: Option<u64>,
}

/// mkdir + rmdir each container cgroup, one thread; `on_mkdir` sees each index.
fn churn(parent: &Path, ids: &[String], mut on_mkdir: impl FnMut(usize)) -> Duration {
    let start = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let dir = parent.join("docker").join(id);
        on_mkdir(i);
        fs::create_dir(&dir).unwrap();
        fs::remove_dir(&dir).unwrap();
    }
    start.elapsed()
}

/// `ctwatch serve` (with a journal in `dir`, or `--no-journal`) on a socket in `dir`.
fn start_serve(dir: &Path, source: &str, root: &str, journal: bool) -> (std::process::Child, PathBuf) {
    let socket = dir.join("s.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ctwatch"));
    cmd.args(["serve", "--no-pin", "--hook", "off", "--no-enrich", "--source", source, "--cgroup-root", root]);
    // The watch client prints JSON on a loaded machine: let it fall behind by a whole
    // run's events rather than be dropped (a dropped client would count as lost events).
    cmd.args(["--client-buffer", "65536"]);
    cmd.arg("--socket").arg(&socket);
    if journal {
        cmd.arg("--journal").arg(dir.join("journal"));
    } else {
        cmd.arg("--no-journal");
    }
    let child = cmd.env("CTWATCH_LOG", "warn").stderr(Stdio::inherit()).spawn().expect("start ctwatch serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "ctwatch serve did not start");
        thread::sleep(Duration::from_millis(50));
    }
    // The socket is bound before the agent starts: let the API come up.
    while !Command::new(env!("CARGO_BIN_EXE_ctwatch"))
        .args(["health", "--socket"])
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(Instant::now() < deadline, "ctwatch serve did not become ready");
        thread::sleep(Duration::from_millis(100));
    }
    (child, socket)
}

/// Bytes of the files in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

fn with_watcher(parent: &Path, ids: &[String], source: &str) -> Run {
    let root = parent.display().to_string();
    let (source, mode) = source.split_once('+').unwrap_or((source, ""));
    let tmp = std::env::temp_dir().join(format!("ctwatch-churn-{}-{source}-{mode}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).unwrap();
    let mut serve = None;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ctwatch"));
    if mode.is_empty() {
        // The kernel source alone: enrichment has its own bench (enrich_latency),
        // and the synthetic IDs here belong to no runtime.
        cmd.args(["watch", "--no-pin", "--no-enrich", "--source", source, "--cgroup-root", &root]);
    } else {
        let (child, socket) = start_serve(&tmp, source, &root, mode == "journal");
        // Not `--no-existing`: the probe below may be made before this watch
        // subscribes, and then only the current state says it (with
        // `--no-existing` it was never said, and the bench waited for nothing).
        cmd.args(["watch", "--socket"]).arg(socket);
        serve = Some(child);
    }
    let mut child =
        cmd.env("CTWATCH_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start ctwatch");
    let pid = serve.as_ref().map_or(child.id(), |s| s.id());
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<(String, bool, SystemTime)>();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let now = SystemTime::now();
            let create = line.contains("\"container_create\"");
            let id =
                line.split("\"container_id\":\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("").to_string();
            if tx.send((id, create, now)).is_err() {
                break;
            }
        }
    });
    // Let it finish its scan at start: a probe cgroup must come back as an event.
    let probe = parent.join("docker").join(format!("{:064x}", 0xbeefu64));
    fs::create_dir(&probe).unwrap();
    let _ = rx.recv_timeout(Duration::from_secs(10)).expect("ctwatch did not start");
    fs::remove_dir(&probe).unwrap();
    let _ = rx.recv_timeout(Duration::from_secs(10));
    let cpu_before = common::process_cpu(pid);

    let mut mkdir_at = vec![SystemTime::UNIX_EPOCH; ids.len()];
    let start = Instant::now();
    let churn_time = churn(parent, ids, |i| mkdir_at[i] = SystemTime::now());
    let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let mut events = 0;
    let mut last = start;
    let mut latencies_us = Vec::with_capacity(ids.len());
    while events < 2 * ids.len() {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok((id, create, at)) => {
                if let Some(&i) = index.get(id.as_str()) {
                    events += 1;
                    last = Instant::now();
                    if create {
                        latencies_us.push(at.duration_since(mkdir_at[i]).unwrap_or_default().as_secs_f64() * 1e6);
                    }
                }
            }
            Err(_) => break,
        }
    }
    let cpu = common::process_cpu(pid).saturating_sub(cpu_before);
    let _ = child.kill();
    let _ = child.wait();
    if let Some(mut serve) = serve {
        let _ = serve.kill();
        let _ = serve.wait();
    }
    let disk_bytes = (mode == "journal").then(|| dir_bytes(&tmp.join("journal")));
    let _ = fs::remove_dir_all(&tmp);
    Run { churn: churn_time, until_last_event: last - start, events, cpu, latencies_us, disk_bytes }
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
}
