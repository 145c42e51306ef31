//! The journal end to end: a real `ctwatch serve` numbering every event, a
//! Watch client resuming with `after_seq` across disconnects and agent
//! SIGKILLs during a synthetic cgroup churn, retention, a corrupted tail.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use common::serve::Serve;
use common::*;
use ctwatch_api::pb;
use pb::watch_response::Item;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A resuming client's view: every event with its seq, and the gaps it was told of.
#[derive(Default)]
struct Resumed {
    last_seq: u64,
    seqs: Vec<u64>,
    /// (kind, container ID) → times seen.
    seen: HashMap<(String, String), usize>,
    gaps: Vec<pb::Gap>,
    /// Containers whose remove came with `late`.
    late: HashSet<String>,
}

impl Resumed {
    fn take(&mut self, m: pb::WatchResponse) {
        match m.item {
            Some(Item::Event(e)) => {
                assert!(e.seq > self.last_seq, "seq {} after {}: not strictly increasing", e.seq, self.last_seq);
                self.last_seq = e.seq;
                self.seqs.push(e.seq);
                let id = e.container.map(|c| c.container_id).unwrap_or_default();
                if e.late {
                    assert_eq!(e.event, "container_remove", "only removes are late");
                    self.late.insert(id.clone());
                }
                *self.seen.entry((e.event, id)).or_default() += 1;
            }
            Some(Item::Gap(g)) => self.gaps.push(g),
            other => panic!("a replaying Watch sends events and gaps only: {other:?}"),
        }
    }

    fn count(&self, kind: &str, id: &str) -> usize {
        self.seen.get(&(kind.to_string(), id.to_string())).copied().unwrap_or(0)
    }

    /// Reads from `serve` after `last_seq` until `done` or `timeout` (then returns; the stream is dropped).
    fn read(
        &mut self,
        rt: &tokio::runtime::Runtime,
        serve: &Serve,
        timeout: Duration,
        done: impl Fn(&Resumed) -> bool,
    ) {
        let mut client = rt.block_on(serve.client());
        let request = pb::WatchRequest { after_seq: Some(self.last_seq), ..Default::default() };
        let mut stream = rt.block_on(client.watch(request)).expect("Watch after_seq").into_inner();
        let deadline = std::time::Instant::now() + timeout;
        while !done(self) && std::time::Instant::now() < deadline {
            match rt.block_on(async { tokio::time::timeout(Duration::from_millis(200), stream.message()).await }) {
                Ok(Ok(Some(m))) => self.take(m),
                Ok(Ok(None)) | Ok(Err(_)) => return,
                Err(_) => {}
            }
        }
    }
}

/// `n` docker-layout cgroups made and removed one after the other.
fn churn(tag: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| hex_id(&format!("{tag}-{i}"))).collect();
    let mut tree = CgroupTree::new();
    for id in &ids {
        let dir = tree.mkdir_p(&default_hierarchy(), &format!("docker/{id}"));
        tree.rmdir(&dir);
    }
    ids
}

fn all_once(r: &Resumed, ids: &[String]) -> bool {
    ids.iter().all(|id| r.count("container_create", id) == 1 && r.count("container_remove", id) == 1)
}

fn assert_all_once(r: &Resumed, ids: &[String], what: &str) {
    for id in ids {
        let (c, rm) = (r.count("container_create", id), r.count("container_remove", id));
        assert!(c == 1 && rm == 1, "{what}: {id}: {c} creates, {rm} removes (exactly one each wanted)");
    }
}

#[test]
fn a_client_resuming_from_its_last_seq_misses_nothing_and_sees_nothing_twice() {
    require_root();
    let rt = runtime();
    let serve = Serve::start(&["--no-enrich"]);
    let tag = unique("journal-resume");
    let churner = {
        let tag = tag.clone();
        std::thread::spawn(move || churn(&tag, 600))
    };
    // Disconnect and reconnect many times while the churn runs.
    let mut r = Resumed::default();
    let mut reconnects = 0;
    while !churner.is_finished() {
        r.read(&rt, &serve, Duration::from_millis(10), |_| false);
        reconnects += 1;
    }
    let ids = churner.join().unwrap();
    r.read(&rt, &serve, Duration::from_secs(30), |r| all_once(r, &ids));
    assert!(reconnects > 1, "the client reconnected mid-churn");
    assert_all_once(&r, &ids, "across reconnects");
    assert!(r.gaps.is_empty(), "no gap: {:?}", r.gaps.len());
    let unique: HashSet<u64> = r.seqs.iter().copied().collect();
    assert_eq!(unique.len(), r.seqs.len(), "no seq repeated");
}

