//! Real cgroupfs: every runtime's cgroup layout made with mkdir/rmdir under a
//! test-owned parent, seen by `ctwatch watch` exactly once each.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const POD: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";

struct Case {
    /// Path below the test's parent cgroup.
    rel: String,
    runtime: &'static str,
    id: String,
    pod_uid: &'static str,
}

fn cases(tag: &str) -> (Vec<Case>, Vec<String>) {
    let id = |n: &str| hex_id(&format!("{tag}-{n}"));
    let pod_us = POD.replace('-', "_");
    let c = |rel: String, runtime, id: String, pod_uid| Case { rel, runtime, id, pod_uid };
    let docker = id("docker");
    let dind_outer = id("dind-outer");
    let dind_inner = id("dind-inner");
    let positives = vec![
        c(format!("docker/{docker}"), "docker", docker.clone(), ""),
        c(format!("system.slice/docker-{}.scope", id("docker-sd")), "docker", id("docker-sd"), ""),
        c(format!("docker/{dind_outer}"), "docker", dind_outer.clone(), ""),
        c(format!("docker/{dind_outer}/docker/{dind_inner}"), "docker", dind_inner.clone(), ""),
        c(format!("actions_job/{}", id("gha")), "docker", id("gha"), ""),
        c(format!("system.slice/cri-containerd-{}.scope", id("ctd-sd")), "containerd", id("ctd-sd"), ""),
        c(
            format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_us}.slice/cri-containerd-{}.scope", id("k8s-be")),
            "containerd", id("k8s-be"), POD,
        ),
        c(
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_us}.slice/crio-{}.scope", id("k8s-bu")),
            "crio", id("k8s-bu"), POD,
        ),
        c(format!("kubepods.slice/kubepods-pod{pod_us}.slice/docker-{}.scope", id("k8s-gu")), "docker", id("k8s-gu"), POD),
        c(format!("kubepods/besteffort/pod{POD}/{}", id("k8s-fs-be")), "unknown", id("k8s-fs-be"), POD),
        c(format!("kubepods/burstable/pod{POD}/{}", id("k8s-fs-bu")), "unknown", id("k8s-fs-bu"), POD),
        c(format!("kubepods/pod{POD}/{}", id("k8s-fs-gu")), "unknown", id("k8s-fs-gu"), POD),
        c(
            format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_us}.slice:cri-containerd:{}", id("colon")),
            "containerd", id("colon"), "",
        ),
        c(format!("libpod_parent/libpod-{}", id("podman")), "podman", id("podman"), ""),
        c(format!("machine.slice/libpod-{}.scope", id("podman-sd")), "podman", id("podman-sd"), ""),
        c("garden/0a1b2c3d-4e5f-6a7b-8c9d-0e1f".to_string(), "garden", "0a1b2c3d-4e5f-6a7b-8c9d-0e1f".into(), ""),
    ];
    let negatives = vec![
        "user.slice/user-1000.slice/session-3.scope".to_string(),
        "system.slice/ssh.service".into(),
        "system.slice/snap.lxd.daemon.service".into(),
        format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_us}.slice/crio-conmon-{}.scope",
            id("conmon")
        ),
        format!("machine.slice/libpod-conmon-{}.scope", id("conmon2")),
        format!("process_api/{}", id("not-a-container")),
    ];
    (positives, negatives)
}

#[test]
fn every_layout_is_seen_created_and_removed_exactly_once() {
    for source in SOURCES {
        every_layout_with(source);
    }
}

