//! What the new eBPF programs cost every exec on the host: spawns of
//! `/bin/true`, timed with no program loaded (the baseline), with the argv
//! capture loaded for another path (the cost every exec pays), with it
//! capturing `/bin/true` itself (the cost a hooked runtime's exec pays), and
//! with the process events loaded (exec/exit outside container cgroups).
//! Rounds alternate the setups (each round starting with another one) so a
//! noisy machine weighs on all alike; the
//! result is each setup's median time per exec as a ratio to the baseline's.
//!
//! Run as root: `cargo bench -p ctwatch-ebpf --bench exec_overhead`
//! (EXECS and ROUNDS in the environment change the sizes).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ctwatch_ebpf::{ContainersMap, ExecArgvCapture, ProcessEventSource, ProcessEventsConfig};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn spawn_many(n: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        let status = Command::new("/bin/true").status().expect("spawn /bin/true");
        assert!(status.success());
    }
    start.elapsed() / n as u32
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("exec_overhead: run as root (it loads eBPF programs)");
        return;
    }
    let execs = env("EXECS", 400);
    let rounds = env("ROUNDS", 7);
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/ctwatch-bench-exec-{}", std::process::id()));
    let map = ContainersMap::open(&pin_dir, 1024, false, None).expect("pinned map");
    let setups = ["baseline", "capture, other path", "capture, this path", "process events"];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); setups.len()];
    spawn_many(execs / 4); // warm up
    for round in 0..rounds {
        // Each round starts with another setup, so none always follows the same one.
        for i in (0..setups.len()).map(|k| (k + round) % setups.len()) {
            let setup = &setups[i];
            let loaded: Box<dyn std::any::Any> = match *setup {
                "baseline" => Box::new(()),
                "capture, other path" => {
                    Box::new(ExecArgvCapture::load(&[PathBuf::from("/nonexistent/ctwatch-bench")]).expect("capture"))
                }
                "capture, this path" => {
                    Box::new(ExecArgvCapture::load(&[PathBuf::from("/bin/true")]).expect("capture"))
                }
                _ => Box::new(
                    ProcessEventSource::load(&ProcessEventsConfig {
                        pin_dir: pin_dir.clone(),
                        ..ProcessEventsConfig::default()
                    })
                    .expect("process events"),
                ),
            };
            // Let the previous setup's programs and maps be freed (deferred work) first.
            std::thread::sleep(Duration::from_millis(300));
            times[i].push(spawn_many(execs));
            drop(loaded);
        }
    }
    let base = median(times[0].clone());
    println!("exec_overhead: {execs} spawns of /bin/true x {rounds} rounds, median per exec");
    for (setup, t) in setups.iter().zip(times) {
        let m = median(t);
        println!(
            "  {setup:<22} {:>8.1} µs  {:.3}x baseline",
            m.as_secs_f64() * 1e6,
            m.as_secs_f64() / base.as_secs_f64()
        );
    }
    drop(map);
    let _ = std::fs::remove_dir(&pin_dir);
}
