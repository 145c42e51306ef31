//! The NATS sink's cost in the real agent: `ctwatch serve` (journal on)
//! without and with `--nats-url` (a private nats-server, started here), in
//! the same run, on the same churn of N container cgroups (mkdir + rmdir
//! each). Reports the agent's CPU time per 10k events, from the churn's start
//! until the journal holds every event (and, with the sink, until NATS acked
//! them all), and the ratio sink on / sink off. nats-server's own CPU is shown
//! apart. Rounds alternate off/on so that drift shows in both.
//!
//! Run as root: `cargo bench -p ctwatch-cli --bench nats_sink`.
//! Environment: `SINK_N` (containers per round, default 5000: 10k events),
//! `SINK_ROUNDS` (default 3).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ctwatch_nats::testing::NatsServer;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches` probe this
    }
    assert!(nix::unistd::geteuid().is_root(), "the sink bench makes real cgroups: run it as root");
    let n: usize = std::env::var("SINK_N").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let rounds: usize = std::env::var("SINK_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let hierarchy = common::default_hierarchy();
    let parent = hierarchy.join(format!("ctwatch-sink-bench-{}", std::process::id()));
    fs::create_dir_all(parent.join("docker")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&work.path().join("nats")).unwrap();
    println!(
        "NATS sink bench: {n} container cgroups per round (mkdir + rmdir: {} events), {rounds} rounds each",
        2 * n
    );
    println!("{:<8} {:>6} {:>16} {:>14} {:>18}", "sink", "round", "agent ms/10k ev", "wall s", "nats-server ms/10k");
    let mut off = Vec::new();
    let mut on = Vec::new();
    for round in 0..rounds {
        for with_sink in [false, true] {
            let r = run(&parent, work.path(), n, round, with_sink.then_some(&nats));
            println!(
                "{:<8} {:>6} {:>16.1} {:>14.2} {:>18}",
                if with_sink { "on" } else { "off" },
                round,
                r.agent_ms_per_10k,
                r.wall.as_secs_f64(),
                r.nats_ms_per_10k.map_or("-".to_string(), |v| format!("{v:.1}")),
            );
            if with_sink {
                on.push(r.agent_ms_per_10k)
            } else {
                off.push(r.agent_ms_per_10k)
            }
        }
    }
    let (off_m, on_m) = (median(&off), median(&on));
    println!(
        "median agent CPU per 10k events: sink off {off_m:.1} ms, sink on {on_m:.1} ms; ratio on/off {:.2}; \
         the sink's own cost ≈ {:.1} ms per 10k events ({:.1} µs/event)",
        on_m / off_m,
        on_m - off_m,
        (on_m - off_m) / 10.0
    );
    let _ = fs::remove_dir(parent.join("docker"));
    let _ = fs::remove_dir(&parent);
}

struct Result {
    agent_ms_per_10k: f64,
    nats_ms_per_10k: Option<f64>,
    wall: Duration,
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(parent: &Path, work: &Path, n: usize, round: usize, nats: Option<&NatsServer>) -> Result {
    let tag = if nats.is_some() { "on" } else { "off" };
    let dir = work.join(format!("{tag}-{round}"));
    fs::create_dir_all(&dir).unwrap();
    let metrics =
        format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ctwatch"));
    cmd.args(["serve", "--no-pin", "--hook", "off", "--no-enrich", "--cgroup-root"])
        .arg(parent)
        .arg("--socket")
        .arg(dir.join("s.sock"))
        .arg("--journal")
        .arg(dir.join("journal"))
        .args(["--metrics-addr", &metrics])
        .env("CTWATCH_LOG", "warn")
        .env_remove("CTWATCH_NATS_URL")
        .stdout(Stdio::null());
    if let Some(nats) = nats {
        cmd.args(["--nats-url", &nats.url(), "--node-name", &format!("bench-{round}")]);
    }
    let agent = Killed(cmd.spawn().expect("start ctwatch serve"));
    let pid = agent.0.id();
    // Started, scanned, and (with the sink) publishing: a probe container's two events journaled and acked.
    let probe = parent.join("docker").join(format!("{:064x}", 0xbeef_0000u64 + round as u64));
    wait(Duration::from_secs(60), "the agent's metrics", || scrape(&metrics).is_some());
    fs::create_dir(&probe).unwrap();
    fs::remove_dir(&probe).unwrap();
    wait(Duration::from_secs(60), "the probe's events", || settled(&metrics, 2, nats.is_some()));
    let cpu_before = common::process_cpu(pid);
    let nats_before = nats.and_then(NatsServer::pid).map(common::process_cpu);
    let start = Instant::now();
    for i in 0..n {
        let d = parent.join("docker").join(format!("{:064x}", ((round as u64) << 32) + 0x5eed_0000_0000 + i as u64));
        fs::create_dir(&d).unwrap();
        fs::remove_dir(&d).unwrap();
    }
    let target = 2 + 2 * n as u64;
    wait(Duration::from_secs(300), "every event journaled (and acked)", || settled(&metrics, target, nats.is_some()));
    let wall = start.elapsed();
    let events = 2.0 * n as f64;
    let per_10k = |d: Duration| d.as_secs_f64() * 1000.0 / (events / 10_000.0);
    let agent_ms_per_10k = per_10k(common::process_cpu(pid).saturating_sub(cpu_before));
    let nats_ms_per_10k =
        nats.and_then(NatsServer::pid).zip(nats_before).map(|(p, b)| per_10k(common::process_cpu(p).saturating_sub(b)));
    drop(agent);
    let _ = fs::remove_dir_all(&dir);
    Result { agent_ms_per_10k, nats_ms_per_10k, wall }
}

/// The journal holds `seq` events, and with the sink NATS acked them all.
fn settled(metrics: &str, seq: u64, sink: bool) -> bool {
    let Some(text) = scrape(metrics) else { return false };
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).unwrap_or(-1.0)
    };
    let newest = value("ctwatch_journal_newest_seq");
    newest >= seq as f64 && (!sink || value("ctwatch_nats_acked_seq") >= newest)
}

fn wait(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn scrape(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
