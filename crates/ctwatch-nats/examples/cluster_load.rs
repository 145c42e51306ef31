//! Load generator: N simulated nodes publish journal-shaped events through
//! the NATS sink into one nats-server (started here), while a `cluster
//! watch`-style consumer reads the stream and `cluster ls` reads the bucket.
//!
//! `cargo run --release -p ctwatch-nats --example cluster_load -- [NODES,...] [EVENTS] [RATE]`
//! (default `10,100,1000 20000 0`). Prints, per N: events/s (RATE 0: all
//! events appended as fast as possible, until the consumer has them all;
//! else appended at RATE events/s: the latency without a burst's queue),
//! consumer lag, end-to-end latency p50/p99 (append to consumer), bucket
//! size and `cluster ls` time; then the sink's CPU cost per 10k events, sink
//! on vs off, measured in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ctwatch_nats::testing::NatsServer;
use ctwatch_nats::{Cluster, ClusterFilter, MemoryOutbox, NatsOptions, NatsSink, Since, SinkConfig};
use futures_util::StreamExt;
use serde_json::json;

/// Live containers each simulated node keeps (older ones are removed).
const LIVE_PER_NODE: usize = 10;

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

fn cpu_time() -> Duration {
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(r.ru_utime) + tv(r.ru_stime)
}

fn container_id(node: usize, i: usize) -> String {
    format!("{node:08x}{i:08x}{}", "a".repeat(48))
}

/// Appends the `i`-th event of `node`: a create, and past LIVE_PER_NODE also
/// the removal of the oldest live container (so two records).
fn append(outbox: &MemoryOutbox, node: usize, i: usize) -> usize {
    let id = container_id(node, i);
    let record = json!({
        "container_id": id, "container_ctime": now_ns(), "container_name": format!("web-{node}-{i}"),
        "container_image": "registry.example.com/shop/web:1.2.3",
        "container_image_digest": format!("sha256:{}", "b".repeat(64)), "runtime": "containerd",
        "k8s_pod_id": "1c2d3e4f-0000-4000-8000-000000000000", "k8s_pod_name": format!("web-{i}"),
        "k8s_pod_namespace": "shop", "k8s_pod_sandbox": false, "cgroup_id": 4_000_000 + i,
        "cgroup_path": format!("/kubepods/burstable/pod1c2d/{id}"), "init_pid": 4242, "mount_ns": 4026532000u64,
        "net_ns": 4026532001u64, "labels": {"app": "web", "io.kubernetes.container.name": "web"}, "state": "created"
    });
    let event = json!({"time": "2026-12-01T00:00:00.000000000Z", "event": "container_create", "cgroup_id": 4_000_000 + i,
        "enriched": true, "t_ns": now_ns(), "args": record});
    outbox.append("container_create", &id, Bytes::from(event.to_string()), Some(Bytes::from(record.to_string())));
    if i >= LIVE_PER_NODE {
        let old = container_id(node, i - LIVE_PER_NODE);
        let gone = json!({"time": "2026-12-01T00:00:00.000000000Z", "event": "container_remove", "t_ns": now_ns(),
            "args": {"runtime": "containerd", "container_id": old}});
        outbox.append("container_remove", &old, Bytes::from(gone.to_string()), None);
        return 2;
    }
    1
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1e6
}

