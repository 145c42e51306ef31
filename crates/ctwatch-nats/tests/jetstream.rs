//! The sink and the cluster view against a real nats-server (started here).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use bytes::Bytes;
use ctwatch_nats::testing::NatsServer;
use ctwatch_nats::{Cluster, ClusterFilter, MemoryOutbox, NatsOptions, NatsSink, Outbox, Since, SinkConfig};
use futures_util::StreamExt;
use serde_json::json;

fn config(node: &str, url: &str) -> SinkConfig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let mut c = SinkConfig::new(node, NatsOptions::new([url]));
    c.heartbeat_interval = Duration::from_millis(200);
    c.ack_timeout = Duration::from_secs(2);
    c.max_backoff = Duration::from_millis(500);
    c.agent_version = "test".into();
    c
}

fn id(i: usize) -> String {
    format!("{i:04x}{}", "c".repeat(60))
}

/// Appends a create (with its record) for container `i`.
fn create(o: &MemoryOutbox, node: &str, i: usize) -> u64 {
    let payload =
        json!({"event": "container_create", "args": {"container_id": id(i), "container_name": format!("{node}-c{i}")}});
    let record = json!({"container_id": id(i), "container_name": format!("{node}-c{i}"), "runtime": "docker"});
    o.append("container_create", &id(i), Bytes::from(payload.to_string()), Some(Bytes::from(record.to_string())))
}

fn remove(o: &MemoryOutbox, i: usize) -> u64 {
    let payload = json!({"event": "container_remove", "args": {"container_id": id(i)}});
    o.append("container_remove", &id(i), Bytes::from(payload.to_string()), None)
}

