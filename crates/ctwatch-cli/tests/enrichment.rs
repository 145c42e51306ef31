//! Enrichment from real daemons (started by scripts/setup-host.sh): every
//! field compared with the runtime's own answer, quick removals, bursts,
//! daemon-free bundle annotations, hostile labels and a hung daemon.

mod common;

use std::fs;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const DOCKER: &str = "/usr/bin/docker";
const IMAGE: &str = "local/busybox:1";
const POD_UID: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";

/// `docker inspect -f TEMPLATE ID`.
fn inspect(cmd: &str, template: &str, id: &str) -> String {
    run(cmd, &["inspect", "-f", template, id])
}

#[test]
fn docker_fields_match_docker_inspect() {
    require_root();
    let mut watch = Watch::start(&["--no-existing"]);
    let name = unique("enrich-docker");
    let id = run(
        DOCKER,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            "io.kubernetes.pod.name=web-0",
            "--label",
            "io.kubernetes.pod.namespace=prod",
            "--label",
            &format!("io.kubernetes.pod.uid={POD_UID}"),
            "--label",
            "io.kubernetes.container.name=app",
            IMAGE,
            "sleep",
            "60",
        ],
    );
    watch.wait_for("container_create", &id);
    let e = watch.event("container_create", &id).clone();
    let (image, image_id) = (inspect(DOCKER, "{{.Config.Image}}", &id), inspect(DOCKER, "{{.Image}}", &id));
    run(DOCKER, &["rm", "-f", &name]);
    assert_eq!(e["enriched"], true, "{e}");
    let a = &e["args"];
    assert_eq!(a["runtime"], "docker");
    assert_eq!(a["container_image"], image.as_str());
    // An imported image has no repo digest: the digest is the image ID.
    assert_eq!(a["container_image_digest"], image_id.as_str());
    assert_eq!(a["container_name"], "app", "kubelet's container name label wins over the Docker name");
    assert_eq!(
        (a["pod_name"].as_str(), a["pod_namespace"].as_str(), a["pod_uid"].as_str()),
        (Some("web-0"), Some("prod"), Some(POD_UID))
    );
    assert_eq!(a["pod_sandbox"], false);
}

#[test]
fn docker_name_without_labels_and_a_sandbox() {
    require_root();
    let mut watch = Watch::start(&["--no-existing"]);
    let name = unique("enrich-plain");
    let id = run(DOCKER, &["run", "-d", "--name", &name, IMAGE, "sleep", "60"]);
    let sandbox_name = unique("enrich-sandbox");
    let sandbox = run(
        DOCKER,
        &[
            "run",
            "-d",
            "--name",
            &sandbox_name,
            "--label",
            "io.kubernetes.docker.type=podsandbox",
            "--label",
            "io.kubernetes.pod.name=web-1",
            IMAGE,
            "sleep",
            "60",
        ],
    );
    watch.wait_for("container_create", &id);
    watch.wait_for("container_create", &sandbox);
    let plain = watch.event("container_create", &id)["args"].clone();
    let pause = watch.event("container_create", &sandbox)["args"].clone();
    let docker_name = inspect_name(&name);
    run(DOCKER, &["rm", "-f", &name, &sandbox_name]);
    assert_eq!(plain["container_name"], docker_name.as_str());
    assert_eq!(pause["pod_sandbox"], true);
    assert_eq!(pause["pod_name"], "web-1");
}

fn inspect_name(name: &str) -> String {
    inspect(DOCKER, "{{.Name}}", name).trim_start_matches('/').to_string()
}

#[test]
fn a_container_removed_at_once_still_gets_its_create_first() {
    require_root();
    let mut watch = Watch::start(&["--no-existing"]);
    let name = unique("enrich-quick");
    let cidfile = std::env::temp_dir().join(format!("{name}.cid"));
    run(DOCKER, &["run", "--rm", "--cidfile", cidfile.to_str().unwrap(), "--name", &name, IMAGE, "true"]);
    let id = fs::read_to_string(&cidfile).unwrap().trim().to_string();
    let _ = fs::remove_file(&cidfile);
    watch.wait_for("container_remove", &id);
    watch.drain_for(Duration::from_millis(300));
    // A container_start may come between (its process ran), exactly once.
    let all = watch.about(&id);
    let starts: Vec<usize> = (0..all.len()).filter(|i| all[*i]["event"] == "container_start").collect();
    assert!(starts.len() <= 1 && starts.iter().all(|i| *i == 1), "{all:#?}");
    let events: Vec<&&serde_json::Value> = all.iter().filter(|e| e["event"] != "container_start").collect();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(
        (events[0]["event"].as_str(), events[1]["event"].as_str()),
        (Some("container_create"), Some("container_remove"))
    );
}

