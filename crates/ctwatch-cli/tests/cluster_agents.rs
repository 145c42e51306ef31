//! The cluster end to end: real `ctwatch serve` agents publishing their
//! journals into a real nats-server (started here) with `--nats-url`, and
//! `ctwatch cluster` reading it back: three nodes on this machine (each on a
//! cgroup subtree of its own; one sees the real docker containers), nats-server
//! SIGKILLed mid-churn, an agent SIGKILLed mid-publish, NATS unreachable at
//! start, a node stopped for good going stale.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::serve::{free_port, metric, scrape, Serve};
use common::*;
use ctwatch_nats::testing::NatsServer;
use ctwatch_nats::{Cluster, ClusterFilter, NatsOptions, Since};
use futures_util::StreamExt;
use serde_json::Value;

/// One event as (journal seq, kind, container ID).
type Ev = (u64, String, String);

/// An agent standing for one node.
struct Node {
    name: String,
    serve: Serve,
    metrics: String,
    args: Vec<String>,
    /// The socket's and journal's directory once the first process is gone (kept for restarts).
    dir: Option<tempfile::TempDir>,
}

impl Node {
    /// `ctwatch serve` as node `name`, following `root`, publishing to `url`.
    fn start(name: &str, root: &Path, url: &str, extra: &[&str]) -> Node {
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = [
            "--cgroup-root",
            root.to_str().unwrap(),
            "--nats-url",
            url,
            "--node-name",
            name,
            "--nats-heartbeat-interval",
            "250ms",
            "--metrics-addr",
            &metrics,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let serve = Serve::start(&refs);
        Node { name: name.to_string(), serve, metrics, args, dir: None }
    }

    /// SIGKILLs it and starts it again on the same socket and journal.
    fn kill_and_restart(&mut self) {
        if self.dir.is_none() {
            self.dir = self.serve.take_dir();
        }
        let text = scrape(&self.metrics);
        let backlog = metric(&text, "ctwatch_nats_backlog ").unwrap_or(-1.0);
        eprintln!("{}: SIGKILL with a NATS backlog of {backlog}", self.name);
        self.serve.kill();
        let refs: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.serve = Serve::start_at(&self.serve.socket.clone(), &refs);
    }

    fn metric(&self, name: &str) -> f64 {
        metric(&scrape(&self.metrics), &format!("{name} ")).unwrap_or_else(|| panic!("{name} on {}", self.name))
    }

    /// Waits until `name`'s value passes `ok`; returns it.
    fn wait_metric(&self, name: &str, within: Duration, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let v = self.metric(name);
            if ok(v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{}: {what}: {name} is {v} after {within:?}", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until NATS acked everything the journal holds, and it stays so
    /// for a moment (no event on its way); the last seq.
    fn wait_all_acked(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        let mut settled = 0;
        loop {
            let text = scrape(&self.metrics);
            let newest = metric(&text, "ctwatch_journal_newest_seq ").unwrap_or(-1.0);
            let acked = metric(&text, "ctwatch_nats_acked_seq ").unwrap_or(-2.0);
            let backlog = metric(&text, "ctwatch_nats_backlog ").unwrap_or(-1.0);
            if newest == acked && backlog == 0.0 {
                settled += 1;
                if settled == 10 {
                    return acked as u64;
                }
            } else {
                settled = 0;
            }
            assert!(
                Instant::now() < deadline,
                "{}: NATS acked {acked} of {newest} (backlog {backlog}) after {within:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The container IDs its own `ls` shows.
    fn ls(&self) -> BTreeSet<String> {
        let out = Command::new(ctwatch_bin())
            .args(["ls", "-o", "json", "--socket"])
            .arg(&self.serve.socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "ls on {}: {out:?}", self.name);
        json_lines(&out.stdout).iter().map(|v| v["container_id"].as_str().unwrap().to_string()).collect()
    }

    /// Every event its journal holds up to `until`, from its own `watch --since 0`.
    fn journal(&self, until: u64) -> Vec<Ev> {
        let out = Command::new(ctwatch_bin())
            .args(["watch", "--since", "0", "--until", &until.to_string(), "--socket"])
            .arg(&self.serve.socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "watch --since 0 on {}: {out:?}", self.name);
        json_lines(&out.stdout).iter().map(event_of).collect()
    }
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn event_of(v: &Value) -> Ev {
    (
        v["seq"].as_u64().expect("a seq"),
        v["event"].as_str().expect("an event kind").to_string(),
        v["args"]["container_id"].as_str().unwrap_or_default().to_string(),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Every event of `node` in the stream, through a JetStream consumer, read
/// until journal seq `last` and then until nothing more comes for a moment.
fn stream_of(url: &str, node: &str, last: u64) -> Vec<Ev> {
    runtime().block_on(async {
        let cluster = Cluster::connect(&NatsOptions::new([url]), Duration::from_secs(30)).await.unwrap();
        let filter = ClusterFilter { node: Some(node.to_string()), ..Default::default() };
        let mut events = cluster.watch(Since::All, filter).await.unwrap();
        let mut out: Vec<Ev> = Vec::new();
        loop {
            let reached = out.iter().any(|e| e.0 >= last);
            let wait = if reached { Duration::from_millis(1500) } else { Duration::from_secs(30) };
            match tokio::time::timeout(wait, events.next()).await {
                Ok(Some(e)) => {
                    let e = e.unwrap();
                    let mut ev = event_of(&e.payload);
                    assert_eq!(Some(ev.0), e.journal_seq, "the Ctwatch-Seq header is the event's seq");
                    ev.1 = e.kind;
                    out.push(ev);
                }
                Ok(None) => panic!("the stream ended"),
                Err(_) if reached => return out,
                Err(_) => panic!("{node}: the stream has {} events, none with seq {last}", out.len()),
            }
        }
    })
}

/// The stream holds the journal, each event once, in order.
fn assert_stream_is_the_journal(stream: &[Ev], journal: &[Ev], node: &str) {
    let seqs: Vec<u64> = stream.iter().map(|e| e.0).collect();
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "{node}: {} events repeated in the stream", seqs.len() - unique.len());
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{node}: the stream is in journal order");
    if stream != journal {
        let s: BTreeSet<&Ev> = stream.iter().collect();
        let j: BTreeSet<&Ev> = journal.iter().collect();
        let missing: Vec<_> = j.difference(&s).take(5).collect();
        let extra: Vec<_> = s.difference(&j).take(5).collect();
        panic!(
            "{node}: the stream ({}) is not the journal ({}): missing {missing:?}, extra {extra:?}",
            stream.len(),
            journal.len()
        );
    }
}

/// (kind, container ID) → times seen.
fn counts(events: &[Ev]) -> HashMap<(String, String), usize> {
    let mut m = HashMap::new();
    for (_, kind, id) in events {
        *m.entry((kind.clone(), id.clone())).or_insert(0) += 1;
    }
    m
}

fn assert_each_once(events: &[Ev], ids: &[String], what: &str) {
    let c = counts(events);
    for id in ids {
        let n = |k: &str| c.get(&(k.to_string(), id.clone())).copied().unwrap_or(0);
        assert!(
            n("container_create") == 1 && n("container_remove") == 1,
            "{what}: {id}: {} creates, {} removes (one each wanted)",
            n("container_create"),
            n("container_remove")
        );
    }
}

/// `ctwatch cluster <args> --nats-url <url>`: stdout.
fn cluster(url: &str, args: &[&str]) -> String {
    let out = Command::new(ctwatch_bin())
        .arg("cluster")
        .args(args)
        .args(["--nats-url", url])
        .env_remove("CTWATCH_NATS_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "cluster {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cluster ls -o json`: (node, container ID) → stale.
fn cluster_ls(url: &str, stale_after: &str) -> HashMap<(String, String), bool> {
    json_lines(cluster(url, &["ls", "-o", "json", "--stale-after", stale_after]).as_bytes())
        .iter()
        .map(|v| {
            let key = (v["node"].as_str().unwrap().to_string(), v["container_id"].as_str().unwrap().to_string());
            (key, v["stale"].as_bool().unwrap())
        })
        .collect()
}

/// A fresh cgroup subtree of the default hierarchy for one node.
fn subtree(tree: &mut CgroupTree, tag: &str) -> PathBuf {
    tree.mkdir_p(&default_hierarchy(), &unique(tag))
}

/// `n` docker-layout container cgroups under `parent`, made and removed at once.
fn churn(parent: &Path, tag: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| hex_id(&format!("{tag}-{i}"))).collect();
    let mut tree = CgroupTree::new();
    for id in &ids {
        let dir = tree.mkdir_p(parent, &format!("docker/{id}"));
        tree.rmdir(&dir);
    }
    ids
}

/// A docker container of the local busybox image, removed when dropped.
struct Docker(String);

impl Docker {
    fn run(name: &str) -> Docker {
        let out = Command::new("docker")
            .args(["run", "-d", "--name", name, "local/busybox:1", "sleep", "600"])
            .output()
            .expect("docker");
        assert!(out.status.success(), "docker run: {out:?}");
        Docker(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn remove(&self) {
        let out = Command::new("docker").args(["rm", "-f", &self.0]).output().expect("docker");
        assert!(out.status.success(), "docker rm: {out:?}");
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

#[test]
fn three_agents_cluster_ls_is_the_union_watch_sees_every_event_and_a_stopped_node_goes_stale() {
    require_root();
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::start(store.path()).unwrap();
    let url = server.url();
    let mut tree = CgroupTree::new();
    // Node c follows docker's cgroups: the real docker containers (one made before it starts).
    let tag = unique("cluster3");
    let d1 = Docker::run(&format!("{tag}-d1"));
    let docker_root = default_hierarchy().join("docker");
    let roots = [subtree(&mut tree, "cluster-a"), subtree(&mut tree, "cluster-b")];
    let a = Node::start("node-a", &roots[0], &url, &["--no-enrich"]);
    let mut b = Node::start("node-b", &roots[1], &url, &["--no-enrich"]);
    let c = Node::start("node-c", &docker_root, &url, &[]);
    let nodes = [&a, &b, &c];

    // Churn: on a and b, 12 containers made, 6 of them removed; on c, a second docker container, and d1 removed.
    let mut expected: Vec<(String, String, String)> = Vec::new(); // (node, kind, id)
    let mut live_ids: Vec<(String, String)> = Vec::new();
    for (node, root) in [(&a, &roots[0]), (&b, &roots[1])] {
        for i in 0..12 {
            let id = hex_id(&format!("{tag}-{}-{i}", node.name));
            let dir = tree.mkdir_p(root, &format!("docker/{id}"));
            expected.push((node.name.clone(), "container_create".into(), id.clone()));
            if i % 2 == 0 {
                tree.rmdir(&dir);
                expected.push((node.name.clone(), "container_remove".into(), id));
            } else {
                live_ids.push((node.name.clone(), id));
            }
        }
    }
    let d2 = Docker::run(&format!("{tag}-d2"));
    d1.remove();
    expected.push(("node-c".into(), "existing_container".into(), d1.0.clone()));
    expected.push(("node-c".into(), "container_remove".into(), d1.0.clone()));
    expected.push(("node-c".into(), "container_create".into(), d2.0.clone()));
    live_ids.push(("node-c".into(), d2.0.clone()));

    // cluster ls equals the union of the three agents' ls (other tests' docker
    // containers may come and go on node c meanwhile: compare until they agree).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let union: BTreeSet<(String, String)> =
            nodes.iter().flat_map(|n| n.ls().into_iter().map(|id| (n.name.clone(), id))).collect();
        let listed: BTreeSet<(String, String)> = cluster_ls(&url, "30s").into_keys().collect();
        let ours = live_ids.iter().all(|k| listed.contains(k));
        if union == listed && ours {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cluster ls is not the union of the agents' ls: only in the agents' {:?}, only in cluster's {:?}; ours all \
             listed: {ours}",
            union.difference(&listed).collect::<Vec<_>>(),
            listed.difference(&union).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The docker container's record is the one `get` shows (enriched: its name and image).
    let got: Value = serde_json::from_str(&cluster(&url, &["get", &d2.0])).unwrap();
    assert_eq!(got["container_name"], format!("{tag}-d2"));
    assert_eq!(got["container_image"], "local/busybox:1");
    assert_eq!(got["node"], "node-c");

    // cluster watch --since all: every create and remove of every node.
    let mut child = Command::new(ctwatch_bin())
        .args(["cluster", "watch", "--since", "all", "--nats-url", &url])
        .env_remove("CTWATCH_NATS_URL")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: HashMap<(String, String, String), usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !expected.iter().all(|e| seen.contains_key(e)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let missing: Vec<_> = expected.iter().filter(|e| !seen.contains_key(e)).collect();
            panic!("cluster watch --since all did not show {missing:?}");
        };
        let v: Value = serde_json::from_str(&line).unwrap();
        let key = (
            v["node"].as_str().unwrap().to_string(),
            v["event"].as_str().unwrap().to_string(),
            v["args"]["container_id"].as_str().unwrap_or_default().to_string(),
        );
        *seen.entry(key).or_default() += 1;
    }
    let _ = child.kill();
    let _ = child.wait();
    for e in &expected {
        assert_eq!(seen[e], 1, "{e:?} once");
    }

    // Node b stops for good: after the TTL its containers are stale, the others' not.
    assert!(b.serve.stop().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = cluster_ls(&url, "3s");
        let b_ids: Vec<bool> = listed.iter().filter(|((n, _), _)| n == "node-b").map(|(_, s)| *s).collect();
        assert_eq!(b_ids.len(), 6, "node b's live containers stay listed");
        if b_ids.iter().all(|s| *s) {
            for ((node, id), stale) in &listed {
                assert_eq!(*stale, node == "node-b", "{node} {id}: only the stopped node's containers are stale");
            }
            break;
        }
        assert!(Instant::now() < deadline, "node b's containers are not stale 30 s after it stopped");
        std::thread::sleep(Duration::from_millis(250));
    }
    let table = cluster(&url, &["ls", "--stale-after", "3s", "--node", "node-b"]);
    assert_eq!(table.lines().filter(|l| l.starts_with("node-b") && l.ends_with("stale")).count(), 6, "{table}");
    let nodes_json = json_lines(cluster(&url, &["nodes", "-o", "json", "--stale-after", "3s"]).as_bytes());
    let states: Vec<(&str, bool)> =
        nodes_json.iter().map(|n| (n["node"].as_str().unwrap(), n["stale"].as_bool().unwrap())).collect();
    assert_eq!(states, [("node-a", false), ("node-b", true), ("node-c", false)]);
}

#[test]
fn nats_server_sigkilled_mid_churn_every_create_and_remove_once() {
    require_root();
    let store = tempfile::tempdir().unwrap();
    let mut server = NatsServer::start(store.path()).unwrap();
    let url = server.url();
    let mut tree = CgroupTree::new();
    let root = subtree(&mut tree, "cluster-natskill");
    let node = Node::start("churner", &root, &url, &["--no-enrich"]);
    let tag = unique("natskill");
    let churner = {
        let root = root.clone();
        let tag = tag.clone();
        std::thread::spawn(move || churn(&root, &tag, 2000))
    };
    // Killed once NATS has acked some and while the churn goes on.
    let acked_at_kill =
        node.wait_metric("ctwatch_nats_acked_seq", Duration::from_secs(60), "some acked", |v| v >= 300.0);
    server.kill();
    let down_at = Instant::now();
    node.wait_metric("ctwatch_nats_connected", Duration::from_secs(30), "the outage seen", |v| v == 0.0);
    std::thread::sleep(Duration::from_millis(300).saturating_sub(down_at.elapsed()));
    server.restart().unwrap();
    let ids = churner.join().unwrap();
    let last = node.wait_all_acked(Duration::from_secs(120));
    assert!((acked_at_kill as u64) < last, "the kill came mid-publish ({acked_at_kill} of {last} acked)");
    assert!(node.metric("ctwatch_nats_failures_total") >= 1.0, "the sink saw the outage");
    assert!(node.metric("ctwatch_nats_sessions_total") >= 2.0, "and resumed");
    let journal = node.journal(last);
    assert_each_once(&journal, &ids, "the journal");
    let stream = stream_of(&url, "churner", last);
    assert_stream_is_the_journal(&stream, &journal, "churner");
    assert_each_once(&stream, &ids, "the stream");
    // Every container was removed: none left in the bucket.
    let listed = cluster_ls(&url, "30s");
    assert!(listed.is_empty(), "{} containers left in the bucket", listed.len());
}

#[test]
fn agent_sigkilled_mid_publish_and_restarted_every_event_once() {
    require_root();
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::start(store.path()).unwrap();
    let url = server.url();
    let mut tree = CgroupTree::new();
    let root = subtree(&mut tree, "cluster-agentkill");
    let mut node = Node::start("restarter", &root, &url, &["--no-enrich"]);
    let tag = unique("agentkill");
    let before = churn(&root, &format!("{tag}-a"), 300);
    // Some published, not all: kill it mid-publish.
    node.wait_metric("ctwatch_nats_acked_seq", Duration::from_secs(60), "some acked", |v| v >= 1.0);
    let churner = {
        let root = root.clone();
        let tag = format!("{tag}-b");
        std::thread::spawn(move || churn(&root, &tag, 300))
    };
    node.wait_metric("ctwatch_nats_acked_seq", Duration::from_secs(60), "more acked", |v| v >= 650.0);
    node.kill_and_restart();
    let during = churner.join().unwrap();
    let after = churn(&root, &format!("{tag}-c"), 100);
    let last = node.wait_all_acked(Duration::from_secs(120));
    let journal = node.journal(last);
    let stream = stream_of(&url, "restarter", last);
    assert_stream_is_the_journal(&stream, &journal, "restarter");
    assert_each_once(&stream, &before, "containers churned before the kill");
    assert_each_once(&stream, &after, "containers churned after the restart");
    // Those churned around the kill: at most once each (some may have come and gone while no agent ran).
    let c = counts(&stream);
    for id in &during {
        for kind in ["container_create", "container_remove"] {
            assert!(c.get(&(kind.to_string(), id.clone())).copied().unwrap_or(0) <= 1, "{kind} {id} repeated");
        }
    }
}

#[test]
fn nats_unreachable_at_start_local_work_goes_on_and_the_backlog_arrives() {
    require_root();
    let store = tempfile::tempdir().unwrap();
    let mut server = NatsServer::not_started(store.path()).unwrap();
    let url = server.url();
    let mut tree = CgroupTree::new();
    let root = subtree(&mut tree, "cluster-unreachable");
    let node = Node::start("offline", &root, &url, &["--no-enrich"]);
    let tag = unique("unreachable");
    let mut live = BTreeSet::new();
    let mut gone = Vec::new();
    for i in 0..30 {
        let id = hex_id(&format!("{tag}-{i}"));
        let dir = tree.mkdir_p(&root, &format!("docker/{id}"));
        if i % 3 == 0 {
            tree.rmdir(&dir);
            gone.push(id);
        } else {
            live.insert(id);
        }
    }
    // Local work goes on: the agent's own ls has them, and the backlog shows what waits.
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.ls() != live {
        assert!(Instant::now() < deadline, "the agent's ls: {:?}", node.ls());
        std::thread::sleep(Duration::from_millis(100));
    }
    node.wait_metric("ctwatch_nats_backlog", Duration::from_secs(30), "a backlog", |v| v >= 40.0);
    assert_eq!(node.metric("ctwatch_nats_connected"), 0.0);
    assert_eq!(node.metric("ctwatch_nats_acked_seq"), 0.0);
    // NATS comes up: the backlog arrives, in order, once.
    server.restart().unwrap();
    let last = node.wait_all_acked(Duration::from_secs(60));
    let journal = node.journal(last);
    let stream = stream_of(&url, "offline", last);
    assert_stream_is_the_journal(&stream, &journal, "offline");
    assert_each_once(&stream, &gone, "the removed containers");
    let listed: BTreeSet<String> = cluster_ls(&url, "30s").into_keys().map(|(_, id)| id).collect();
    assert_eq!(listed, live, "the bucket holds the live containers");
}

#[test]
fn at_start_the_bucket_is_reconciled_with_the_live_containers() {
    require_root();
    let store = tempfile::tempdir().unwrap();
    let server = NatsServer::start(store.path()).unwrap();
    let url = server.url();
    let mut tree = CgroupTree::new();
    let root = subtree(&mut tree, "cluster-reconcile");
    let journals = tempfile::tempdir().unwrap();
    let first = journals.path().join("first");
    let mut node = Node::start("reconciled", &root, &url, &["--no-enrich", "--journal", first.to_str().unwrap()]);
    let tag = unique("reconcile");
    let ids: Vec<String> = (0..3).map(|i| hex_id(&format!("{tag}-{i}"))).collect();
    let dirs: Vec<PathBuf> = ids.iter().map(|id| tree.mkdir_p(&root, &format!("docker/{id}"))).collect();
    node.wait_all_acked(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster_ls(&url, "30s").len() != 3 {
        assert!(Instant::now() < deadline, "the 3 containers never reached the bucket");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Stopped; one container goes meanwhile; started again on a new journal,
    // which knows nothing of it: the bucket is set to what runs.
    assert!(node.serve.stop().success());
    tree.rmdir(&dirs[0]);
    let second = journals.path().join("second");
    let node = Node::start("reconciled", &root, &url, &["--no-enrich", "--journal", second.to_str().unwrap()]);
    node.wait_metric("ctwatch_nats_reconciles_total", Duration::from_secs(30), "a reconciliation", |v| v >= 1.0);
    let listed: BTreeSet<String> = cluster_ls(&url, "30s").into_keys().map(|(_, id)| id).collect();
    assert_eq!(listed, ids[1..].iter().cloned().collect::<BTreeSet<_>>());
    assert!(node.metric("ctwatch_nats_kv_deletes_total") >= 1.0);
}

#[test]
fn serve_refuses_nats_flags_it_cannot_honour_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let serve = |args: &[&str]| {
        let out = Command::new(ctwatch_bin())
            .args(["serve", "--no-pin", "--hook", "off", "--socket"])
            .arg(&socket)
            .args(args)
            .env_remove("CTWATCH_NATS_URL")
            .env_remove("CTWATCH_NATS_PASSWORD")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for (args, says) in [
        (&["--nats-url", "nats://127.0.0.1:4222", "--no-journal"][..], "drop --no-journal"),
        (&["--nats-url", "nats://127.0.0.1:4222", "--nats-creds", "/nonexistent/ctwatch.creds"][..], "--nats-creds"),
        (&["--nats-url", "nats://127.0.0.1:4222", "--nats-tls-ca", "/nonexistent/ca.pem"][..], "--nats-tls-ca"),
        (&["--nats-url", "nats://127.0.0.1:4222", "--nats-user", "agent"][..], "password"),
        (&["--nats-url", "nats://127.0.0.1:4222", "--node-name", &"x".repeat(300)][..], "--node-name"),
        (&["--nats-url", "nats://bad host:1"][..], "--nats-url"),
        (&["--nats-creds", "/etc/hostname"][..], "give --nats-url too"),
    ] {
        let (code, err) = serve(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says) && err.lines().count() == 1, "{args:?}: {err}");
    }
    assert!(!socket.exists(), "nothing was started");
}
