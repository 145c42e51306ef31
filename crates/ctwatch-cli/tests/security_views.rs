//! Issue 17's `security` object in every view, with real Docker containers:
//! the events' `args.security` (from the runtime hook's read of config.json,
//! and for containers found otherwise from runc's state → the bundle's
//! config.json), `get`, `ls --format json`, the `ls` table's `[PRIV]`
//! marker, `ls --filter privileged=|cap=|host_ns=`, the gRPC `Security`
//! message and the `ctwatch_containers_by_privilege` gauge.

mod common;

use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

use common::serve::{free_port, metric, scrape, Serve};
use common::*;
use ctwatch_api::pb;
use serde_json::Value;

const DOCKER: &str = "/usr/bin/docker";
const IMAGE: &str = "local/busybox:1";

/// A Docker container, removed when dropped.
struct Docker(String);

impl Docker {
    /// `docker run -d --name NAME FLAGS local/busybox:1 sleep 300`.
    fn run(name: &str, flags: &[&str]) -> Docker {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMAGE, "sleep", "300"]);
        Docker(run(DOCKER, &args).trim().to_string())
    }

    /// `docker create` then `docker start`, whose failure is ignored: on this
    /// VM `--privileged` cannot start (HOST-NOTES: the VM's bounding set
    /// lacks CAP_SYS_RESOURCE), but its config.json is written and runc is
    /// exec'd, so the hook sees it.
    fn create_start(name: &str, flags: &[&str]) -> Docker {
        let mut args = vec!["create", "--name", name];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[IMAGE, "sleep", "300"]);
        let c = Docker(run(DOCKER, &args).trim().to_string());
        let _ = output(DOCKER, &["start", &c.0]);
        c
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let _ = output(DOCKER, &["rm", "-f", &self.0]);
    }
}