#[test]
fn fifty_docker_containers_started_at_once_are_all_enriched() {
    require_root();
    // None missed and all enriched: a deadline that a loaded CI machine meets.
    let mut watch = Watch::start(&["--no-existing", "--enrich-deadline", "15s"]);
    let names: Vec<String> = (0..50).map(|i| unique(&format!("burst{i}"))).collect();
    let started = Instant::now();
    let handles: Vec<_> = names
        .iter()
        .cloned()
        .map(|name| std::thread::spawn(move || run(DOCKER, &["run", "-d", "--name", &name, IMAGE, "sleep", "60"])))
        .collect();
    let ids: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for id in &ids {
        watch.wait_for("container_create", id);
    }
    let elapsed = started.elapsed();
    let mut by_id = std::collections::HashMap::new();
    for e in watch.seen.iter().filter(|e| e["event"] == "container_create") {
        by_id.insert(e["args"]["container_id"].as_str().unwrap().to_string(), e.clone());
    }
    run(DOCKER, &[&["rm", "-f"][..], &names.iter().map(String::as_str).collect::<Vec<_>>()].concat());
    for (name, id) in names.iter().zip(&ids) {
        let e = &by_id[id];
        assert_eq!(e["enriched"], true, "{e}");
        assert_eq!(e["args"]["container_name"], name.as_str());
        assert_eq!(e["args"]["container_image"], IMAGE);
    }
    eprintln!("50 concurrent docker runs enriched in {elapsed:?}");
}

#[test]
fn podman_fields_match_podman_inspect() {
    require_root();
    let mut watch = Watch::start(&["--no-existing"]);
    let name = unique("enrich-podman");
    let podman =
        |args: &[&str]| run("podman", &[&["--runtime", "runc", "--cgroup-manager", "cgroupfs"][..], args].concat());
    let id = podman(&["run", "-d", "--name", &name, IMAGE, "sleep", "60"]);
    watch.wait_for("container_create", &id);
    let e = watch.event("container_create", &id).clone();
    let image = inspect("podman", "{{.ImageName}}", &id);
    // podman gives a loaded image a repo (manifest) digest: that one wins over the image ID.
    let digest = run("podman", &["image", "inspect", "--format", "{{.Digest}}", &image]);
    podman(&["rm", "-f", "-t", "0", &name]);
    assert_eq!(e["enriched"], true, "{e}");
    assert_eq!(e["args"]["runtime"], "podman");
    assert_eq!(e["args"]["container_name"], name.as_str());
    assert_eq!(e["args"]["container_image"], image.as_str());
    assert_eq!(e["args"]["container_image_digest"], digest.as_str());
}

#[test]
fn bundle_annotations_give_pod_data_with_no_daemon() {
    // A real runc container whose OCI config carries CRI annotations, as
    // containerd's CRI plugin writes them: no daemon knows it.
    require_root();
    let mut watch = Watch::start(&["--no-existing"]);
    let id = unique("annotated");
    let bundle = std::env::temp_dir().join(&id);
    fs::create_dir_all(bundle.join("rootfs")).unwrap();
    run("cp", &["-a", "/var/lib/ctwatch-test/rootfs/.", bundle.join("rootfs").to_str().unwrap()]);
    run("runc", &["spec", "--bundle", bundle.to_str().unwrap()]);
    let config = bundle.join("config.json");
    let mut spec: Value = serde_json::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["sleep", "60"]);
    spec["annotations"] = serde_json::json!({
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": "app",
        "io.kubernetes.cri.sandbox-name": "web-2",
        "io.kubernetes.cri.sandbox-namespace": "shop",
        "io.kubernetes.cri.sandbox-uid": POD_UID,
        "io.kubernetes.cri.image-name": "docker.io/library/nginx:1.27",
    });
    fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
    run_detached("runc", &["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    watch.wait_for("container_create", &id);
    let a = watch.event("container_create", &id)["args"].clone();
    run("runc", &["delete", "-f", &id]);
    let _ = fs::remove_dir_all(&bundle);
    assert_eq!(a["runtime"], "runc");
    assert_eq!(
        (a["container_name"].as_str(), a["pod_name"].as_str(), a["pod_namespace"].as_str()),
        (Some("app"), Some("web-2"), Some("shop"))
    );
    assert_eq!(a["pod_uid"], POD_UID);
    assert_eq!(a["container_image"], "docker.io/library/nginx:1.27");
}

#[test]
fn hostile_labels_cannot_break_the_output() {
    require_root();
    let mut watch = Watch::start(&["--no-existing"]);
    let name = unique("enrich-hostile");
    let evil = format!("a\u{1b}[2J\nfake line{}", "x".repeat(5000));
    let id = run(
        DOCKER,
        &["run", "-d", "--name", &name, "--label", &format!("io.kubernetes.pod.name={evil}"), IMAGE, "sleep", "60"],
    );
    watch.wait_for("container_create", &id);
    let pod_name = watch.event("container_create", &id)["args"]["pod_name"].as_str().unwrap().to_string();
    run(DOCKER, &["rm", "-f", &name]);
    assert!(pod_name.chars().count() <= 253, "capped: {}", pod_name.len());
    assert!(!pod_name.chars().any(char::is_control), "no control characters: {pod_name:?}");
    assert!(pod_name.starts_with('a'));
}

#[test]
fn a_hung_daemon_delays_only_its_containers_until_the_deadline() {
    // A socket that accepts and never answers stands in for a hung Docker
    // daemon (a real dockerd cannot be made to hang on demand); podman's real
    // API service answers for its own container meanwhile.
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hung = dir.path().join("hung.sock");
    let listener = UnixListener::bind(&hung).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn); // accept, never reply
        }
    });
    let mut watch =
        Watch::start(&["--no-existing", "--docker-socket", hung.to_str().unwrap(), "--enrich-deadline", "1500ms"]);
    let dname = unique("hung-docker");
    let pname = unique("hung-podman");
    let before = Instant::now();
    let did = run(DOCKER, &["run", "-d", "--name", &dname, IMAGE, "sleep", "60"]);
    let pid = run(
        "podman",
        &["--runtime", "runc", "--cgroup-manager", "cgroupfs", "run", "-d", "--name", &pname, IMAGE, "sleep", "60"],
    );
    watch.wait_for("container_create", &pid);
    let podman_at = before.elapsed();
    watch.wait_for("container_create", &did);
    let docker_at = before.elapsed();
    let (d, p) = (watch.event("container_create", &did).clone(), watch.event("container_create", &pid).clone());
    run(DOCKER, &["rm", "-f", &dname]);
    run("podman", &["rm", "-f", "-t", "0", &pname]);
    assert_eq!(p["enriched"], true, "podman answered: {p}");
    assert_eq!(d["enriched"], false, "docker hung: out at the deadline with what is known: {d}");
    assert_eq!(d["args"]["runtime"], "docker");
    assert!(docker_at >= Duration::from_millis(1400), "held until the deadline ({docker_at:?})");
    assert!(docker_at < Duration::from_secs(10), "but not longer ({docker_at:?})");
    eprintln!("podman create out after {podman_at:?}, hung docker's after {docker_at:?}");
}

