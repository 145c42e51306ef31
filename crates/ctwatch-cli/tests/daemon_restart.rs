//! A runtime's API service stopped mid-run and started again: a container
//! created meanwhile goes out unenriched at once, then a `container_update`
//! carries its fields once the service is back. (Its own test binary: the
//! other tests need the podman service up.)

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const SOCKET: &str = "/run/podman/podman.sock";

fn podman(args: &[&str]) -> String {
    run("podman", &[&["--runtime", "runc", "--cgroup-manager", "cgroupfs"][..], args].concat())
}

fn service_answers() -> bool {
    output("curl", &["-sf", "--unix-socket", SOCKET, "http://d/_ping"]).status.success()
}

#[allow(clippy::zombie_processes)] // the service must outlive this test, as setup-host started it
fn start_service() {
    Command::new("podman")
        .args([
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "system",
            "service",
            "--time=0",
            &format!("unix://{SOCKET}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the podman service");
    for _ in 0..100 {
        if service_answers() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the podman service did not come back");
}

fn stop_service() {
    let _ = output("pkill", &["-f", "podman.*system service"]);
    for _ in 0..50 {
        if !service_answers() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whatever happens, the service is running again afterwards.
struct RestartOnDrop;
impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        if !service_answers() {
            start_service();
        }
    }
}

#[test]
fn containers_created_while_a_daemon_is_down_are_enriched_when_it_is_back() {
    require_root();
    let _restart = RestartOnDrop;
    let mut watch = Watch::start(&["--no-existing"]);
    stop_service();
    let name = unique("while-down");
    let id = podman(&["run", "-d", "--name", &name, "local/busybox:1", "sleep", "60"]);

    watch.wait_for("container_create", &id);
    let create = watch.about(&id)[0].clone();
    assert_eq!(create["enriched"], false, "the daemon is down: {create}");
    assert_eq!(create["args"]["runtime"], "podman");
    assert_eq!(create["args"]["container_name"], "");
    assert!(watch.logged("not answering"), "the outage is reported: {:?}", watch.log.lock().unwrap());

    start_service();
    watch.wait_for("container_update", &id);
    let update = watch.seen.iter().find(|e| e["event"] == "container_update").unwrap().clone();
    podman(&["rm", "-f", "-t", "0", &name]);
    assert_eq!(update["enriched"], true, "{update}");
    assert_eq!(update["args"]["container_name"], name.as_str());
    assert_eq!(update["args"]["container_image"], "localhost/local/busybox:1");
    assert!(watch.logged("answering again"), "the recovery is reported");
    let outages = watch.log.lock().unwrap().iter().filter(|l| l.contains("not answering")).count();
    assert_eq!(outages, 1, "reported once, not once per retry");
}