#[test]
fn seqs_go_on_across_a_sigkill_and_a_corrupted_tail_still_serves() {
    require_root();
    let rt = runtime();
    let mut serve = Serve::start(&["--no-enrich"]);
    let dir = serve.take_dir().unwrap();
    let socket = serve.socket.clone();
    let journal: PathBuf = socket.with_extension("journal");
    let tag = unique("journal-kill");
    let mut r = Resumed::default();
    let mut all = Vec::new();
    for round in 0..3 {
        let ids = churn(&format!("{tag}-{round}"), 100);
        r.read(&rt, &serve, Duration::from_secs(30), |r| all_once(r, &ids));
        assert_all_once(&r, &ids, &format!("round {round}"));
        all.extend(ids);
        // Killed outright; after the second round, the tail of the last segment is cut
        // mid-record and garbage appended, as a torn write would leave it.
        serve.kill();
        if round == 1 {
            let mut segs: BTreeSet<PathBuf> = std::fs::read_dir(&journal)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            let last = segs.pop_last().expect("a segment");
            let len = std::fs::metadata(&last).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
            f.set_len(len - 7).unwrap();
            let mut f = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
            f.write_all(&[0xAB; 40]).unwrap();
        }
        serve = Serve::start_at(&socket, &["--no-enrich"]);
    }
    // Everything kept is replayed once from the start, in order; the events after the cut
    // record are lost (it was torn), never served corrupt.
    let mut again = Resumed::default();
    let newest = r.last_seq;
    again.read(&rt, &serve, Duration::from_secs(30), |a| a.last_seq >= newest);
    let unique: HashSet<u64> = again.seqs.iter().copied().collect();
    assert_eq!(unique.len(), again.seqs.len(), "no seq repeated in a full replay");
    let first_round: Vec<String> = all[..100].to_vec();
    assert_all_once(&again, &first_round, "full replay of round 0");
    assert!(serve.stop().success());
    drop(dir);
}

#[test]
fn resuming_from_before_the_retention_says_so_and_starts_at_the_oldest() {
    require_root();
    let rt = runtime();
    let serve = Serve::start(&["--no-enrich", "--journal-max-bytes", "65536"]);
    let tag = unique("journal-retention");
    let ids = churn(&tag, 400);
    // Wait until the last remove is journaled (a plain Watch from seq 0 replays it).
    let last = ids.last().unwrap().clone();
    let mut r = Resumed::default();
    r.read(&rt, &serve, Duration::from_secs(30), |r| r.count("container_remove", &last) == 1);
    assert_eq!(r.gaps.len(), 1, "one gap, first: the journal holds 64 KiB, 400 containers' events are more");
    let gap = &r.gaps[0];
    assert_eq!(gap.after_seq, 0);
    assert!(gap.oldest_seq > 1);
    // Retention may drop more while the replay starts (other tests' events keep coming).
    assert!(r.seqs.first().is_some_and(|&s| s >= gap.oldest_seq), "replay starts at the oldest kept");
    // ctwatch watch --since 0 says it on stderr and goes on.
    let out = std::process::Command::new(ctwatch_bin())
        .args(["watch", "--socket", serve.socket.to_str().unwrap(), "--since", "0", "--until"])
        .arg(r.last_seq.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("retention dropped them"), "{out:?}");
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert!(first["seq"].as_u64().is_some_and(|s| s >= gap.oldest_seq), "{first}");
}