fn every_layout_with(source: &str) {
    require_root();
    let hierarchy = default_hierarchy();
    let parent_name = unique(&format!("layouts-{source}"));
    let mut tree = CgroupTree::new();
    let parent = tree.mkdir_p(&hierarchy, &parent_name);
    let (positives, negatives) = cases(&parent_name);

    let mut watch = Watch::start_with(source, &["--cgroup-root", parent.to_str().unwrap()]);
    for case in &positives {
        let dir = tree.mkdir_p(&parent, &case.rel);
        // A sub-cgroup made inside the container belongs to it: no event of its own.
        tree.mkdir_p(&dir, "sub/deeper");
    }
    for rel in &negatives {
        tree.mkdir_p(&parent, rel);
    }
    watch.wait_until(Duration::from_secs(10), "every create", |seen| {
        positives.iter().all(|c| has_event(seen, "container_create", &c.id))
    });
    tree.remove_all();
    watch.wait_until(Duration::from_secs(10), "every remove", |seen| {
        positives.iter().all(|c| has_event(seen, "container_remove", &c.id))
    });
    watch.drain_for(Duration::from_millis(500));

    let counts = counts(&watch.seen);
    for case in &positives {
        for kind in ["container_create", "container_remove"] {
            assert_eq!(counts.get(&(kind.to_string(), case.id.clone())), Some(&1), "{kind} of {}", case.rel);
        }
        let create = watch.about(&case.id).into_iter().find(|e| e["event"] == "container_create").unwrap();
        assert_eq!(create["args"]["runtime"], case.runtime, "runtime of {}", case.rel);
        assert_eq!(create["args"]["pod_uid"], case.pod_uid, "pod uid of {}", case.rel);
        assert!(create["cgroup_id"].as_u64().unwrap() > 1, "cgroup id of {}", case.rel);
        assert!(create["args"]["ctime"].as_u64().unwrap() > 1_600_000_000_000_000_000, "ctime of {}", case.rel);
        assert_eq!(create["args"]["pod_sandbox"], false);
        let remove = watch.about(&case.id).into_iter().find(|e| e["event"] == "container_remove").unwrap();
        assert_eq!(remove["args"].as_object().unwrap().len(), 2, "remove args: runtime and container_id only");
        assert_eq!(remove["args"]["runtime"], case.runtime);
        assert_eq!(remove["cgroup_id"], create["cgroup_id"], "remove names the same cgroup");
    }
    let expected = positives.len() * 2;
    assert_eq!(
        watch.seen.len(),
        expected,
        "only the containers' events, nothing for sub-cgroups or ordinary cgroups: {:#?}",
        watch.seen
    );
}

#[test]
fn cgroup_ids_are_the_directories_inode_numbers() {
    for source in SOURCES {
        cgroup_ids_with(source);
    }
}

fn cgroup_ids_with(source: &str) {
    require_root();
    use std::os::unix::fs::MetadataExt;
    let hierarchy = default_hierarchy();
    let parent_name = unique(&format!("ids-{source}"));
    let mut tree = CgroupTree::new();
    let parent = tree.mkdir_p(&hierarchy, &parent_name);
    let mut watch = Watch::start_with(source, &["--cgroup-root", parent.to_str().unwrap()]);
    let id = hex_id(&parent_name);
    let now_ns = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let before = now_ns();
    let dir = tree.mkdir_p(&parent, &format!("docker/{id}"));
    let after = now_ns();
    watch.wait_until(Duration::from_secs(10), "create", |seen| !seen.is_empty());
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(watch.seen[0]["cgroup_id"].as_u64(), Some(meta.ino()));
    let ctime = watch.seen[0]["args"]["ctime"].as_u64().unwrap();
    if source == "ebpf" {
        // The kernel's own time of the mkdir.
        assert!(before <= ctime && ctime <= after, "{source}: ctime {ctime} within the mkdir [{before}, {after}]");
    } else {
        // inotify reads the directory's ctime: the time its inode was first
        // looked up, which ctwatch does right after the mkdir.
        let dir_ctime = meta.ctime() as u64 * 1_000_000_000 + meta.ctime_nsec() as u64;
        assert_eq!(ctime, dir_ctime, "{source}: the directory's ctime");
        // Inode times are coarse (a scheduler tick): allow 50 ms.
        assert!(before <= ctime + 50_000_000, "{source}: ctime {ctime} not long before the mkdir at {before}");
    }
}

#[test]
fn hybrid_hosts_report_each_container_once_across_hierarchies() {
    for source in SOURCES {
        hybrid_with(source);
    }
}

fn hybrid_with(source: &str) {
    require_root();
    let hierarchies = all_hierarchies();
    let parent_name = unique(&format!("mirror-{source}"));
    let id = hex_id(&parent_name);
    let mut tree = CgroupTree::new();
    // Whatever ctwatch picks by default, follow the whole host.
    let mut watch = Watch::start_with(source, &[]);
    // Do what runc does on a hybrid host: the same cgroup in every hierarchy.
    for h in &hierarchies {
        tree.mkdir_p(h, &format!("{parent_name}/docker/{id}"));
    }
    watch.wait_for("container_create", &id);
    tree.remove_all();
    watch.wait_for("container_remove", &id);
    watch.drain_for(Duration::from_millis(500));
    let events: Vec<&Value> = watch.about(&id);
    assert_eq!(events.len(), 2, "one create and one remove across {} hierarchies: {events:#?}", hierarchies.len());
}

