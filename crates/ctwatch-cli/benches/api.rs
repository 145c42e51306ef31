//! The agent's API under load, against baselines measured in the same run:
//!
//! - Get round trip over the unix socket, p50/p99, against containerd's
//!   `Version` (a minimal gRPC round trip on this machine's other daemon).
//! - Memory per tracked container: the agent's RSS grown by
//!   `API_MEM_N` (default 10,000) synthetic container cgroups, each looked up
//!   once (Get, so every cache holds them), divided by their number.
//! - Watch fan-out: N container cgroups made and removed as fast as one
//!   thread can (the churn bench's rate) with 1, 10 and 100 clients watching,
//!   each on its own connection; delivery latency (the event's kernel time, or
//!   the agent's if the source has none → client receipt) p50/p99 and lost
//!   events; the 1-client run is the baseline.
//!
//! - Lookups against the tracker: the churn rate (5,000 containers made and
//!   removed by one thread) while 50 clients flood `GetByMountNs` (a miss:
//!   the worst case, a look at every live container) and `List`, against the
//!   same churn with no clients, before and after (the baseline is their mean).
//!
//! Run as root: `cargo bench -p ctwatch-cli --bench api`. `API_N` sets N (default 2000);
//! `API_SKIP_GET=1` skips the Get round trip (the only part that needs containerd).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ctwatch_api::pb;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(nix::unistd::geteuid().is_root(), "the API bench runs ctwatch serve and makes cgroups: run it as root");
    let n: usize = std::env::var("API_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctwatch.sock");
    let serve = Serve(start_serve(&socket));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // Some containers in the store to look up.
    let hierarchy = default_hierarchy();
    let parent = hierarchy.join(format!("ctwatch-apibench-{}", std::process::id()));
    fs::create_dir_all(parent.join("docker")).unwrap();
    let _cleanup = RemoveTree(parent.clone());
    let held: Vec<PathBuf> = (0..1000).map(|i| parent.join(format!("docker/{}", held_id(i)))).collect();
    held.iter().for_each(|d| fs::create_dir(d).unwrap());
    std::thread::sleep(Duration::from_secs(1));

    // API_SKIP_GET=1 leaves the Get round trip out (it needs containerd up).
    if std::env::var_os("API_SKIP_GET").is_none() {
        let (get, version) = rt.block_on(async {
            let mut client = ctwatch_api::client::connect(&socket).await.unwrap();
            let mut containerd = ctwatch_protos::containerd::services::v1::version_client::VersionClient::new(
                ctwatch_protos::connect("/run/containerd/containerd.sock").await.expect("containerd"),
            );
            let mut get = Vec::new();
            let mut version = Vec::new();
            for i in 0..5000u64 {
                let id = held_id(i % 1000)[..12].to_string(); // a prefix, as users type them
                let t = Instant::now();
                client.get(pb::GetRequest { id }).await.unwrap();
                get.push(t.elapsed().as_secs_f64() * 1e6);
                let t = Instant::now();
                containerd.version(()).await.unwrap();
                version.push(t.elapsed().as_secs_f64() * 1e6);
            }
            (get, version)
        });
        println!("Get round trip (5000 calls, 1000 containers tracked)");
        println!("  ctwatch Get:           p50 {:>7.1} µs  p99 {:>7.1} µs", pct(&get, 50.0), pct(&get, 99.0));
        println!(
            "  containerd Version:    p50 {:>7.1} µs  p99 {:>7.1} µs (baseline)",
            pct(&version, 50.0),
            pct(&version, 99.0)
        );
        println!("  ratio p50: {:.2}x the baseline", pct(&get, 50.0) / pct(&version, 50.0));
    }
    held.iter().for_each(|d| fs::remove_dir(d).unwrap());

    let mem_n: usize = std::env::var("API_MEM_N").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let per_container = rt.block_on(memory_per_container(&socket, &parent, serve.0.id(), mem_n));
    println!("Memory: {mem_n} containers tracked, each looked up once: {per_container:.0} bytes of RSS each");

    println!("Watch fan-out: {n} containers made and removed ({} events) as fast as one thread can", 2 * n);
    for clients in [1usize, 10, 100] {
        let (agent_before, clients_before) = (cpu(serve.0.id()), cpu(std::process::id()));
        let (took, lat, lost) = rt.block_on(fan_out(&socket, &parent, n, clients));
        let (agent, own) = (cpu(serve.0.id()) - agent_before, cpu(std::process::id()) - clients_before);
        println!(
            "  {clients:>3} clients: churn {:>7.0} ops/s, delivery p50 {:>8.1} µs p99 {:>9.1} µs, lost {lost}; \
             CPU: agent {:.0} ms, clients {:.0} ms",
            (2 * n) as f64 / took.as_secs_f64(),
            pct(&lat, 50.0),
            pct(&lat, 99.0),
            agent * 1e3,
            own * 1e3,
        );
    }

    let quiet_first = rt.block_on(churn_under_flood(&socket, &parent, 5000, 0, 1));
    let flooded = rt.block_on(churn_under_flood(&socket, &parent, 5000, 50, 2));
    let quiet_last = rt.block_on(churn_under_flood(&socket, &parent, 5000, 0, 3));
    let quiet = (quiet_first.0 + quiet_last.0) / 2.0;
    println!("Churn of 5000 containers while clients flood GetByMountNs + List");
    println!(
        "  no clients:  {:>7.0} ops/s before, {:>7.0} ops/s after (baseline: their mean)",
        quiet_first.0, quiet_last.0
    );
    println!(
        "  50 clients:  {:>7.0} ops/s ({} calls answered), {:.0}% of the baseline",
        flooded.0,
        flooded.1,
        100.0 * flooded.0 / quiet
    );
    drop(serve);
}