async fn wait_acked(sink: &NatsSink, seq: u64, within: Duration) {
    let stats = sink.stats();
    let deadline = Instant::now() + within;
    while stats.acked() < seq {
        assert!(
            Instant::now() < deadline,
            "acked {} of {seq} after {within:?} (errors {}, sessions {})",
            stats.acked(),
            stats.errors(),
            stats.sessions()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every message of the stream, as (node subject token, journal seq), via a consumer of `ctwatch.events.>`.
async fn consume_all(url: &str) -> Vec<(String, u64)> {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.get_stream("CTWATCH_EVENTS").await.unwrap();
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: "ctwatch.events.>".into(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let total = consumer.cached_info().num_pending;
    if total == 0 {
        return out;
    }
    let mut messages = consumer.messages().await.unwrap();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await.unwrap() {
        let m = m.unwrap();
        let node = m.subject.split('.').nth(2).unwrap().to_string();
        let seq: u64 = m.headers.as_ref().unwrap().get("Ctwatch-Seq").unwrap().as_str().parse().unwrap();
        let msg_id = m.headers.as_ref().unwrap().get(async_nats::header::NATS_MESSAGE_ID).unwrap().as_str().to_string();
        assert!(msg_id.starts_with(&format!("{node}.")) && msg_id.ends_with(&format!(".{seq}")), "{msg_id}");
        out.push((node, seq));
        if m.info().unwrap().pending == 0 {
            break;
        }
    }
    out
}

/// Each node's seqs must be exactly 1..=n, once each and in order.
fn assert_exactly_once_in_order(got: &[(String, u64)], expect: &HashMap<&str, u64>) {
    let mut per_node: HashMap<&str, Vec<u64>> = HashMap::new();
    for (node, seq) in got {
        per_node.entry(node.as_str()).or_default().push(*seq);
    }
    for (node, n) in expect {
        let seqs = per_node.remove(node).unwrap_or_default();
        let want: Vec<u64> = (1..=*n).collect();
        if seqs != want {
            let dups = seqs.len() - seqs.iter().collect::<BTreeSet<_>>().len();
            let inversions = seqs.windows(2).filter(|w| w[0] >= w[1]).count();
            panic!("node {node}: {} messages for {n} records ({dups} repeated, {inversions} out of order)", seqs.len());
        }
    }
    assert!(per_node.is_empty(), "unexpected nodes {:?}", per_node.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_once_in_order_and_the_bucket_holds_the_live_containers() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path()).unwrap();
    let outbox = Arc::new(MemoryOutbox::new("journal-a", 10_000));
    for i in 0..100 {
        create(&outbox, "n1", i);
    }
    for i in 0..40 {
        remove(&outbox, i);
    }
    let sink = NatsSink::spawn(config("n1", &server.url()), outbox.clone()).unwrap();
    // More while it runs: 20 more creates and the removal of one of them.
    for i in 100..120 {
        create(&outbox, "n1", i);
    }
    let last = remove(&outbox, 110);
    wait_acked(&sink, last, Duration::from_secs(30)).await;
    assert_eq!(sink.stats().backlog(), 0);
    let got = consume_all(&server.url()).await;
    assert_exactly_once_in_order(&got, &HashMap::from([("n1", last)]));

    let cluster = Cluster::connect(&NatsOptions::new([server.url()]), Duration::from_secs(30)).await.unwrap();
    // The heartbeat comes within one interval.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let live: BTreeSet<String> =
        cluster.ls(&ClusterFilter::default()).await.unwrap().iter().map(|c| c.id().to_string()).collect();
    let want: BTreeSet<String> = (40..120).filter(|i| *i != 110).map(id).collect();
    assert_eq!(live, want, "the bucket holds the live containers and no removed one");
    let nodes = cluster.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].node, "n1");
    assert!(!nodes[0].stale);
    assert_eq!(nodes[0].containers, 79);
    assert_eq!(nodes[0].heartbeat.as_ref().unwrap().acked_seq, last);
    let found = cluster.get(&id(50)[..6]).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name(), "n1-c50");
    assert_eq!(cluster.get("n1-c51").await.unwrap()[0].id(), id(51));
    assert!(cluster.get("n1-c10").await.unwrap().is_empty(), "removed");
    sink.shutdown().await;
    assert_eq!(outbox.acked(), last, "the acked cursor is kept in the outbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_and_restarted_mid_publish_every_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = NatsServer::start(dir.path()).unwrap();
    let outbox = Arc::new(MemoryOutbox::new("journal-b", 10_000));
    let sink = NatsSink::spawn(config("n1", &server.url()), outbox.clone()).unwrap();
    let writer = {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            // 1,000 containers created and removed: 2,000 records, in bursts.
            for i in 0..1000 {
                create(&outbox, "n1", i);
                remove(&outbox, i);
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };
    // Kill it while records are in flight.
    let stats = sink.stats();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.acked() < 300 {
        assert!(
            Instant::now() < deadline,
            "acked {} of 300 (errors {}, sessions {})",
            stats.acked(),
            stats.errors(),
            stats.sessions()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.kill();
    let acked_at_kill = stats.acked();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart().unwrap();
    writer.await.unwrap();
    wait_acked(&sink, 2000, Duration::from_secs(60)).await;
    assert!(acked_at_kill < 2000, "the kill came mid-publish");
    assert!(stats.errors() >= 1 && stats.sessions() >= 2, "the sink saw the outage and resumed");
    let got = consume_all(&server.url()).await;
    assert_exactly_once_in_order(&got, &HashMap::from([("n1", 2000)]));
    let cluster = Cluster::connect(&NatsOptions::new([server.url()]), Duration::from_secs(30)).await.unwrap();
    assert!(cluster.ls(&ClusterFilter::default()).await.unwrap().is_empty(), "every container was removed");
    sink.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_unreachable_at_start_the_backlog_arrives_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = NatsServer::not_started(dir.path()).unwrap();
    let outbox = Arc::new(MemoryOutbox::new("journal-c", 10_000));
    let sink = NatsSink::spawn(config("n1", &server.url()), outbox.clone()).unwrap();
    let mut last = 0;
    for i in 0..200 {
        last = create(&outbox, "n1", i);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = sink.stats();
    assert_eq!((stats.acked(), stats.backlog()), (0, 200), "nothing acked while NATS is down; the backlog shows it");
    assert!(stats.errors() >= 1);
    server.restart().unwrap();
    wait_acked(&sink, last, Duration::from_secs(30)).await;
    assert_eq!(stats.backlog(), 0);
    let got = consume_all(&server.url()).await;
    assert_exactly_once_in_order(&got, &HashMap::from([("n1", 200)]));
    sink.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_goes_stale_after_the_ttl_and_hostile_names_stay_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path()).unwrap();
    let hostile = "node.*> 1";
    let outbox = Arc::new(MemoryOutbox::new("journal-d", 100));
    let payload = Bytes::from_static(b"{}");
    let weird_id = "x.y>*z";
    outbox.append(
        "container_create",
        weird_id,
        payload.clone(),
        Some(Bytes::from(json!({"container_id": weird_id}).to_string())),
    );
    let last = create(&outbox, hostile, 7);
    let mut other = config("live", &server.url());
    other.heartbeat_interval = Duration::from_millis(100);
    let other_outbox = Arc::new(MemoryOutbox::new("journal-e", 100));
    create(&other_outbox, "live", 8);
    let live = NatsSink::spawn(other, other_outbox).unwrap();
    let mut c = config(hostile, &server.url());
    c.heartbeat_interval = Duration::from_millis(100);
    let sink = NatsSink::spawn(c, outbox).unwrap();
    wait_acked(&sink, last, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ttl = Duration::from_millis(1500);
    let cluster = Cluster::connect(&NatsOptions::new([server.url()]), ttl).await.unwrap();
    let ls = cluster.ls(&ClusterFilter { node: Some(hostile.into()), ..Default::default() }).await.unwrap();
    let ids: BTreeSet<&str> = ls.iter().map(|c| c.id()).collect();
    assert_eq!(ids, BTreeSet::from([weird_id, id(7).as_str()]));
    assert!(ls.iter().all(|c| c.node == hostile && !c.stale), "{ls:?}");
    sink.shutdown().await;
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    let all = cluster.ls(&ClusterFilter::default()).await.unwrap();
    assert_eq!(all.len(), 3);
    for c in &all {
        assert_eq!(c.stale, c.node == hostile, "only the stopped node is stale: {c:?}");
    }
    let nodes = cluster.nodes().await.unwrap();
    let stale: Vec<(&str, bool)> = nodes.iter().map(|n| (n.node.as_str(), n.stale)).collect();
    assert_eq!(stale, [("live", false), (hostile, true)]);
    live.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_watch_replays_from_a_stream_sequence_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path()).unwrap();
    let mut sinks = Vec::new();
    for node in ["a", "b"] {
        let outbox = Arc::new(MemoryOutbox::new(format!("j-{node}"), 100));
        for i in 0..5 {
            create(&outbox, node, i);
        }
        remove(&outbox, 0);
        let sink = NatsSink::spawn(config(node, &server.url()), outbox).unwrap();
        wait_acked(&sink, 6, Duration::from_secs(30)).await;
        sinks.push(sink);
    }
    let cluster = Cluster::connect(&NatsOptions::new([server.url()]), Duration::from_secs(30)).await.unwrap();
    let take = |events: ctwatch_nats::ClusterEvents, n| async move {
        tokio::time::timeout(Duration::from_secs(10), events.take(n).map(|e| e.unwrap()).collect::<Vec<_>>())
            .await
            .unwrap()
    };
    let all = take(cluster.watch(Since::All, ClusterFilter::default()).await.unwrap(), 12).await;
    assert_eq!(all.iter().filter(|e| e.node == "a").count(), 6);
    let seqs: Vec<u64> = all.iter().map(|e| e.stream_seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let after = take(cluster.watch(Since::After(seqs[8]), ClusterFilter::default()).await.unwrap(), 3).await;
    assert_eq!(after.iter().map(|e| e.stream_seq).collect::<Vec<_>>(), seqs[9..]);
    let removes =
        ClusterFilter { node: Some("b".into()), kinds: vec!["container_remove".into()], ..Default::default() };
    let only = take(cluster.watch(Since::All, removes).await.unwrap(), 1).await;
    assert_eq!((only[0].node.as_str(), only[0].kind.as_str(), only[0].journal_seq), ("b", "container_remove", Some(6)));
    let json = only[0].to_json();
    assert_eq!((json["node"].as_str(), json["seq"].as_u64()), (Some("b"), Some(6)));
    for s in sinks {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_is_reconciled_with_the_outboxs_live_containers_once_it_knows_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path()).unwrap();
    // A first run of the node left 3 containers in the bucket.
    let old = Arc::new(MemoryOutbox::new("journal-old", 100));
    for i in 0..3 {
        create(&old, "n1", i);
    }
    let sink = NatsSink::spawn(config("n1", &server.url()), old).unwrap();
    wait_acked(&sink, 3, Duration::from_secs(30)).await;
    sink.shutdown().await;
    // A new journal knows nothing of them; what runs now is 1 and 7.
    let outbox = Arc::new(MemoryOutbox::new("journal-new", 100));
    let last = create(&outbox, "n1", 7);
    let sink = NatsSink::spawn(config("n1", &server.url()), outbox.clone()).unwrap();
    wait_acked(&sink, last, Duration::from_secs(30)).await;
    let cluster = Cluster::connect(&NatsOptions::new([server.url()]), Duration::from_secs(30)).await.unwrap();
    let ids = |cs: Vec<ctwatch_nats::ClusterContainer>| cs.iter().map(|c| c.id().to_string()).collect::<BTreeSet<_>>();
    let before = ids(cluster.ls(&ClusterFilter::default()).await.unwrap());
    assert_eq!(before.len(), 4, "no reconciliation while the outbox does not know what runs");
    assert_eq!(sink.stats().reconciles(), 0);
    // Now it knows (the agent's scan is done): at the next heartbeat, the bucket is set to it.
    let record =
        |i: usize| Bytes::from(json!({"container_id": id(i), "container_name": format!("n1-c{i}")}).to_string());
    outbox.set_live(Some(vec![(id(1), record(1)), (id(7), record(7))]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.stats().reconciles() == 0 {
        assert!(Instant::now() < deadline, "never reconciled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = ids(cluster.ls(&ClusterFilter::default()).await.unwrap());
    assert_eq!(after, BTreeSet::from([id(1), id(7)]));
    assert_eq!(sink.stats().kv_deletes(), 2);
    sink.shutdown().await;
}