#[test]
fn existing_containers_are_reported_at_start_and_listed() {
    require_root();
    let hierarchy = default_hierarchy();
    let parent_name = unique("existing");
    let id = hex_id(&parent_name);
    let mut tree = CgroupTree::new();
    let parent = tree.mkdir_p(&hierarchy, &parent_name);
    tree.mkdir_p(&parent, &format!("docker/{id}/sub"));

    let out =
        run(ctwatch_bin().to_str().unwrap(), &["ls", "--cgroup-root", parent.to_str().unwrap(), "--format", "json"]);
    let listed: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(listed[0]["container_id"], id.as_str());
    assert_eq!(listed[0]["runtime"], "docker");
    assert_eq!(listed[0]["state"], "existing");

    let table = run(ctwatch_bin().to_str().unwrap(), &["ls", "--cgroup-root", parent.to_str().unwrap()]);
    assert!(table.starts_with("CONTAINER ID"), "{table}");
    assert!(table.contains(&id[..12]) && !table.contains(&id), "{table}");

    let mut watch = Watch::start(&["--cgroup-root", parent.to_str().unwrap()]);
    watch.wait_until(Duration::from_secs(5), "existing", |seen| !seen.is_empty());
    assert_eq!(watch.seen[0]["event"], "existing_container");
    assert_eq!(watch.seen[0]["args"]["container_id"], id.as_str());
    assert_eq!(watch.seen[0]["args"].as_object().unwrap().len(), 10, "same arguments as container_create");
    tree.remove_all();
    watch.wait_until(Duration::from_secs(5), "remove", |seen| seen.len() == 2);
    assert_eq!(watch.seen[1]["event"], "container_remove");
}

#[test]
fn a_tree_made_at_once_is_seen_whole() {
    for source in SOURCES {
        tree_at_once_with(source);
    }
}

fn tree_at_once_with(source: &str) {
    // mkdir -p of a deep path races the watcher: directories made before their
    // parent's watch exists must be found by the listing that follows it.
    require_root();
    let hierarchy = default_hierarchy();
    let parent_name = unique(&format!("race-{source}"));
    let mut tree = CgroupTree::new();
    let parent = tree.mkdir_p(&hierarchy, &parent_name);
    let mut watch = Watch::start_with(source, &["--cgroup-root", parent.to_str().unwrap()]);
    let ids: Vec<String> = (0..50).map(|i| hex_id(&format!("{parent_name}-{i}"))).collect();
    for (i, id) in ids.iter().enumerate() {
        tree.mkdir_p(&parent, &format!("a{i}/b/c/docker/{id}/x/y"));
    }
    watch.wait_until(Duration::from_secs(10), "50 creates", |seen| seen.len() >= ids.len());
    tree.remove_all();
    watch.wait_until(Duration::from_secs(10), "50 removes", |seen| seen.len() >= 2 * ids.len());
    watch.drain_for(Duration::from_millis(300));
    let counts = counts(&watch.seen);
    for id in &ids {
        assert_eq!(counts.get(&("container_create".into(), id.clone())), Some(&1));
        assert_eq!(counts.get(&("container_remove".into(), id.clone())), Some(&1));
    }
    assert_eq!(watch.seen.len(), 2 * ids.len());
}

#[test]
fn table_format_prints_aligned_columns() {
    require_root();
    let hierarchy = default_hierarchy();
    let parent_name = unique("table");
    let id = hex_id(&parent_name);
    let mut tree = CgroupTree::new();
    let parent = tree.mkdir_p(&hierarchy, &parent_name);
    tree.mkdir_p(&parent, &format!("docker/{id}"));
    let mut child = std::process::Command::new(ctwatch_bin())
        .args(["watch", "--format", "table", "--cgroup-root", parent.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Header + the existing container's row (it waits up to the enrichment deadline).
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while lines.len() < 2 {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = lines.join("\n");
    assert!(lines.len() >= 2, "{text}");
    assert!(lines[0].starts_with("TIME") && lines[0].contains("CONTAINER ID"), "{text}");
    assert!(lines[1].contains("existing_container") && lines[1].contains(&id[..12]), "{text}");
    assert_eq!(lines[0].find("EVENT"), lines[1].find("existing_container"), "columns align:\n{text}");
}