/// Churn rate (mkdir + rmdir per second) of `n` containers while `clients`
/// clients call GetByMountNs (a miss) and List without pause; and how many calls they made.
async fn churn_under_flood(socket: &Path, parent: &Path, n: usize, clients: usize, run: u64) -> (f64, u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let own_ns = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata("/proc/self/ns/mnt").unwrap().ino()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut client = ctwatch_api::client::connect(socket).await.unwrap();
        let (stop, calls) = (stop.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if i % 2 == 0 {
                    let _ = client.get_by_mount_ns(pb::GetByMountNsRequest { mount_ns: own_ns }).await;
                } else {
                    let _ = client.list(pb::ListRequest::default()).await;
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tag = 0xf100_0000_0000u64 + run * 0x10_0000;
    let dirs: Vec<PathBuf> = (0..n).map(|i| parent.join(format!("docker/{:064x}", tag + i as u64))).collect();
    let took = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        for d in &dirs {
            fs::create_dir(d).unwrap();
            fs::remove_dir(d).unwrap();
        }
        start.elapsed()
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    ((2 * n) as f64 / took.as_secs_f64(), calls.load(Ordering::Relaxed))
}

/// Removes the bench's cgroup tree (deepest first) however the bench ends,
/// a panic included, so no cgroup outlives it.
struct RemoveTree(PathBuf);

impl Drop for RemoveTree {
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
                    remove(&entry.path());
                }
            }
            let _ = fs::remove_dir(dir);
        }
        remove(&self.0);
    }
}

/// The agent under test, stopped (SIGTERM) however the bench ends, a panic included.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// User + system CPU seconds of a process so far (all its threads).
fn cpu(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command: state, ppid, ... (some fields may be -1): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (field(11) + field(12)) as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// The agent's resident set, in bytes.
fn rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
    kib.unwrap_or(0u64) * 1024
}