/// Removes a Docker container when dropped (a failing test leaves none).
struct DockerRm(String);

impl Drop for DockerRm {
    fn drop(&mut self) {
        let _ = output(DOCKER, &["rm", "-f", &self.0]);
    }
}

#[test]
fn docker_containers_are_described_from_disk_while_dockerd_does_not_answer() {
    // For this ctwatch, dockerd is down: its --docker-socket is a path where
    // nothing listens (the shared daemon keeps running for the other tests,
    // and its containers with it). Later that path becomes a link to the real
    // socket: dockerd is back.
    require_root();
    let name = unique("disk-docker");
    let id = run(DOCKER, &["run", "-d", "--name", &name, IMAGE, "sleep", "120"]);
    let _rm = DockerRm(id.clone());
    let image_id = inspect(DOCKER, "{{.Image}}", &id);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let mut watch = Watch::start(&["--docker-socket", socket.to_str().unwrap(), "--enrich-deadline", "1s"]);

    // Found at start: described at once from config.v2.json and the image store, no daemon asked.
    watch.wait_for("existing_container", &id);
    let e = watch.event("existing_container", &id).clone();
    assert_eq!(e["enriched"], false, "the daemon did not answer: {e}");
    let a = &e["args"];
    assert_eq!(
        (a["container_name"].as_str(), a["container_image"].as_str()),
        (Some(name.as_str()), Some(IMAGE)),
        "{e}"
    );
    assert_eq!(a["container_image_digest"], image_id.as_str(), "{e}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !watch.logged("not answering") {
        assert!(Instant::now() < deadline, "the outage is reported: {:?}", watch.log.lock().unwrap());
        watch.drain_for(Duration::from_millis(100));
    }

    // dockerd is back: enrichment completes, and nothing it says takes a field away.
    std::os::unix::fs::symlink("/var/run/docker.sock", &socket).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while !watch.logged("answering again") {
        assert!(Instant::now() < deadline, "dockerd's return was never noticed: {:?}", watch.log.lock().unwrap());
        watch.drain_for(Duration::from_millis(200));
    }
    watch.drain_for(Duration::from_secs(2));
    for later in watch.about(&id) {
        let a = &later["args"];
        assert_eq!((a["container_name"].as_str(), a["container_image"].as_str()), (Some(name.as_str()), Some(IMAGE)));
        assert_eq!(a["container_image_digest"], image_id.as_str(), "{later}");
    }
    // Same answer from the daemon as from the disk: no update was needed.
    assert!(watch.about(&id).iter().all(|e| e["event"] == "existing_container"), "{:#?}", watch.about(&id));
}