#[test]
fn a_restart_reconciles_the_journal_with_the_scan() {
    require_root();
    let rt = runtime();
    let mut serve = Serve::start(&["--no-enrich"]);
    let dir = serve.take_dir().unwrap();
    let socket = serve.socket.clone();
    let tag = unique("journal-reconcile");
    let [gone, kept, new] = ["gone", "kept", "new"].map(|w| hex_id(&format!("{tag}-{w}")));
    let mut tree = CgroupTree::new();
    let gone_dir = tree.mkdir_p(&default_hierarchy(), &format!("docker/{gone}"));
    tree.mkdir_p(&default_hierarchy(), &format!("docker/{kept}"));
    let mut r = Resumed::default();
    let told = |r: &Resumed, id: &str| r.count("container_create", id) + r.count("existing_container", id);
    r.read(&rt, &serve, Duration::from_secs(30), |r| told(r, &gone) == 1 && told(r, &kept) == 1);
    assert!(told(&r, &gone) == 1 && told(&r, &kept) == 1, "both journaled before the kill");
    serve.kill();
    // While the agent is down: one goes, one comes.
    tree.rmdir(&gone_dir);
    tree.mkdir_p(&default_hierarchy(), &format!("docker/{new}"));
    let serve = Serve::start_at(&socket, &["--no-enrich"]);
    r.read(&rt, &serve, Duration::from_secs(30), |r| {
        r.count("container_remove", &gone) == 1 && r.count("existing_container", &new) == 1
    });
    // Anything still queued for `kept` would come within the same read.
    r.read(&rt, &serve, Duration::from_millis(500), |_| false);
    assert_eq!(r.count("container_remove", &gone), 1, "the vanished one is removed once");
    assert!(r.late.contains(&gone), "its remove says late");
    assert_eq!(r.count("existing_container", &new), 1, "the new one is existing_container");
    assert_eq!(told(&r, &kept), 1, "the one still running is not repeated");
    assert_eq!(r.count("container_remove", &kept), 0);
    // It is still listed.
    let mut client = rt.block_on(serve.client());
    let got = rt.block_on(client.get(pb::GetRequest { id: kept.clone() })).unwrap().into_inner();
    assert_eq!(got.container_id, kept);

    // history: the removed one's whole life, by ID prefix, through the CLI.
    let sock = serve.socket.to_str().unwrap().to_string();
    let out =
        std::process::Command::new(ctwatch_bin()).args(["history", "--socket", &sock, &gone[..20]]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let events: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(kinds[0] == "container_create" || kinds[0] == "existing_container", "{kinds:?}");
    assert_eq!(kinds[1], "container_remove");
    assert_eq!(events[1]["late"], serde_json::Value::Bool(true));
    assert!(events[0]["seq"].as_u64() < events[1]["seq"].as_u64());
    // ls --all: the removed one is listed (ls alone does not list it).
    let ls = |all: bool| {
        let mut args = vec!["ls", "--socket", &sock, "-q", "--no-trunc"];
        if all {
            args.push("--all");
        }
        let out = std::process::Command::new(ctwatch_bin()).args(&args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(!ls(false).contains(&gone));
    let all = ls(true);
    assert!(all.contains(&gone) && all.contains(&kept), "{all}");
    // An unknown one is NOT_FOUND.
    let out = std::process::Command::new(ctwatch_bin())
        .args(["history", "--socket", &sock, "no-such-container-anywhere"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    drop(serve);
    drop(tree);
    drop(dir);
}

/// Containers churned in a sliding window: each step makes one and, past
/// `WINDOW` alive, removes the oldest, so every container outlives
/// `WINDOW - 1` later steps (a kill never catches one made and removed
/// while the agent is down, the one thing a restart cannot know).
struct Window {
    tag: String,
    tree: CgroupTree,
    alive: std::collections::VecDeque<(String, PathBuf)>,
    made: Vec<String>,
}

const WINDOW: usize = 20;
/// Steps made while the agent is down: fewer than `WINDOW`, so what they make
/// is still there when the agent is back.
const DOWN_STEPS: usize = 8;

impl Window {
    fn step(&mut self, total: usize) {
        if self.made.len() < total {
            let id = hex_id(&format!("{}-{}", self.tag, self.made.len()));
            let dir = self.tree.mkdir_p(&default_hierarchy(), &format!("docker/{id}"));
            self.alive.push_back((id.clone(), dir));
            self.made.push(id);
        }
        if self.alive.len() > WINDOW || (self.made.len() >= total && !self.alive.is_empty()) {
            let (_, dir) = self.alive.pop_front().unwrap();
            self.tree.rmdir(&dir);
        }
    }

    /// The containers that will be gone once `steps` more steps are made (their
    /// creates must be journaled before the agent is killed).
    fn gone_after(&self, steps: usize) -> Vec<String> {
        let keep: HashSet<&String> = self.alive.iter().skip(steps).map(|(id, _)| id).collect();
        self.made.iter().filter(|id| !keep.contains(id)).cloned().collect()
    }
}

/// Whether the client was told of `id`'s create (or `existing_container`) and remove, at
/// least once each (exactly once is asserted after: a repeat fails there, not by a timeout).
fn told_both(r: &Resumed, id: &str) -> bool {
    r.count("container_create", id) + r.count("existing_container", id) >= 1 && r.count("container_remove", id) >= 1
}

/// `ctwatch ls -q --no-trunc` with `args`: the container IDs.
fn ls_ids(args: &[&str]) -> BTreeSet<String> {
    let out = std::process::Command::new(ctwatch_bin()).args(["ls", "-q", "--no-trunc"]).args(args).output().unwrap();
    assert!(out.status.success(), "ctwatch ls {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// A docker container from a local image, detached (`--rm`): its ID.
fn docker_run(args: &[&str]) -> String {
    let mut all = vec!["run", "-d", "--rm"];
    all.extend_from_slice(args);
    run("/usr/bin/docker", &all).trim().to_string()
}

/// Removes the docker containers it holds when dropped (even when the test fails).
struct DockerGuard(Vec<String>);

impl Drop for DockerGuard {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = output("/usr/bin/docker", &["rm", "-f", id]);
        }
    }
}

#[test]
fn a_client_resuming_across_five_sigkills_during_a_churn_gets_every_container_once() {
    require_root();
    const TOTAL: usize = 2000;
    const KILLS: usize = 5;
    let mut serve = Serve::start(&["--no-enrich"]);
    let dir = serve.take_dir().unwrap();
    let socket = serve.socket.clone();
    let wait_serving = |socket: &std::path::Path| {
        let rt = runtime();
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let asked = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), ctwatch_api::client::health(socket, "")).await
            });
            if matches!(asked, Ok(Ok(ctwatch_api::client::ServingStatus::Serving))) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the restarted agent never said SERVING: {asked:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_serving(&socket);

    // The client: watches with after_seq, and on any end or error reconnects
    // from its last seq (retrying while the agent is down).
    let resumed = std::sync::Arc::new(std::sync::Mutex::new(Resumed::default()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (resumed, stop, socket) = (resumed.clone(), stop.clone(), socket.clone());
        std::thread::spawn(move || {
            let rt = runtime();
            let mut streams = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let after = resumed.lock().unwrap().last_seq;
                let stream = rt.block_on(async {
                    let mut client = ctwatch_api::client::connect(&socket).await.ok()?;
                    let request = pb::WatchRequest { after_seq: Some(after), ..Default::default() };
                    tokio::time::timeout(Duration::from_secs(10), client.watch(request)).await.ok()?.ok()
                });
                let Some(stream) = stream else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                streams += 1;
                let mut stream = stream.into_inner();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match rt
                        .block_on(async { tokio::time::timeout(Duration::from_millis(200), stream.message()).await })
                    {
                        Ok(Ok(Some(m))) => resumed.lock().unwrap().take(m),
                        Ok(Ok(None)) | Ok(Err(_)) => break,
                        Err(_) => {}
                    }
                }
            }
            streams
        })
    };
    let wait_told = |what: &str, done: &dyn Fn(&Resumed) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !done(&resumed.lock().unwrap()) {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for the client to be told {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // The churn, in its own thread; it stops at each kill point (between steps)
    // until the agent is back.
    let tag = unique("journal-restarts");
    let window = std::sync::Arc::new(std::sync::Mutex::new(Window {
        tag,
        tree: CgroupTree::new(),
        alive: Default::default(),
        made: Vec::new(),
    }));
    let milestone = |kill: usize| TOTAL * (kill + 1) / (KILLS + 1);
    let hold_at = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(milestone(0)));
    let churner = {
        let (window, hold_at) = (window.clone(), hold_at.clone());
        std::thread::spawn(move || loop {
            let mut w = window.lock().unwrap();
            if w.made.len() >= TOTAL && w.alive.is_empty() {
                return;
            }
            if w.made.len() >= hold_at.load(std::sync::atomic::Ordering::Relaxed) && w.made.len() < TOTAL {
                drop(w);
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            w.step(TOTAL);
        })
    };

    // One container lives through every restart: listed at the end, told once.
    let kept = hex_id(&unique("journal-restarts-kept"));
    let mut kept_tree = CgroupTree::new();
    kept_tree.mkdir_p(&default_hierarchy(), &format!("docker/{kept}"));
    let mut docker_ids = Vec::new();
    let mut docker_alive: Option<String> = None;
    let mut guard = DockerGuard(Vec::new());
    // Containers made and removed while the agent was down.
    let (mut down_made, mut down_removed) = (Vec::new(), Vec::new());
    for kill in 0..KILLS {
        // Let the churn go on for a while with the agent up, with a short-lived real
        // container in it.
        docker_ids.push(docker_run(&["local/busybox:1", "true"]));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while window.lock().unwrap().made.len() < milestone(kill) {
            assert!(std::time::Instant::now() < deadline, "the churn is stuck");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut w = window.lock().unwrap();
        // What will be removed before the agent is back must have been journaled
        // alive (else no one could know it existed); anything newer may be in flight.
        let mut gone = w.gone_after(DOWN_STEPS);
        gone.extend(docker_ids.iter().cloned());
        wait_told("the creates of the containers removed while the agent is down", &|r: &Resumed| {
            gone.iter().all(|id| r.count("container_create", id) + r.count("existing_container", id) >= 1)
        });
        serve.kill();
        // While the agent is down: the oldest in the window go (late removes), new ones
        // come (existing_container); a real container goes and another comes.
        let before: HashSet<String> = w.alive.iter().map(|(id, _)| id.clone()).collect();
        for _ in 0..DOWN_STEPS {
            w.step(TOTAL);
        }
        let now: HashSet<String> = w.alive.iter().map(|(id, _)| id.clone()).collect();
        down_made.extend(now.difference(&before).cloned());
        down_removed.extend(before.difference(&now).cloned());
        if let Some(id) = docker_alive.take() {
            run("/usr/bin/docker", &["rm", "-f", &id]);
        }
        let id = docker_run(&["local/busybox:1", "sleep", "600"]);
        docker_ids.push(id.clone());
        guard.0.push(id.clone());
        docker_alive = Some(id);
        serve = Serve::start_at(&socket, &["--no-enrich"]);
        wait_serving(&socket);
        hold_at.store(milestone(kill + 1), std::sync::atomic::Ordering::Relaxed);
        drop(w);
    }
    churner.join().unwrap();
    if let Some(id) = docker_alive.take() {
        run("/usr/bin/docker", &["rm", "-f", &id]);
    }
    guard.0.clear();
    let made = window.lock().unwrap().made.clone();
    assert_eq!(made.len(), TOTAL);
    wait_told("every container's create and remove", &|r: &Resumed| {
        made.iter().chain(&docker_ids).all(|id| told_both(r, id))
    });
    // Anything repeated would come right behind.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let streams = client.join().expect("the client saw seqs strictly increasing");
    let r = resumed.lock().unwrap();
    assert!(streams > KILLS, "the client resumed after each kill ({streams} streams)");
    for id in made.iter().chain(&docker_ids) {
        let (c, e, rm) =
            (r.count("container_create", id), r.count("existing_container", id), r.count("container_remove", id));
        assert!(
            c + e == 1 && rm == 1,
            "{id}: {c} creates, {e} existing, {rm} removes (exactly one create and one remove)"
        );
    }
    assert!(r.gaps.is_empty(), "no gap: {:?}", r.gaps);
    assert!(r.seqs.windows(2).all(|w| w[0] < w[1]), "seqs strictly increasing across the run");
    // What changed while the agent was down is told as such.
    assert_eq!(down_made.len(), KILLS * DOWN_STEPS);
    for id in &down_made {
        let seen: Vec<_> = r.seen.iter().filter(|((_, i), _)| i == id).collect();
        assert_eq!(r.count("existing_container", id), 1, "{id}, made while the agent was down: {seen:?}");
    }
    for id in &down_removed {
        assert!(r.late.contains(id), "{id}, removed while the agent was down: its remove is late");
    }
    drop(r);

    // The final ls equals the host: what a scan finds before and after is listed,
    // what neither finds is not (other tests' containers come and go meanwhile).
    // (Retried a few times: a container another test makes just before a scan may not
    // have reached the agent yet.)
    let mut attempts = 0;
    let listed = loop {
        attempts += 1;
        let before = ls_ids(&["--standalone", "--no-enrich"]);
        let listed = ls_ids(&["--socket", socket.to_str().unwrap()]);
        let after = ls_ids(&["--standalone", "--no-enrich"]);
        let missing: Vec<&String> = before.intersection(&after).filter(|id| !listed.contains(*id)).collect();
        let extra: Vec<&String> = listed.iter().filter(|id| !before.contains(*id) && !after.contains(*id)).collect();
        if missing.is_empty() && extra.is_empty() {
            break listed;
        }
        assert!(attempts < 10, "ls vs the host: missing {missing:?}, extra {extra:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(made.iter().chain(&docker_ids).all(|id| !listed.contains(id)), "every churned container is gone");
    assert!(listed.contains(&kept), "the one still running is listed");
    let r = resumed.lock().unwrap();
    let told = r.count("container_create", &kept) + r.count("existing_container", &kept);
    assert_eq!(
        (told, r.count("container_remove", &kept)),
        (1, 0),
        "the one still running was told once, never removed"
    );
    drop(r);
    drop(kept_tree);
    assert!(serve.stop().success());
    drop(dir);
}

/// A tmpfs mounted on a temporary directory of the test's own, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        run("/usr/bin/mount", &["-t", "tmpfs", "-o", options, "ctwatch-test", dir.path().to_str().unwrap()]);
        Tmpfs { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn remount(&self, options: &str) {
        run("/usr/bin/mount", &["-o", &format!("remount,{options}"), self.path().to_str().unwrap()]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = self.path().to_str().unwrap().to_string();
        if !output("/usr/bin/umount", &[&path]).status.success() {
            let _ = output("/usr/bin/umount", &["-l", &path]);
        }
    }
}

/// Polls the metrics at `addr` until `metric` satisfies `want` (panics after a generous timeout).
fn wait_metric(addr: &str, metric_name: &str, want: impl Fn(f64) -> bool) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let value = metric(&scrape(addr), metric_name);
        if let Some(v) = value.filter(|v| want(*v)) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{metric_name} is {value:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lines of `serve`'s log that contain `text`.
fn logged(serve: &Serve, text: &str) -> Vec<String> {
    serve.log.lock().unwrap().iter().filter(|l| l.contains(text)).cloned().collect()
}

/// Watches live (no replay) until every one of `ids` was created and removed.
fn watch_live_until_all(
    rt: &tokio::runtime::Runtime,
    stream: &mut tonic::Streaming<pb::WatchResponse>,
    w: &mut Watched,
    ids: &[String],
) {
    rt.block_on(common::serve::watch_until(stream, w, Duration::from_secs(60), "every create and remove", |w| {
        ids.iter().all(|id| w.has("container_create", id) && w.has("container_remove", id))
    }));
}

use common::serve::{free_port, metric, scrape, Watched};

#[test]
fn a_journal_dir_that_cannot_be_written_is_one_log_line_and_a_metric_and_live_events_go_on() {
    require_root();
    let rt = runtime();
    let fs = Tmpfs::mount("size=1m,mode=755,ro");
    let journal = fs.path().join("journal");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut serve = Serve::start(&["--no-enrich", "--journal", journal.to_str().unwrap(), "--metrics-addr", &addr]);
    let mut client = rt.block_on(serve.client());
    let mut stream = rt.block_on(client.watch(pb::WatchRequest::default())).unwrap().into_inner();
    let mut w = Watched::default();
    rt.block_on(common::serve::watch_until(&mut stream, &mut w, Duration::from_secs(60), "synced", |w| w.synced));
    let ids = churn(&unique("journal-ro"), 20);
    watch_live_until_all(&rt, &mut stream, &mut w, &ids);
    assert!(w.events.iter().all(|e| e.seq == 0), "no journal, no seq");
    assert_eq!(wait_metric(&addr, "ctwatch_journal_failing", |v| v == 1.0), 1.0);
    assert_eq!(metric(&scrape(&addr), "ctwatch_journal_open_errors_total"), Some(1.0));
    let lines = logged(&serve, "Read-only file system");
    assert_eq!(lines.len(), 1, "one line says what is wrong: {lines:#?}");
    assert!(lines[0].contains(journal.to_str().unwrap()), "it names the directory: {}", lines[0]);
    // What needs the journal says so plainly.
    let status = rt.block_on(client.history(pb::HistoryRequest { container: ids[0].clone() })).unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
    drop(stream);
    assert!(serve.stop().success());
    assert!(logged(&serve, "panicked").is_empty());
    drop(fs);
}

#[test]
fn a_full_disk_is_one_log_line_and_a_metric_live_events_go_on_and_journaling_resumes_when_space_returns() {
    require_root();
    let rt = runtime();
    let fs = Tmpfs::mount("size=1m,mode=755");
    let journal = fs.path().join("journal");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut serve = Serve::start(&["--no-enrich", "--journal", journal.to_str().unwrap(), "--metrics-addr", &addr]);
    // Fill what is left of the file system.
    {
        let mut filler = std::fs::File::create(fs.path().join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        while filler.write_all(&chunk).is_ok() {}
    }
    let mut client = rt.block_on(serve.client());
    let mut stream = rt.block_on(client.watch(pb::WatchRequest::default())).unwrap().into_inner();
    let mut w = Watched::default();
    rt.block_on(common::serve::watch_until(&mut stream, &mut w, Duration::from_secs(60), "synced", |w| w.synced));
    let ids = churn(&unique("journal-full"), 100);
    watch_live_until_all(&rt, &mut stream, &mut w, &ids);
    wait_metric(&addr, "ctwatch_journal_failing", |v| v == 1.0);
    let text = scrape(&addr);
    assert!(metric(&text, "ctwatch_journal_write_errors_total").is_some_and(|v| v >= 1.0), "{text}");
    assert!(metric(&text, "ctwatch_journal_append_errors_total").is_some_and(|v| v >= 1.0), "{text}");
    let refused = w.events.iter().filter(|e| e.seq == 0).count();
    assert!(refused > 0, "events the journal refused went out live, without seq");
    let lines = logged(&serve, "No space left on device");
    assert_eq!(lines.len(), 1, "one line says what is wrong (not one per event or retry): {lines:#?}");
    assert!(lines[0].contains(journal.to_str().unwrap()), "it names the file: {}", lines[0]);

    // Space returns: the writer retries by itself, and journaling resumes.
    fs.remount("size=64m");
    wait_metric(&addr, "ctwatch_journal_failing", |v| v == 0.0);
    let more = churn(&unique("journal-space"), 5);
    watch_live_until_all(&rt, &mut stream, &mut w, &more);
    for id in &more {
        assert!(w.find("container_create", id).unwrap().seq > 0, "journaled again: a seq");
        let history = rt.block_on(client.history(pb::HistoryRequest { container: id.clone() })).unwrap().into_inner();
        let kinds: Vec<&str> = history.events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(kinds, ["container_create", "container_remove"], "{id} is in the journal");
    }
    assert!(!logged(&serve, "journal writer recovered").is_empty());
    drop(stream);
    assert!(serve.stop().success());
    assert!(logged(&serve, "panicked").is_empty());
    drop(fs);
}