async fn scenario(nodes: usize, events: usize, rate: usize) {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path()).unwrap();
    let url = server.url();
    let outboxes: Vec<Arc<MemoryOutbox>> =
        (0..nodes).map(|n| Arc::new(MemoryOutbox::new(format!("j{n}"), 1 << 20))).collect();
    let mut sinks = Vec::new();
    for (n, outbox) in outboxes.iter().enumerate() {
        let mut c = SinkConfig::new(format!("node-{n:04}"), NatsOptions::new([url.clone()]));
        c.max_in_flight = 256;
        c.agent_version = "bench".into();
        sinks.push(NatsSink::spawn(c, outbox.clone()).unwrap());
    }
    // Wait until every sink has set up (first heartbeat written).
    while sinks.iter().any(|s| s.stats().heartbeats() == 0) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cluster = Cluster::connect(&NatsOptions::new([url.clone()]), Duration::from_secs(30)).await.unwrap();
    let mut stream = cluster.watch(Since::New, ClusterFilter::default()).await.unwrap();

    // The consumer, concurrently: counts and end-to-end latencies.
    let consumed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let consumer = {
        let consumed = consumed.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
                let sent = e.payload["t_ns"].as_u64().unwrap_or(0);
                latencies.push(now_ns().saturating_sub(sent));
                consumed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if e.payload["last"].as_bool() == Some(true) {
                    break;
                }
            }
            latencies
        })
    };
    // Generate: round-robin over the nodes, as fast as possible (rate 0) or at `rate` events/s.
    let started = Instant::now();
    let mut appended = 0;
    let mut max_lag = 0;
    let mut i = 0;
    while appended < events {
        for (n, outbox) in outboxes.iter().enumerate() {
            appended += append(outbox, n, i);
            if appended >= events {
                break;
            }
        }
        i += 1;
        max_lag = max_lag.max(appended - consumed.load(std::sync::atomic::Ordering::Relaxed));
        if rate > 0 {
            let due = started + Duration::from_secs_f64(appended as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    // The end marker (not counted as a journal event).
    let marker = json!({"event": "container_update", "last": true, "t_ns": now_ns()});
    outboxes[0].append("container_update", "", Bytes::from(marker.to_string()), None);
    let gen_time = started.elapsed();
    while consumed.load(std::sync::atomic::Ordering::Relaxed) < appended + 1 && !consumer.is_finished() {
        max_lag = max_lag.max((appended + 1).saturating_sub(consumed.load(std::sync::atomic::Ordering::Relaxed)));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut latencies = consumer.await.unwrap();
    latencies.pop();

    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let backlog: u64 = sinks.iter().map(|s| s.stats().backlog()).sum();
    let errors: u64 = sinks.iter().map(|s| s.stats().errors()).sum();
    // Let the last bucket writes land, then read the bucket as `cluster ls` does.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let listed = cluster.ls(&ClusterFilter::default()).await.unwrap();
    let ls_time = t.elapsed();
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let kv_state = js.get_stream("KV_ctwatch_containers").await.unwrap().info().await.unwrap().state.clone();
    let ev_state = js.get_stream("CTWATCH_EVENTS").await.unwrap().info().await.unwrap().state.clone();
    println!(
        "nodes={nodes:5} events={appended} gen={:.2}s total={:.2}s events/s={:.0} max_lag={} \
         e2e_p50={:.1}ms e2e_p99={:.1}ms stream_msgs={} stream_bytes/event={} kv_keys={} kv_bytes={} \
         cluster_ls={} containers in {:.1}ms sink_errors={errors} backlog_end={backlog}",
        gen_time.as_secs_f64(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        max_lag,
        pct(&latencies, 0.5),
        pct(&latencies, 0.99),
        ev_state.messages,
        ev_state.bytes / ev_state.messages.max(1),
        kv_state.messages,
        kv_state.bytes,
        listed.len(),
        ls_time.as_secs_f64() * 1e3,
    );
    for s in sinks {
        s.shutdown().await;
    }
    drop(server);
}

/// CPU of this process per 10k events: appending alone vs appending with the sink publishing them.
async fn sink_cost(events: usize) {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path()).unwrap();
    // Off: the outbox only.
    let off = Arc::new(MemoryOutbox::new("off", 1 << 20));
    let cpu = cpu_time();
    let mut n = 0;
    let mut i = 0;
    while n < events {
        n += append(&off, 0, i);
        i += 1;
    }
    let cpu_off = cpu_time() - cpu;
    // On: the same, with the sink publishing until all is acked.
    let on = Arc::new(MemoryOutbox::new("on", 1 << 20));
    let mut c = SinkConfig::new("cost", NatsOptions::new([server.url()]));
    c.agent_version = "bench".into();
    let sink = NatsSink::spawn(c, on.clone()).unwrap();
    while sink.stats().heartbeats() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu = cpu_time();
    let wall = Instant::now();
    let mut n = 0;
    let mut i = 0;
    while n < events {
        n += append(&on, 0, i);
        i += 1;
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    while sink.stats().acked() < n as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cpu_on = cpu_time() - cpu;
    let wall = wall.elapsed();
    let per10k = |d: Duration| d.as_secs_f64() * 1e3 * 10_000.0 / n as f64;
    println!(
        "sink cost: {n} events; CPU per 10k events: off {:.1} ms, on {:.1} ms (sink {:.1} ms per 10k = {:.1} us/event, on/off {:.2}x); publish rate {:.0} events/s",
        per10k(cpu_off),
        per10k(cpu_on),
        per10k(cpu_on.saturating_sub(cpu_off)),
        (cpu_on.saturating_sub(cpu_off)).as_secs_f64() * 1e6 / n as f64,
        cpu_on.as_secs_f64() / cpu_off.as_secs_f64().max(1e-9),
        n as f64 / wall.as_secs_f64(),
    );
    sink.shutdown().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nodes: Vec<usize> =
        args.first().map_or("10,100,1000", String::as_str).split(',').filter_map(|n| n.parse().ok()).collect();
    let events: usize = args.get(1).and_then(|e| e.parse().ok()).unwrap_or(20_000);
    let rate: usize = args.get(2).and_then(|e| e.parse().ok()).unwrap_or(0);
    if rate == 0 {
        sink_cost(events).await;
    }
    for n in nodes {
        scenario(n, events, rate).await;
    }
}
