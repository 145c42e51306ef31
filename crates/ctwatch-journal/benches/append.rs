//! Append benchmark: appends/s, p50/p99 append latency and bytes on disk per event for
//! ~300-byte JSON events, against a baseline of the same loop without the journal (serializing
//! each event into a Vec), measured in the same run. Also: open (recovery scan) time of the
//! result, `history` through the index and by scan, and `read_from` throughput.
//!
//! `cargo bench -p ctwatch-journal --bench append` (`JOURNAL_BENCH_EVENTS=N` to change the size).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use ctwatch_journal::{Journal, JournalRecordInput, Options};
use serde::Serialize;

/// Counts live heap bytes, to measure what the journal's in-memory indexes cost.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}
#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Serialize)]
struct Event<'a> {
    kind: &'a str,
    id: String,
    time: &'a str,
    cgroup_id: u64,
    cgroup_path: String,
    runtime: &'a str,
    name: String,
    image: &'a str,
}

fn event(i: u64) -> Event<'static> {
    Event {
        kind: if i.is_multiple_of(2) { "container_create" } else { "container_remove" },
        id: format!("{:064x}", i / 2),
        time: "2027-01-15T08:00:00.123456789Z",
        cgroup_id: 100_000 + i,
        cgroup_path: format!("/docker/{:064x}", i / 2),
        runtime: "docker",
        name: format!("svc-{}", i / 2),
        image: "registry.example/app:1.2.3",
    }
}

/// CPU time (user + system) of this process so far, all threads, from /proc (10 ms ticks).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

struct Run {
    elapsed: Duration,
    /// CPU time of the whole process (appender and writer threads) during the run.
    cpu: Duration,
    /// The append loop alone (without waiting for the writer to catch up at the end).
    loop_only: Duration,
    lat: Vec<Duration>,
}

