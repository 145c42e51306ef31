//! End-to-end churn: N container cgroups created and removed as fast as one
//! thread can, with `ctwatch watch` running. Reports the raw mkdir/rmdir rate
//! (the kernel's own, measured first in the same run), events/s, lost events,
//! ctwatch's CPU time per 10k events and the mkdir→event latency.
//!
//! Run as root: `cargo bench -p ctwatch-cli --bench churn`.
//! Environment: `CHURN_N` (default 20000), `CHURN_SOURCES` (default: every
//! source this build has, comma-separated).

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
        .unwrap_or_else(|_| "ebpf,inotify".to_string())
        .split(',')
        .map(str::to_string)
        .collect();
    let hierarchy = default_hierarchy();
    println!("churn bench: {n} container cgroups (mkdir + rmdir each) in {}", hierarchy.display());

    let parent = hierarchy.join(format!("ctwatch-churn-{}", std::process::id()));
    fs::create_dir_all(parent.join("docker")).unwrap();
    let ids: Vec<String> = (0..n).map(|i| format!("{:064x}", 0x00c0_ffee_0000_0000_u64 + i as u64)).collect();

    println!(
        "{:<10} {:>12} {:>9} {:>12} {:>8} {:>14} {:>10} {:>10}",
        "source", "ops/s", "% of raw", "events/s", "lost", "cpu ms/10k ev", "p50 µs", "p99 µs"
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
    for (source, r) in runs {
        let ops = rate(n, r.churn);
        println!(
            "{:<10} {:>12.0} {:>8.0}% {:>12.0} {:>8} {:>14.1} {:>10.0} {:>10.0}",
            source,
            ops,
            100.0 * ops / raw,
            r.events as f64 / r.until_last_event.as_secs_f64(),
            2 * n - r.events,
            r.cpu.as_secs_f64() * 1000.0 / (r.events.max(1) as f64 / 10_000.0),
            percentile(&r.latencies_us, 50.0),
            percentile(&r.latencies_us, 99.0),
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

fn with_watcher(parent: &Path, ids: &[String], source: &str) -> Run {
    let root = parent.display().to_string();
    // The kernel source alone: enrichment has its own bench (enrich_latency),
    // and the synthetic IDs here belong to no runtime.
    let args = ["watch", "--no-pin", "--no-enrich", "--source", source, "--cgroup-root", &root];
    let mut child = Command::new(env!("CARGO_BIN_EXE_ctwatch"))
        .args(args)
        .env("CTWATCH_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ctwatch");
    let pid = child.id();
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
    let cpu_before = process_cpu(pid);

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
    let cpu = process_cpu(pid).saturating_sub(cpu_before);
    let _ = child.kill();
    let _ = child.wait();
    Run { churn: churn_time, until_last_event: last - start, events, cpu, latencies_us }
}

/// User + system CPU time of a process (all threads), from /proc/<pid>/stat.
fn process_cpu(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = after_comm.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // Fields after the comm: state is not numeric, so utime/stime are at 11/12 here.
    let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
}

fn default_hierarchy() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let find = |pred: &dyn Fn(&[&str]) -> bool| {
        mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 3 && pred(f))
            .map(|f| PathBuf::from(f[1]))
    };
    find(&|f| f[2] == "cgroup" && f[3].split(',').any(|o| o == "cpuset"))
        .or_else(|| find(&|f| f[2] == "cgroup2"))
        .expect("a cgroup hierarchy")
}
