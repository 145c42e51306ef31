//! Helpers for the integration tests: run the real `ctwatch` binary, read its
//! events, and make cgroup trees on the real cgroupfs.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod cri;
pub mod serve;

/// The `ctwatch` binary built for these tests.
pub fn ctwatch_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ctwatch"))
}

/// Fails the test with a clear message unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests talk to the real kernel and runtimes: run them as root (scripts/test.sh)"
    );
}

/// The mount point of the hierarchy ctwatch watches by default on this host,
/// read from `ctwatch`'s own choice (the v1 cpuset or the unified hierarchy).
pub fn default_hierarchy() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let mut v1 = None;
    let mut v2 = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.get(2) {
            Some(&"cgroup2") => v2 = v2.or(Some(PathBuf::from(f[1]))),
            Some(&"cgroup") if f[3].split(',').any(|o| o == "cpuset") => v1 = Some(PathBuf::from(f[1])),
            _ => {}
        }
    }
    if mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("cgroup")) {
        v1.or(v2).expect("a cgroup hierarchy")
    } else {
        v2.expect("cgroup2")
    }
}

/// Every mounted cgroup hierarchy (v1 and v2).
pub fn all_hierarchies() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            matches!(f.get(2), Some(&"cgroup") | Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// A unique name for this test's cgroups and containers.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("ctwatch-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A fresh 64-hex container ID.
pub fn hex_id(seed: &str) -> String {
    use std::hash::Hasher;
    let mut out = String::new();
    let mut i = 0u64;
    while out.len() < 64 {
        #[allow(deprecated)] // SipHasher with fixed keys: the same seed gives the same ID
        let mut h = std::hash::SipHasher::new();
        h.write(seed.as_bytes());
        h.write_u64(i);
        out.push_str(&format!("{:016x}", h.finish()));
        i += 1;
    }
    out.truncate(64);
    out
}

/// A cgroup tree owned by one test, removed (deepest first) when dropped.
pub struct CgroupTree {
    /// Absolute paths created, in creation order.
    pub created: Vec<PathBuf>,
}

impl CgroupTree {
    /// An empty tree.
    pub fn new() -> Self {
        CgroupTree { created: Vec::new() }
    }

    /// `mkdir -p` under `base`, recording each directory made.
    pub fn mkdir_p(&mut self, base: &Path, rel: &str) -> PathBuf {
        let mut dir = base.to_path_buf();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                self.created.push(dir.clone());
            }
        }
        dir
    }

    /// Removes one directory made earlier.
    pub fn rmdir(&mut self, dir: &Path) {
        fs::remove_dir(dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
        self.created.retain(|d| d != dir);
    }

    /// Removes everything, deepest first.
    pub fn remove_all(&mut self) {
        let mut dirs = std::mem::take(&mut self.created);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = fs::remove_dir(&d);
        }
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// The kernel sources every core test runs with.
pub const SOURCES: [&str; 2] = ["ebpf", "inotify"];

/// A running `ctwatch watch` whose JSON events are collected.
pub struct Watch {
    child: Child,
    events: Receiver<Value>,
    /// Every event received so far.
    pub seen: Vec<Value>,
    /// Every line ctwatch logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    /// Starts `ctwatch watch` with `args` (default source) and waits for its scan at start.
    pub fn start(args: &[&str]) -> Watch {
        Watch::start_with("auto", args)
    }

    /// Starts `ctwatch watch --source <source>` with `args`. The pinned map is
    /// off unless `args` names a `--pin-path` (tests run in parallel).
    pub fn start_with(source: &str, args: &[&str]) -> Watch {
        Watch::start_with_env(source, args, &[])
    }

    /// [`Watch::start_with`] with extra environment variables.
    pub fn start_with_env(source: &str, args: &[&str], env: &[(&str, &str)]) -> Watch {
        // --standalone: the test is about this process's own kernel source, whatever agent may run.
        let mut all = vec!["watch", "--standalone", "--source", source];
        if !args.contains(&"--pin-path") {
            all.push("--no-pin");
        }
        // The runtime hook adds container_precreate events: only the hook's own tests (which say --hook) get it.
        if source != "hook" && !args.contains(&"--hook") {
            all.extend_from_slice(&["--hook", "off"]);
        }
        all.extend_from_slice(args);
        let mut child = Command::new(ctwatch_bin())
            .args(&all)
            .env("CTWATCH_LOG", std::env::var("CTWATCH_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ctwatch watch");
        let (tx, events) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let (ready_tx, ready) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let verbose = std::env::var_os("CTWATCH_TEST_VERBOSE").is_some();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log_writer = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if verbose {
                    eprintln!("[ctwatch] {line}");
                }
                log_writer.lock().unwrap().push(line.clone());
                if line.contains("scan at start complete") {
                    let _ = ready_tx.send(());
                }
            }
        });
        if ready.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!("ctwatch watch {all:?} did not finish its scan at start; log: {:#?}", log.lock().unwrap());
        }
        Watch { child, events, seen: Vec::new(), log }
    }

    /// The ctwatch process's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True when some logged line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// Stops ctwatch with SIGINT and waits for it to exit; returns its exit status.
    pub fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "ctwatch did not exit on SIGINT");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `done` holds over the events seen, or panics after `timeout`.
    pub fn wait_until(&mut self, timeout: Duration, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(v) => self.seen.push(v),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(e) => panic!("timed out waiting for {what} ({e:?}); events seen: {:#?}", self.seen),
            }
        }
    }

    /// Waits until `missing` (what is still awaited, described) is empty, or
    /// panics after `timeout` naming what never came.
    pub fn wait_for_all(&mut self, timeout: Duration, what: &str, missing: impl Fn(&[Value]) -> Vec<String>) {
        let deadline = Instant::now() + timeout;
        while !missing(&self.seen).is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(v) => self.seen.push(v),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(e) => panic!(
                    "timed out waiting for {what} ({e:?}) after {} events; never seen: {:#?}",
                    self.seen.len(),
                    missing(&self.seen)
                ),
            }
        }
    }

    /// Waits (a minute at most) for an `event` about container `id`.
    pub fn wait_for(&mut self, event: &str, id: &str) {
        self.wait_until(Duration::from_secs(60), &format!("{event} of {id}"), |seen| has_event(seen, event, id));
    }

    /// The first `event` seen about container `id` (panics if there is none).
    pub fn event(&self, event: &str, id: &str) -> &Value {
        self.seen
            .iter()
            .find(|e| e["event"] == event && e["args"]["container_id"] == id)
            .unwrap_or_else(|| panic!("no {event} of {id} among {:#?}", self.seen))
    }

    /// Collects whatever arrives within `quiet` more time.
    pub fn drain_for(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while let Ok(v) = self.events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(v);
        }
    }

    /// The events seen about one container ID.
    pub fn about(&self, container_id: &str) -> Vec<&Value> {
        self.seen.iter().filter(|e| e["args"]["container_id"] == container_id).collect()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when `seen` holds an `event` about container `id`.
pub fn has_event(seen: &[Value], event: &str, id: &str) -> bool {
    seen.iter().any(|e| e["event"] == event && e["args"]["container_id"] == id)
}

/// Counts events by (event name, container id).
pub fn counts(events: &[Value]) -> HashMap<(String, String), usize> {
    let mut m = HashMap::new();
    for e in events {
        let key = (
            e["event"].as_str().unwrap_or("").to_string(),
            e["args"]["container_id"].as_str().unwrap_or("").to_string(),
        );
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

/// Runs a command and returns its output, panicking with stderr on failure.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = output(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs a command whose children may keep its stdio open (`runc run -d`),
/// with all stdio on /dev/null; panics on failure.
pub fn run_detached(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(status.success(), "{cmd} {args:?} failed: {status}");
}

/// Runs a command and returns its raw output.
pub fn output(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// A runc bundle with the local busybox root filesystem, running `args`.
pub fn runc_bundle(name: &str, args: &[&str]) -> PathBuf {
    let bundle = std::env::temp_dir().join(name);
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    run("cp", &["-a", "/var/lib/ctwatch-test/rootfs/.", rootfs.to_str().unwrap()]);
    run("runc", &["spec", "--bundle", bundle.to_str().unwrap()]);
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(args);
    fs::write(&config, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    bundle
}
