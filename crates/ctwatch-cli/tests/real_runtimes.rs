//! Real containers from real runtimes (started by scripts/setup-host.sh):
//! each seen created and removed by `ctwatch watch`, with the runtime's own ID.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

const DOCKER: &str = "/usr/bin/docker";
const IMAGE: &str = "local/busybox:1";

fn assert_created_then_removed(watch: &mut Watch, id: &str, runtime: &str, remove: impl FnOnce()) {
    watch.wait_for("container_create", id);
    remove();
    watch.wait_for("container_remove", id);
    watch.drain_for(Duration::from_millis(300));
    let all = watch.about(id);
    // Between them at most one container_start (when the container's own process was seen).
    let starts: Vec<usize> =
        all.iter().enumerate().filter(|(_, e)| e["event"] == "container_start").map(|(i, _)| i).collect();
    assert!(starts.len() <= 1 && starts.iter().all(|&i| i > 0 && i + 1 < all.len()), "{all:#?}");
    let events: Vec<_> = all.into_iter().filter(|e| e["event"] != "container_start").collect();
    assert_eq!(events.len(), 2, "exactly one create and one remove for {id}: {events:#?}");
    assert_eq!(events[0]["event"], "container_create");
    assert_eq!(events[0]["args"]["runtime"], runtime);
    assert_eq!(events[1]["event"], "container_remove");
    assert_eq!(events[1]["args"]["runtime"], runtime);
    assert_eq!(events[0]["cgroup_id"], events[1]["cgroup_id"]);
}

#[test]
fn docker_run() {
    for source in SOURCES {
        docker_run_with(source);
    }
}

fn docker_run_with(source: &str) {
    require_root();
    let mut watch = Watch::start_with(source, &["--no-existing"]);
    let name = unique(&format!("docker-{source}"));
    let id = run(DOCKER, &["run", "-d", "--name", &name, IMAGE, "sleep", "60"]);
    assert_eq!(id.len(), 64, "docker prints the full ID: {id}");
    assert_created_then_removed(&mut watch, &id, "docker", || {
        run(DOCKER, &["rm", "-f", &name]);
    });
}

#[test]
fn docker_container_is_listed_and_existing_at_start() {
    require_root();
    let name = unique("docker-ls");
    let id = run(DOCKER, &["run", "-d", "--name", &name, IMAGE, "sleep", "60"]);
    let listed = run(ctwatch_bin().to_str().unwrap(), &["ls", "-q", "--no-trunc"]);
    let ok = listed.lines().any(|l| l == id);
    let mut watch = Watch::start(&[]);
    watch.wait_for("existing_container", &id);
    run(DOCKER, &["rm", "-f", &name]);
    assert!(ok, "ctwatch ls lists {id}:\n{listed}");
}

#[test]
fn ctr_run_in_two_namespaces() {
    require_root();
    let mut watch = Watch::start(&["--no-existing"]);
    for ns in ["default", "ctwatch-test"] {
        if ns != "default" {
            // The image must be in the namespace: import it (idempotent).
            let _ = output("ctr", &["-n", ns, "images", "import", "/var/lib/ctwatch-test/bb.tar"]);
        }
        let id = unique("ctr");
        run("ctr", &["-n", ns, "run", "-d", "docker.io/local/busybox:1", &id, "sleep", "60"]);
        // Enrichment, compared with containerd's own answer: the image the
        // container names and its digest in that namespace's image store.
        let info: serde_json::Value = serde_json::from_str(&run("ctr", &["-n", ns, "container", "info", &id])).unwrap();
        let image = info["Image"].as_str().unwrap().to_string();
        let listed = run("ctr", &["-n", ns, "images", "ls", &format!("name=={image}")]);
        let digest = listed.lines().nth(1).and_then(|l| l.split_whitespace().nth(2)).unwrap().to_string();
        watch.wait_for("container_create", &id);
        let create = watch.about(&id)[0].clone();
        assert_eq!(create["enriched"], true, "{create}");
        assert_eq!(create["args"]["container_image"], image.as_str());
        assert_eq!(create["args"]["container_image_digest"], digest.as_str());
        assert_eq!(create["args"]["container_name"], id.as_str(), "no CRI or nerdctl name: the ID");
        assert_created_then_removed(&mut watch, &id, "containerd", || {
            let _ = output("ctr", &["-n", ns, "task", "kill", "-s", "KILL", &id]);
            for _ in 0..50 {
                if output("ctr", &["-n", ns, "task", "rm", &id]).status.success() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            run("ctr", &["-n", ns, "container", "rm", &id]);
        });
    }
}

#[test]
fn podman_run() {
    require_root();
    let mut watch = Watch::start(&["--no-existing"]);
    let name = unique("podman");
    let podman = |args: &[&str]| {
        let mut all = vec!["--runtime", "runc", "--cgroup-manager", "cgroupfs"];
        all.extend_from_slice(args);
        run("podman", &all)
    };
    let id = podman(&["run", "-d", "--name", &name, IMAGE, "sleep", "60"]);
    assert_eq!(id.len(), 64, "podman prints the full ID: {id}");
    assert_created_then_removed(&mut watch, &id, "podman", || {
        podman(&["rm", "-f", "-t", "0", &name]);
    });
}

#[test]
fn bare_runc_run() {
    for source in SOURCES {
        bare_runc_run_with(source);
    }
}

fn bare_runc_run_with(source: &str) {
    require_root();
    let mut watch = Watch::start_with(source, &["--no-existing"]);
    let id = unique(&format!("runc-{source}"));
    let bundle = runc_bundle(&id, &["sleep", "60"]);
    run_detached("runc", &["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    assert_created_then_removed(&mut watch, &id, "runc", || {
        run("runc", &["delete", "-f", &id]);
    });
    let _ = fs::remove_dir_all(bundle);
}

#[test]
fn runc_create_then_start() {
    require_root();
    let mut watch = Watch::start(&["--no-existing"]);
    let id = unique("runc-cs");
    let bundle = runc_bundle(&id, &["sleep", "60"]);
    // `runc create` makes the cgroup before the container's process runs.
    run_detached("runc", &["create", "--bundle", bundle.to_str().unwrap(), &id]);
    watch.wait_for("container_create", &id);
    run("runc", &["start", &id]);
    assert_created_then_removed(&mut watch, &id, "runc", || {
        run("runc", &["delete", "-f", &id]);
    });
    let _ = fs::remove_dir_all(bundle);
}