fn mean_us(lat: &[Duration]) -> f64 {
    lat.iter().map(|d| d.as_secs_f64()).sum::<f64>() / lat.len().max(1) as f64 * 1e6
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn baseline(n: u64) -> Run {
    let mut lat = Vec::with_capacity(n as usize);
    let mut sink: Vec<Vec<u8>> = Vec::with_capacity(n as usize);
    let cpu0 = cpu_time();
    let start = Instant::now();
    for i in 0..n {
        let ev = event(i);
        let t = Instant::now();
        let mut buf = Vec::with_capacity(320);
        serde_json::to_writer(&mut buf, &ev).unwrap_or_default();
        sink.push(buf);
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    black_box(&sink);
    Run { elapsed, cpu: cpu_time() - cpu0, loop_only: elapsed, lat }
}

fn journal(dir: &std::path::Path, n: u64) -> (Run, u64, usize) {
    let j = Journal::open(dir, Options::default()).expect("open");
    let mut lat = Vec::with_capacity(n as usize);
    let mut buf = Vec::with_capacity(512);
    let mut payload_bytes = 0usize;
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default();
    let cpu0 = cpu_time();
    let start = Instant::now();
    for i in 0..n {
        let ev = event(i);
        let t = Instant::now();
        buf.clear();
        serde_json::to_writer(&mut buf, &ev).unwrap_or_default();
        j.append(JournalRecordInput { time_ns: t0 + i as i64, container_id: &ev.id, kind: ev.kind, payload: &buf })
            .expect("append");
        lat.push(t.elapsed());
        payload_bytes += buf.len();
    }
    let loop_only = start.elapsed();
    j.flush().expect("flush");
    let elapsed = start.elapsed();
    let cpu = cpu_time() - cpu0;
    let st = j.stats();
    let bytes = st.bytes;
    let mean = |h: &ctwatch_journal::LatencyHistogram| h.sum_us as f64 / h.count().max(1) as f64;
    eprintln!(
        "  round: {} batch writes (mean {:.0} µs, {:.0} records each), {} fsyncs (mean {:.0} µs)",
        st.write_latency.count(),
        mean(&st.write_latency),
        n as f64 / st.write_latency.count().max(1) as f64,
        st.fsync_latency.count(),
        mean(&st.fsync_latency)
    );
    (Run { elapsed, cpu, loop_only, lat }, bytes, payload_bytes)
}

/// CPU time for `secs` seconds of events at `rate`/s (appended in 1 ms steps, sleeping in
/// between, like the agent at a steady churn), with or without a journal.
fn paced(dir: Option<&std::path::Path>, write_delay: Duration, rate: u64, secs: u64) -> Duration {
    let j = dir.map(|d| Journal::open(d, Options { write_delay, ..Options::default() }).expect("open"));
    let t0 =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    let per_ms = rate / 1000;
    let mut sink: Vec<Vec<u8>> = Vec::new();
    let cpu0 = cpu_time();
    let start = Instant::now();
    let mut i = 0u64;
    for ms in 0..secs * 1000 {
        for _ in 0..per_ms {
            let ev = event(i);
            let mut buf = Vec::with_capacity(320);
            serde_json::to_writer(&mut buf, &ev).unwrap_or_default();
            match &j {
                Some(j) => {
                    j.append(JournalRecordInput {
                        time_ns: t0 + i as i64,
                        container_id: &ev.id,
                        kind: ev.kind,
                        payload: &buf,
                    })
                    .expect("append");
                }
                None => sink.push(buf),
            }
            i += 1;
        }
        let next = start + Duration::from_millis(ms + 1);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    if let Some(j) = &j {
        j.flush().expect("flush");
    }
    black_box(&sink);
    cpu_time() - cpu0
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let n: u64 = std::env::var("JOURNAL_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(300_000);
    let rounds = 3;
    let mut base_runs = Vec::new();
    let mut j_runs = Vec::new();
    let mut disk = (0, 0);
    let root = tempfile::Builder::new().prefix("ctwatch-journal-bench-").tempdir_in("/var/tmp").expect("tempdir");
    for r in 0..rounds {
        base_runs.push(baseline(n));
        let dir = root.path().join(format!("round{r}"));
        let (run, bytes, payload) = journal(&dir, n);
        j_runs.push(run);
        disk = (bytes, payload);
    }
    let median = |runs: &mut Vec<Run>| {
        runs.sort_by_key(|r| r.elapsed);
        let mut m = runs.swap_remove(runs.len() / 2);
        m.lat.sort();
        m
    };
    let b = median(&mut base_runs);
    let jr = median(&mut j_runs);
    let rate = |r: &Run| n as f64 / r.elapsed.as_secs_f64();
    println!("events per round: {n}, rounds: {rounds} (median shown), payload ~{} B", disk.1 as u64 / n);
    println!(
        "baseline (serialize into Vec): {:>10.0} events/s  mean {:>6.2} µs  p50 {:>6.2} µs  p99 {:>6.2} µs",
        rate(&b),
        mean_us(&b.lat),
        pct(&b.lat, 0.5).as_secs_f64() * 1e6,
        pct(&b.lat, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "journal (serialize + append, incl. final flush): {:>10.0} events/s  mean {:>6.2} µs  p50 {:>6.2} µs  p99 {:>6.2} µs  p99.9 {:>6.2} µs  max {:>8.2} µs",
        rate(&jr),
        mean_us(&jr.lat),
        pct(&jr.lat, 0.5).as_secs_f64() * 1e6,
        pct(&jr.lat, 0.99).as_secs_f64() * 1e6,
        pct(&jr.lat, 0.999).as_secs_f64() * 1e6,
        jr.lat.last().copied().unwrap_or_default().as_secs_f64() * 1e6
    );
    println!(
        "journal append loop alone (writer still catching up): {:>10.0} events/s",
        n as f64 / jr.loop_only.as_secs_f64()
    );
    println!(
        "ratio journal/baseline: rate {:.2}, p50 {:.2}x, p99 {:.2}x",
        rate(&jr) / rate(&b),
        pct(&jr.lat, 0.5).as_secs_f64() / pct(&b.lat, 0.5).as_secs_f64(),
        pct(&jr.lat, 0.99).as_secs_f64() / pct(&b.lat, 0.99).as_secs_f64()
    );
    let per10k = |r: &Run| r.cpu.as_secs_f64() * 1e3 * 10_000.0 / n as f64;
    println!(
        "CPU per 10k events (all threads): baseline {:.1} ms, journal {:.1} ms (+{:.1} ms for the journal)",
        per10k(&b),
        per10k(&jr),
        per10k(&jr) - per10k(&b)
    );
    println!(
        "bytes on disk per event: {:.1} (payload {:.1}, overhead {:.1})",
        disk.0 as f64 / n as f64,
        disk.1 as f64 / n as f64,
        (disk.0 as f64 - disk.1 as f64) / n as f64
    );

    // At the agent's scale: a steady 20k events/s (about the kernel's cgroup mkdir ceiling).
    let (rate, secs) = (20_000, 3);
    let base_cpu = paced(None, Duration::ZERO, rate, secs);
    let per10k = |d: Duration| d.as_secs_f64() * 1e3 * 10_000.0 / (rate * secs) as f64;
    for delay_ms in [0, 1, 5] {
        let dir = root.path().join(format!("paced-{delay_ms}"));
        let j_cpu = paced(Some(&dir), Duration::from_millis(delay_ms), rate, secs);
        println!(
            "paced {rate} events/s for {secs} s, write_delay {delay_ms} ms, CPU per 10k events: baseline {:.1} ms, journal {:.1} ms (+{:.1} ms)",
            per10k(base_cpu),
            per10k(j_cpu),
            per10k(j_cpu) - per10k(base_cpu)
        );
    }

    // Reopen (recovery scan + index rebuild) and read back the last round's journal.
    let dir = root.path().join(format!("round{}", rounds - 1));
    let live_before = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let j = Journal::open(&dir, Options::default()).expect("reopen");
    let open = t.elapsed();
    let index_bytes = LIVE.load(Ordering::Relaxed) - live_before;
    println!(
        "reopen (scan {} MiB, rebuild indexes): {:.1} ms; indexes in memory: {:.1} MiB ({:.1} B per record, {} containers)",
        disk.0 >> 20,
        open.as_secs_f64() * 1e3,
        index_bytes as f64 / (1 << 20) as f64,
        index_bytes as f64 / n as f64,
        n / 2
    );
    let t = Instant::now();
    let mut after = 0;
    let mut count = 0u64;
    loop {
        let batch = j.read_from(after, 4096).expect("read");
        let Some(last) = batch.last() else { break };
        after = last.seq;
        count += batch.len() as u64;
    }
    println!("read_from, whole journal: {:.0} records/s ({count} records)", count as f64 / t.elapsed().as_secs_f64());
    let id = format!("{:064x}", n / 4);
    let t = Instant::now();
    let h = j.history(&id).expect("history");
    let indexed = t.elapsed();
    drop(j);
    let j = Journal::open(&dir, Options { max_history_entries: 0, ..Options::default() }).expect("reopen");
    let t = Instant::now();
    let h2 = j.history(&id).expect("history");
    let scanned = t.elapsed();
    assert_eq!(h, h2);
    println!(
        "history of one container ({} records): index {:.1} µs, full scan {:.1} ms",
        h.len(),
        indexed.as_secs_f64() * 1e6,
        scanned.as_secs_f64() * 1e3
    );
}
