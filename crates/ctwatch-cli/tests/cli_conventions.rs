//! The CLI behaves like `docker`/`crictl` for the people who type it:
//! `watch --filter`, `ls --no-trunc`, substring names, names without an
//! agent, `ls --format json` = `get` = the API's `Container`, completions and
//! a man page, `NO_COLOR`, a clear word on a denied socket and on flags a
//! running agent ignores. Real docker containers, a real agent.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::serve::Serve;
use common::*;
use serde_json::Value;

const DOCKER: &str = "/usr/bin/docker";

fn ctwatch(args: &[&str]) -> Output {
    Command::new(ctwatch_bin()).args(args).stdin(Stdio::null()).output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "ctwatch failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A docker container removed when dropped.
struct DockerContainer(String);

impl DockerContainer {
    fn run(name: &str, image: &str, labels: &[&str]) -> DockerContainer {
        let mut args = vec!["run", "-d", "--name", name];
        for l in labels {
            args.extend_from_slice(&["--label", l]);
        }
        args.extend_from_slice(&[image, "sleep", "300"]);
        DockerContainer(run(DOCKER, &args))
    }
}

impl Drop for DockerContainer {
    fn drop(&mut self) {
        let _ = output(DOCKER, &["rm", "-f", &self.0]);
    }
}

/// `local/busybox:1` under a repository name longer than a table cell.
fn long_image() -> String {
    let image = "local/a-repository-name-longer-than-the-column:1".to_string();
    run(DOCKER, &["tag", "local/busybox:1", &image]);
    image
}

#[test]
fn watch_filters_like_docker_events() {
    require_root();
    let tag = unique("wf");
    let serve = Serve::start(&[]);
    let socket = serve.socket.to_str().unwrap();
    // In-process, and through the agent: same filters, same answer.
    let mut w =
        Watch::start(&["--filter", &format!("name={tag}-web"), "--filter", "event=create", "--filter", "label=tier"]);
    let remote = Command::new(ctwatch_bin())
        .args([
            "watch",
            "--socket",
            socket,
            "--filter",
            &format!("name={tag}-web"),
            "--filter",
            "event=container_create",
        ])
        .args(["--filter", "label=tier"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let web = DockerContainer::run(&format!("{tag}-web-1"), "local/busybox:1", &["tier=front"]);
    let db = DockerContainer::run(&format!("{tag}-db"), "local/busybox:1", &["tier=back"]);
    let unlabelled = DockerContainer::run(&format!("{tag}-web-2"), "local/busybox:1", &[]);
    w.wait_for("container_create", &web.0);
    w.drain_for(Duration::from_secs(2));
    let mine: Vec<&Value> = w
        .seen
        .iter()
        .filter(|e| {
            [&web.0, &db.0, &unlabelled.0].contains(&&e["args"]["container_id"].as_str().unwrap_or("").to_string())
        })
        .collect();
    assert_eq!(mine.len(), 1, "only the labelled web container's create: {mine:#?}");
    assert_eq!(mine[0]["args"]["labels"]["tier"], "front", "labels are in watch's event args");
    drop((web, db, unlabelled));
    std::thread::sleep(Duration::from_secs(1));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(remote.id() as i32), nix::sys::signal::Signal::SIGINT);
    let out = remote.wait_with_output().unwrap();
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = lines.iter().map(|e| e["args"]["container_name"].as_str().unwrap()).collect();
    assert_eq!(names, vec![format!("{tag}-web-1").as_str()], "through the agent: {lines:#?}");
    assert!(lines.iter().all(|e| e["event"] == "container_create"));

    let bad = ctwatch(&["watch", "--filter", "event=start"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("container_create"), "says the valid events");
}

#[test]
fn ls_get_and_the_api_print_one_record() {
    require_root();
    let tag = unique("rec");
    let image = long_image();
    let c = DockerContainer::run(&format!("{tag}-app"), &image, &["team=blue"]);
    let serve = Serve::start(&[]);
    let socket = serve.socket.to_str().unwrap();

    // ls --format json (agent) == get (agent), field for field. The name
    // comes from enrichment, just after the agent's scan.
    let list = || {
        let listed =
            stdout(&ctwatch(&["ls", "--socket", socket, "--format", "json", "--filter", &format!("name={tag}")]));
        listed.lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<Value>>()
    };
    let mut listed = list();
    for _ in 0..100 {
        if !listed.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        listed = list();
    }
    assert_eq!(listed.len(), 1, "name= is a substring: {listed:#?}");
    let got: Value = serde_json::from_str(&stdout(&ctwatch(&["get", "--socket", socket, &c.0]))).unwrap();
    assert_eq!(listed[0], got, "ls --format json and get print the same record");
    assert_eq!(got["labels"]["team"], "blue");
    assert_eq!(got["container_image"], image.as_str());
    // The field names are the API's Container's (proto/ctwatch/v1/ctwatch.proto).
    let api_fields: BTreeSet<&str> = [
        "container_id",
        "container_ctime",
        "container_name",
        "container_image",
        "container_image_digest",
        "runtime",
        "k8s_pod_id",
        "k8s_pod_name",
        "k8s_pod_namespace",
        "k8s_pod_sandbox",
        "cgroup_id",
        "cgroup_path",
        "init_pid",
        "mount_ns",
        "net_ns",
        "labels",
        "state",
    ]
    .into();
    // `annotations` and `hook` only when the runtime hook saw the create, `security`
    // when its config was read; the
    // lifecycle only when known (`started_at`/`finished_at` in RFC 3339, the
    // API's `*_unix_nano`).
    let optional = [
        "annotations",
        "hook",
        "security",
        "started_at",
        "finished_at",
        "exit_code",
        "exit_signal",
        "oom_killed",
        "oom_kills",
        "exe",
        "argv0",
    ];
    let keys: BTreeSet<&str> =
        got.as_object().unwrap().keys().map(String::as_str).filter(|k| !optional.contains(k)).collect();
    assert_eq!(keys, api_fields);

    // Values of one key are ORed, as docker's.
    let either = stdout(&ctwatch(&[
        "ls",
        "--socket",
        socket,
        "-q",
        "--no-trunc",
        "--filter",
        "name=no-such-name",
        "--filter",
        &format!("name={tag}"),
    ]));
    assert_eq!(either.trim(), c.0, "{either}");

    // Names work without an agent too, for get and resolve.
    let name = format!("{tag}-app");
    let alone: Value = serde_json::from_str(&stdout(&ctwatch(&["get", "--standalone", &name]))).unwrap();
    assert_eq!(alone["container_id"], c.0.as_str());
    let resolved = stdout(&ctwatch(&["resolve", "--standalone", &name, "/bin/sh"]));
    assert!(resolved.trim().starts_with("/proc/"), "{resolved}");

    // Tables cut long cells unless --no-trunc.
    let table = stdout(&ctwatch(&["ls", "--socket", socket, "--filter", &format!("name={tag}")]));
    assert!(!table.contains(&image), "{table}");
    let full = stdout(&ctwatch(&["ls", "--socket", socket, "--no-trunc", "--filter", &format!("name={tag}")]));
    assert!(full.contains(&image) && full.contains(&c.0), "{full}");
}

#[test]
fn completions_man_page_and_no_color() {
    let bash = stdout(&ctwatch(&["completions", "bash"]));
    assert!(bash.contains("_ctwatch") && bash.contains("watch") && bash.contains("--no-trunc"));
    let check = Command::new("bash").args(["-n", "-c", &bash]).status().unwrap();
    assert!(check.success(), "the bash completion script parses");
    for shell in ["zsh", "fish"] {
        let script = stdout(&ctwatch(&["completions", shell]));
        assert!(script.contains("ctwatch") && script.contains("resolve"), "{shell}");
    }
    let man = stdout(&ctwatch(&["man"]));
    assert!(man.contains(".TH ctwatch") && man.contains("watch"), "{}", &man[..man.len().min(300)]);
}

#[test]
fn a_denied_socket_and_ignored_flags_say_so() {
    require_root();
    let serve = Serve::start(&[]);
    let socket = serve.socket.to_str().unwrap();
    let user = "ctwatch-cli-test";
    if output("id", &["-u", user]).status.code() != Some(0) {
        run("useradd", &["--no-create-home", "--shell", "/usr/sbin/nologin", user]);
    }
    let out = Command::new("setpriv")
        .args(["--reuid", user, "--regid", user, "--clear-groups", "--"])
        .arg(ctwatch_bin())
        .args(["ls", "--socket", socket])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("permission denied on {socket}: run as root or join group root")), "{err}");

    let out = ctwatch(&["ls", "--socket", socket, "--no-enrich", "--state-root", "/"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("--state-root, --no-enrich ignored: the agent on"), "{err}");
    let out = ctwatch(&["ls", "--socket", socket]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("ignored"));

    // Under a terminal, that warning is coloured unless NO_COLOR is set (`script` is util-linux's).
    let colored = |no_color: bool| {
        let mut cmd = Command::new("script");
        let line = format!("{} ls --socket {socket} --no-enrich", ctwatch_bin().display());
        cmd.args(["-qec", &line, "/dev/null"]).env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("--no-enrich ignored"), "{text}");
        text.contains('\u{1b}')
    };
    assert!(colored(false), "colour on a terminal by default (else this test proves nothing)");
    assert!(!colored(true), "NO_COLOR turns colour off");
}
