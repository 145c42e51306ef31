//! `ctwatch cluster` (the binary) against a real nats-server (started here),
//! with three simulated nodes publishing through the NATS sink.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ctwatch_nats::testing::NatsServer;
use ctwatch_nats::{MemoryOutbox, NatsOptions, NatsSink, SinkConfig};
use serde_json::{json, Value};

fn ctwatch(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ctwatch"))
        .arg("cluster")
        .args(args)
        .args(["--nats-url", url])
        .env_remove("CTWATCH_NATS_URL")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_ls_is_the_union_with_a_node_column_and_watch_replays() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path()).unwrap();
    let url = server.url();
    let mut sinks = Vec::new();
    let mut want = BTreeSet::new();
    for (n, node) in ["node-a", "node-b", "node-c"].iter().enumerate() {
        let outbox = Arc::new(MemoryOutbox::new(format!("journal-{node}"), 1000));
        for i in 0..4 {
            let id = format!("{n}{i}{}", "f".repeat(62));
            let runtime = if i % 2 == 0 { "docker" } else { "podman" };
            let record = json!({"container_id": id, "container_name": format!("{node}-web-{i}"), "runtime": runtime,
                "container_image": "local/busybox:1", "labels": {"tier": "web"}});
            let event = json!({"event": "container_create", "args": record});
            outbox.append(
                "container_create",
                &id,
                Bytes::from(event.to_string()),
                Some(Bytes::from(record.to_string())),
            );
            if i == 3 {
                let gone = json!({"event": "container_remove", "args": {"container_id": id, "runtime": runtime}});
                outbox.append("container_remove", &id, Bytes::from(gone.to_string()), None);
            } else {
                want.insert((node.to_string(), id));
            }
        }
        let mut config = SinkConfig::new(*node, NatsOptions::new([url.clone()]));
        config.heartbeat_interval = Duration::from_millis(200);
        config.agent_version = "test".into();
        let sink = NatsSink::spawn(config, outbox).unwrap();
        sinks.push(sink);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while sinks.iter().any(|s| s.stats().acked() < 5) {
        assert!(Instant::now() < deadline, "the sinks did not publish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A heartbeat written after the acks.
    let beats: Vec<u64> = sinks.iter().map(|s| s.stats().heartbeats()).collect();
    while sinks.iter().zip(&beats).any(|(s, b)| s.stats().heartbeats() <= *b) {
        assert!(Instant::now() < deadline, "no heartbeat");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // ls --format json: the union of the three nodes' live containers.
    let (code, out, err) = ctwatch(&url, &["ls", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let got: BTreeSet<(String, String)> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["node"].as_str().unwrap().to_string(), v["container_id"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(got, want);
    // The table has a NODE column, one row per container.
    let (code, table, err) = ctwatch(&url, &["ls"]);
    assert_eq!(code, 0, "{err}");
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("NODE  "), "{table}");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 9, "{table}");
    assert!(rows.iter().all(|r| r.starts_with("node-") && r.ends_with("live")), "{table}");
    // --node and --filter (the CLI's filter rules).
    let (_, out, _) = ctwatch(&url, &["ls", "--node", "node-b", "-f", "runtime=docker", "-o", "json"]);
    let names: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["container_name"].as_str().unwrap().into())
        .collect();
    assert_eq!(names, ["node-b-web-0", "node-b-web-2"]);
    // get by name, and a name that is nowhere (exit status 1).
    let (code, out, _) = ctwatch(&url, &["get", "node-c-web-1"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["node"].as_str(), v["stale"].as_bool()), (Some("node-c"), Some(false)));
    assert_eq!(ctwatch(&url, &["get", "node-c-web-3"]).0, 1, "removed");
    // nodes.
    let (code, out, _) = ctwatch(&url, &["nodes", "-o", "json"]);
    assert_eq!(code, 0);
    let nodes: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n["containers"] == 3 && n["stale"] == false && n["heartbeat"]["acked_seq"] == 5));

    // watch --since all replays every event (15), then waits for more.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ctwatch"))
        .args(["cluster", "watch", "--since", "all", "--nats-url", &url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<Value> = tokio::task::spawn_blocking({
        let stdout = child.stdout.take().unwrap();
        move || BufReader::new(stdout).lines().take(15).map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect()
    })
    .await
    .unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(lines.len(), 15);
    let stream_seqs: Vec<u64> = lines.iter().map(|v| v["stream_seq"].as_u64().unwrap()).collect();
    assert!(stream_seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(lines.iter().filter(|v| v["event"] == "container_remove").count(), 3);
    // ... and from a stream sequence on, with a filter.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ctwatch"))
        .args(["cluster", "watch", "--since", &stream_seqs[4].to_string(), "-f", "event=remove", "--nats-url", &url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let first: Value = tokio::task::spawn_blocking({
        let stdout = child.stdout.take().unwrap();
        move || serde_json::from_str(&BufReader::new(stdout).lines().next().unwrap().unwrap()).unwrap()
    })
    .await
    .unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(first["event"], "container_remove");
    assert!(first["stream_seq"].as_u64().unwrap() > stream_seqs[4]);
    for s in sinks {
        s.shutdown().await;
    }
    // NATS unreachable: one line, exit status 2.
    drop(server);
    let (code, _, err) = ctwatch(&url, &["ls"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("ctwatch: cannot connect to NATS") && err.lines().count() == 1, "{err}");
}
