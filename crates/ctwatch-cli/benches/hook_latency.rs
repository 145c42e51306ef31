//! What the runtime hook adds to a container start: `docker run --rm IMAGE
//! true`, timed end to end, with no ctwatch (the baseline), with ctwatch's
//! hook and an audit policy whose rule matches every container (so each
//! start also makes a `container_policy_violation`), and with an enforce
//! policy whose rule matches none (every create checked, all allowed), and
//! with an enforce policy applying the Pod Security Standards' `restricted`
//! profile (every create's profile derived and checked, all compliant and
//! allowed). Every setup runs the same compliant container (`-u 1000:1000
//! --cap-drop ALL --security-opt no-new-privileges --read-only`) from its own
//! tag, to which the restricted profile is scoped.
//!
//! The three are interleaved in blocks of 10 runs so the machine's drift
//! spreads over all of them; the hook's own time holding each runtime exec
//! (`hook.answer_us` of the precreates) is reported too.
//!
//! Run as root with the daemons up (scripts/setup-host.sh):
//! `cargo bench -p ctwatch-cli --bench hook_latency` (`HOOK_N` runs per
//! configuration, default 50).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const DOCKER: &str = "/usr/bin/docker";
const BASE_IMAGE: &str = "local/busybox:1";
const IMAGE: &str = "local/ctwatch-bench-pss:1";
const BLOCK: usize = 10;

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    NoHook,
    Audit,
    Enforce,
    Restricted,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::NoHook => "no ctwatch (baseline)",
            Setup::Audit => "hook, audit policy (rule matches)",
            Setup::Enforce => "hook, enforce policy (no match)",
            Setup::Restricted => "hook, enforce profile=restricted",
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(nix::unistd::geteuid().is_root(), "run as root, with the daemons up (scripts/setup-host.sh)");
    let n: usize = std::env::var("HOOK_N").ok().and_then(|v| v.parse().ok()).unwrap_or(50).max(BLOCK);
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.toml");
    std::fs::write(&audit, "mode = \"audit\"\n[[deny]]\nname = \"bench\"\nimage = [\"local/ctwatch-bench-pss:*\"]\n")
        .unwrap();
    let enforce = dir.path().join("enforce.toml");
    std::fs::write(&enforce, "mode = \"enforce\"\n[[deny]]\nname = \"bench\"\nimage = [\"local/never-*\"]\n").unwrap();
    let restricted = dir.path().join("restricted.toml");
    std::fs::write(
        &restricted,
        format!("mode = \"enforce\"\nprofile = \"restricted\"\n[scope]\nimage = [\"{IMAGE}\"]\n"),
    )
    .unwrap();
    let tagged = Command::new(DOCKER).args(["tag", BASE_IMAGE, IMAGE]).status().expect("docker tag");
    assert!(tagged.success(), "docker tag {BASE_IMAGE} {IMAGE}");

    docker_run(); // warm the image and the daemons
    let setups = [Setup::NoHook, Setup::Audit, Setup::Enforce, Setup::Restricted];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut answers: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut violations = 0;
    for _ in 0..n / BLOCK {
        for (i, setup) in setups.iter().enumerate() {
            let watcher = match setup {
                Setup::NoHook => None,
                Setup::Audit => Some(Watcher::start(&audit)),
                Setup::Enforce => Some(Watcher::start(&enforce)),
                Setup::Restricted => Some(Watcher::start(&restricted)),
            };
            for _ in 0..BLOCK {
                times[i].push(docker_run().as_secs_f64() * 1e3);
            }
            if let Some(watcher) = watcher {
                let events = watcher.stop();
                for event in &events {
                    match event["event"].as_str() {
                        Some("container_precreate") => {
                            answers[i].push(event["hook"]["answer_us"].as_f64().unwrap_or(f64::NAN))
                        }
                        Some("container_policy_violation") => violations += 1,
                        _ => {}
                    }
                }
            }
        }
    }

    let runs = times[0].len();
    println!("docker run --rm {IMAGE} true, {runs} runs per setup, interleaved in blocks of {BLOCK}");
    let base = (pct(&times[0], 50.0), mean(&times[0]));
    for (i, setup) in setups.iter().enumerate() {
        let t = &times[i];
        println!(
            "  {:<36} p50 {:>7.1} ms  mean {:>7.1} ms  p99 {:>7.1} ms  ratio p50 {:.3}  mean {:.3}",
            setup.label(),
            pct(t, 50.0),
            mean(t),
            pct(t, 99.0),
            pct(t, 50.0) / base.0,
            mean(t) / base.1,
        );
    }
    for (i, setup) in setups.iter().enumerate().skip(1) {
        let a = &answers[i];
        println!(
            "  {:<36} hook held the runtime exec: p50 {:>6.0} µs  p99 {:>6.0} µs ({} creates)",
            setup.label(),
            pct(a, 50.0),
            pct(a, 99.0),
            a.len()
        );
    }
    println!("  audit violations reported: {violations} (expected {runs})");
}

/// One `docker run --rm`, timed.
fn docker_run() -> Duration {
    let start = Instant::now();
    let status = Command::new(DOCKER)
        .args(["run", "--rm", "--network", "none", "-u", "1000:1000", "--cap-drop", "ALL"])
        .args(["--security-opt", "no-new-privileges", "--read-only", IMAGE, "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("docker");
    assert!(status.success(), "docker run failed");
    start.elapsed()
}

/// `ctwatch watch` with the hook on and a policy, collecting its events.
struct Watcher {
    child: Child,
    events: mpsc::Receiver<Value>,
}

impl Watcher {
    fn start(policy: &Path) -> Watcher {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ctwatch"))
            .args(["watch", "--standalone", "--no-pin", "--no-existing", "--hook", "on", "--policy"])
            .arg(policy)
            .env("CTWATCH_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ctwatch");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut said = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("scan at start complete") => break,
                Some(Ok(line)) => said.push(line),
                _ => panic!("ctwatch did not start: {}", said.join("\n")),
            }
        }
        thread::spawn(move || lines.for_each(drop));
        let (tx, events) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(serde_json::from_str(&line).unwrap_or(Value::Null)).is_err() {
                    break;
                }
            }
        });
        Watcher { child, events }
    }

    /// Stops ctwatch (SIGTERM) and returns what it printed.
    fn stop(mut self) -> Vec<Value> {
        thread::sleep(Duration::from_millis(300)); // the last removes
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        self.events.iter().collect() // until the pipe closes
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn pct(values: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p / 100.0).round() as usize]
}