fn ctwatch(args: &[&str]) -> Output {
    output(ctwatch_bin().to_str().unwrap(), args)
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "ctwatch failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// Checks one container's `security` object against the flags it was run with.
fn assert_security(security: &Value, flags: &str, what: &str) {
    assert!(security.is_object(), "{what}: no security object: {security}");
    let caps = strings(&security["capabilities_bounding"]);
    let host_ns = strings(&security["host_namespaces"]);
    match flags {
        "plain" => {
            assert_eq!(security["privileged"], false, "{what}: {security}");
            assert!(strings(&security["capabilities_added"]).is_empty(), "{what}: {security}");
            assert!(!caps.contains(&"CAP_SYS_ADMIN") && !host_ns.contains(&"pid"), "{what}: {security}");
            assert_eq!(security["seccomp"], "runtime_default", "{what}: {security}");
        }
        "privileged" => {
            assert_eq!(security["privileged"], true, "{what}: {security}");
            assert!(caps.contains(&"CAP_SYS_ADMIN") && security["all_devices_allowed"] == true, "{what}: {security}");
            assert_eq!(security["seccomp"], "unconfined", "{what}: {security}");
        }
        "unconfined" => {
            assert_eq!(security["privileged"], false, "{what}: {security}");
            assert_eq!(security["seccomp"], "unconfined", "{what}: {security}");
            assert!(strings(&security["capabilities_added"]).is_empty(), "{what}: {security}");
        }
        "capadd" => {
            assert_eq!(security["privileged"], false, "{what}: {security}");
            assert_eq!(strings(&security["capabilities_added"]), ["CAP_SYS_ADMIN"], "{what}: {security}");
        }
        "pidhost" => {
            assert_eq!(security["privileged"], false, "{what}: {security}");
            assert!(host_ns.contains(&"pid"), "{what}: {security}");
        }
        _ => unreachable!(),
    }
}

/// Containers that start on this VM, by the flags they run with.
const CASES: [(&str, &[&str]); 4] = [
    ("plain", &[]),
    ("unconfined", &["--security-opt", "seccomp=unconfined"]),
    ("capadd", &["--cap-add", "SYS_ADMIN"]),
    ("pidhost", &["--pid", "host"]),
];

#[test]
fn hooked_creates_carry_the_hooks_security_in_their_events() {
    require_root();
    let tag = unique("sech");
    let mut watch = Watch::start_with("auto", &["--no-existing", "--hook", "on"]);
    let containers: Vec<(&str, Docker)> =
        CASES.iter().map(|(flags, args)| (*flags, Docker::run(&format!("{tag}-{flags}"), args))).collect();
    // --privileged does not start here, but the hook reads its config before runc runs.
    let privileged = Docker::create_start(&format!("{tag}-privileged"), &["--privileged"]);
    watch.wait_for("container_precreate", &privileged.0);
    let precreate = watch.event("container_precreate", &privileged.0);
    assert_security(&precreate["args"]["security"], "privileged", "privileged precreate");
    for (flags, c) in &containers {
        watch.wait_for("container_create", &c.0);
        let precreate = watch.event("container_precreate", &c.0).clone();
        assert_security(&precreate["args"]["security"], flags, &format!("{flags} precreate"));
        let create = watch.event("container_create", &c.0);
        assert!(create["hook"].is_object(), "the hook saw it: {create}");
        assert_security(&create["args"]["security"], flags, &format!("{flags} create"));
        // The same profile the precreate had: the hook's, read before the start.
        assert_eq!(create["args"]["security"], precreate["args"]["security"]);
    }
    drop(containers);
    watch.interrupt();
}

#[test]
fn containers_found_otherwise_get_their_security_from_the_bundle_in_every_view() {
    require_root();
    let tag = unique("secv");
    // Started before ctwatch: the agent finds them in its scan (no hook).
    let containers: Vec<(&str, Docker)> =
        CASES.iter().map(|(flags, args)| (*flags, Docker::run(&format!("{tag}-{flags}"), args))).collect();
    let id = |flags: &str| containers.iter().find(|(f, _)| *f == flags).unwrap().1 .0.clone();

    // existing_container events carry it (from runc's state → config.json).
    let mut watch = Watch::start_with("auto", &[]);
    for (flags, c) in &containers {
        watch.wait_for("existing_container", &c.0);
        let e = watch.event("existing_container", &c.0);
        assert!(e["hook"].is_null(), "no hook: {e}");
        assert_security(&e["args"]["security"], flags, &format!("{flags} existing_container"));
    }
    // A create seen with the hook off gets it from the bundle too.
    let late = Docker::run(&format!("{tag}-late"), &["--cap-add", "SYS_ADMIN"]);
    watch.wait_for("container_create", &late.0);
    assert_security(&watch.event("container_create", &late.0)["args"]["security"], "capadd", "late create");
    drop(late);
    watch.interrupt();

    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let serve = Serve::start(&["--metrics-addr", &metrics_addr]);
    let socket = serve.socket.to_str().unwrap().to_string();
    let get = |id: &str| -> Value {
        serde_json::from_str(&stdout(&ctwatch(&["get", "--socket", &socket, id]))).unwrap_or(Value::Null)
    };
    // Enrichment reads the bundles just after the agent's scan.
    for _ in 0..100 {
        if containers.iter().all(|(_, c)| get(&c.0)["security"].is_object()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (flags, c) in &containers {
        let got = get(&c.0);
        assert_security(&got["security"], flags, &format!("{flags} get"));
        let listed = stdout(&ctwatch(&[
            "ls",
            "--socket",
            &socket,
            "--format",
            "json",
            "--filter",
            &format!("name={tag}-{flags}"),
        ]));
        let listed: Value = serde_json::from_str(listed.lines().next().expect("listed")).unwrap();
        assert_eq!(listed, got, "ls --format json and get print the same record");
    }

    // ls --filter, through the agent and without one.
    let ls = |filters: &[&str], agent: bool| -> BTreeSet<String> {
        let name = format!("name={tag}");
        let mut args = vec!["ls", "-q", "--no-trunc", "--filter", &name];
        if agent {
            args.extend_from_slice(&["--socket", &socket]);
        } else {
            args.push("--standalone");
        }
        for f in filters {
            args.extend_from_slice(&["--filter", f]);
        }
        stdout(&ctwatch(&args)).lines().map(str::to_string).collect()
    };
    let set = |flags: &[&str]| -> BTreeSet<String> { flags.iter().map(|f| id(f)).collect() };
    for agent in [true, false] {
        // (--privileged cannot start on this VM: none is running.)
        assert_eq!(ls(&["privileged=true"], agent), BTreeSet::new(), "agent: {agent}");
        assert_eq!(
            ls(&["privileged=false"], agent),
            set(&["plain", "unconfined", "capadd", "pidhost"]),
            "agent: {agent}"
        );
        assert_eq!(ls(&["cap=SYS_ADMIN"], agent), set(&["capadd"]), "agent: {agent}");
        assert_eq!(ls(&["cap=cap_sys_admin", "host_ns=pid"], agent), BTreeSet::new(), "keys are ANDed");
        assert_eq!(ls(&["host_ns=pid"], agent), set(&["pidhost"]), "agent: {agent}");
        assert_eq!(ls(&["host_ns=pid", "host_ns=ipc"], agent), set(&["pidhost"]), "values are ORed");
        assert_eq!(ls(&["seccomp=unconfined"], agent), set(&["unconfined"]), "agent: {agent}");
        assert_eq!(
            ls(&["class=elevated"], agent),
            set(&["unconfined", "capadd", "pidhost"]),
            "baseline forbids all three"
        );
    }
    let bad = ctwatch(&["ls", "--socket", &socket, "--filter", "privileged=maybe"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("true or false"), "{err}");

    // No [PRIV] in the table for unprivileged containers (see output.rs's unit test for the marker).
    let table = stdout(&ctwatch(&["ls", "--socket", &socket, "--no-trunc", "--filter", &format!("name={tag}")]));
    assert!(!table.contains("[PRIV]") && table.contains(&format!("{tag}-capadd")), "{table}");

    // gRPC: the typed Security message.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (unconfined, capadd) = rt.block_on(async {
        let mut client = serve.client().await;
        let get = |id: String| {
            let mut client = client.clone();
            async move { client.get(pb::GetRequest { id }).await.unwrap().into_inner() }
        };
        let p = get(id("unconfined")).await;
        let c = get(id("capadd")).await;
        let listed = client
            .list(pb::ListRequest { name: tag.clone(), security: vec!["host_ns=pid".into()], ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<&str> = listed.containers.iter().map(|c| c.container_id.as_str()).collect();
        assert_eq!(ids, [id("pidhost")], "the API's security filter");
        (p, c)
    });
    let s = unconfined.security.expect("Security message");
    assert!(!s.privileged && s.seccomp == "unconfined", "{s:?}");
    assert!(s.capabilities_bounding.iter().any(|c| c == "CAP_CHOWN"), "{s:?}");
    let s = capadd.security.expect("Security message");
    assert!(!s.privileged && s.capabilities_added == ["CAP_SYS_ADMIN"], "{s:?}");

    // The gauge counts them by class.
    let text = scrape(&metrics_addr);
    let class = |c: &str| metric(&text, &format!("ctwatch_containers_by_privilege{{class=\"{c}\"}}")).unwrap_or(-1.0);
    assert!(class("elevated") >= 3.0, "unconfined, capadd and pidhost: {text}");
    assert!(class("privileged") >= 0.0 && class("restricted") >= 0.0 && class("unknown") >= 0.0, "{text}");
}