/// RSS growth per container over `n` synthetic container cgroups, each
/// looked up once by ID, so the store and every cache hold them (then
/// listed, to check the agent has them all).
async fn memory_per_container(socket: &Path, parent: &Path, pid: u32, n: usize) -> f64 {
    let mut client = ctwatch_api::client::connect(socket).await.unwrap();
    let prefix = format!("{:064x}", 0x3e3_0000_0000u64)[..52].to_string();
    // How many of the bench's containers the agent lists.
    let mine = |c: &mut ctwatch_api::pb::containers_client::ContainersClient<_>| {
        let (mut c, prefix) = (c.clone(), prefix.clone());
        async move {
            let listed = c.list(pb::ListRequest::default()).await.unwrap().into_inner().containers;
            listed.iter().filter(|c| c.container_id.starts_with(&prefix)).count()
        }
    };
    // Warm up the paths the measured run takes, so their one-off allocations are not counted.
    let _ = client.get(pb::GetRequest { id: "0".repeat(64) }).await;
    let _ = mine(&mut client).await;
    let before = rss(pid);
    let ids: Vec<String> = (0..n).map(|i| format!("{:064x}", 0x3e3_0000_0000u64 + i as u64)).collect();
    let dirs: Vec<PathBuf> = ids.iter().map(|id| parent.join(format!("docker/{id}"))).collect();
    let made = dirs.clone();
    tokio::task::spawn_blocking(move || made.iter().for_each(|d| fs::create_dir(d).unwrap())).await.unwrap();
    // Wait for the last one (in order of creation) without a List: a List's
    // answer for 10,000 containers is transient, but the heap keeps its pages.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(pb::GetRequest { id: ids[n - 1].clone() }).await.is_err() {
        assert!(Instant::now() < deadline, "the agent did not track the bench's containers within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in &ids {
        client.get(pb::GetRequest { id: id.clone() }).await.unwrap();
    }
    let after = rss(pid);
    let listed = mine(&mut client).await;
    assert_eq!(listed, n, "the agent lists {listed} of the bench's {n} containers");
    tokio::task::spawn_blocking(move || dirs.iter().for_each(|d| fs::remove_dir(d).unwrap())).await.unwrap();
    after.saturating_sub(before) as f64 / n as f64
}

async fn fan_out(socket: &Path, parent: &Path, n: usize, clients: usize) -> (Duration, Vec<f64>, usize) {
    let tag = 0xfa0_0000u64 + clients as u64 * 0x10_0000;
    let ids: Vec<String> = (0..n).map(|i| format!("{:064x}", tag + i as u64)).collect();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut client = ctwatch_api::client::connect(socket).await.unwrap();
        let mut stream = client
            .watch(pb::WatchRequest { skip_current: true, buffer: 1 << 20, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let want = 2 * n;
        let prefix = format!("{tag:064x}")[..50].to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(want);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while lat.len() < want {
                let Ok(Ok(Some(m))) = tokio::time::timeout_at(deadline, stream.message()).await else { break };
                if let Some(pb::watch_response::Item::Event(e)) = m.item {
                    if e.container.as_ref().is_some_and(|c| c.container_id.starts_with(&prefix)) {
                        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
                        let at = e.kernel_time_unix_nano.unwrap_or(e.time_unix_nano);
                        lat.push((now - at) as f64 / 1e3);
                    }
                }
            }
            lat
        }));
    }
    let dirs: Vec<PathBuf> = ids.iter().map(|id| parent.join(format!("docker/{id}"))).collect();
    let started = Instant::now();
    let made = dirs.clone();
    let took = tokio::task::spawn_blocking(move || {
        made.iter().for_each(|d| fs::create_dir(d).unwrap());
        made.iter().for_each(|d| fs::remove_dir(d).unwrap());
    });
    took.await.unwrap();
    let took = started.elapsed();
    let mut all = Vec::new();
    let mut lost = 0;
    for t in tasks {
        let lat = t.await.unwrap();
        lost += 2 * n - lat.len();
        all.extend(lat);
    }
    (took, all, lost)
}

fn start_serve(socket: &Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ctwatch"))
        .args(["serve", "--no-pin", "--no-enrich", "--log-level", "warn,ctwatch_api=info", "--socket"])
        .arg(socket)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("API listening") {
            break;
        }
    }
    child
}

/// A 64-hex ID whose first 12 characters tell it apart.
fn held_id(i: u64) -> String {
    format!("{:012x}{}", 0xa11_0000_0000u64 + i, "e".repeat(52))
}

fn pct(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p / 100.0).round() as usize]
}

fn default_hierarchy() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let v1 = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup") && f[3].split(',').any(|o| o == "cpuset")).then(|| PathBuf::from(f[1]))
    });
    let v2 = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    });
    v1.or(v2).expect("a cgroup hierarchy")
}
