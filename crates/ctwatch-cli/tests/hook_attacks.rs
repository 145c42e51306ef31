//! The runtime hook against an ordinary local user who runs the hooked runc
//! with made-up arguments: a real unprivileged user (made with `useradd`),
//! real runc, real Docker. Such a caller cannot create a container, so its
//! exec is reported as untrusted (`hook.trusted: false`, `hook.caller_uid`)
//! and nothing more: no file of it is read, no record looked up, no policy
//! applied, and nothing of it reaches another container's events.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use serde_json::Value;

const DOCKER: &str = "/usr/bin/docker";
const IMAGE: &str = "local/busybox:1";
const TASKS: &str = "/run/containerd/io.containerd.runtime.v2.task";
/// The unprivileged user the tests act as (made once, kept: `useradd` is not undone).
const USER: &str = "ctwatch-attacker";

/// The test user's UID and GID, made on first use.
fn user() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let known = Command::new("id").arg("-u").arg(USER).stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !known.unwrap().success() {
            // Exit 9: made meanwhile by another test binary.
            let status = Command::new("useradd").args(["--no-create-home", "--shell", "/bin/sh", USER]).status();
            assert!(status.is_ok_and(|s| s.success() || s.code() == Some(9)), "useradd {USER}");
        }
        let uid = run("id", &["-u", USER]).parse().unwrap();
        let gid = run("id", &["-g", USER]).parse().unwrap();
        (uid, gid)
    })
}

/// Runs the hooked runc as the test user (its own state root, so it gets as
/// far as it can; whether it succeeds does not matter: its exec was seen).
fn runc_as_user(args: &[&str]) -> Output {
    let (uid, gid) = user();
    let root = std::env::temp_dir().join(format!("ctwatch-attacker-state-{uid}"));
    fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::chown(&root, Some(uid), Some(gid)).unwrap();
    Command::new("/usr/sbin/runc")
        .arg("--root")
        .arg(&root)
        .args(args)
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .expect("an untrusted caller's runc exec is allowed, whatever the policy")
}

/// A directory the test user owns, removed when dropped.
struct UserDir(PathBuf);

impl UserDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(tag));
        fs::create_dir_all(&dir).unwrap();
        let (uid, gid) = user();
        Self::chown_all(&dir, uid, gid);
        UserDir(dir)
    }

    fn chown_all(dir: &Path, uid: u32, gid: u32) {
        run("chown", &["-R", &format!("{uid}:{gid}"), dir.to_str().unwrap()]);
    }

    /// Writes a file the user owns.
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.0.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        let (uid, gid) = user();
        Self::chown_all(&self.0, uid, gid);
        path
    }
}

impl Drop for UserDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A root-only file (mode 0600) holding a config full of secrets, removed when dropped.
struct Secret(PathBuf);

impl Secret {
    fn new() -> Self {
        let path = std::env::temp_dir().join(unique("ctwatch-secret"));
        fs::write(
            &path,
            r#"{"ociVersion":"1.0.2","hostname":"SECRET-HOSTNAME","process":{"args":["SECRET-ARG"]},
               "annotations":{"io.kubernetes.cri.sandbox-name":"SECRET-POD","secret":"SECRET-ANNOTATION"}}"#,
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        Secret(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Removes a Docker container by name when dropped.
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(DOCKER).args(["rm", "-f", &self.0]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// A config the attacker controls: its own image, pod, hostname and args.
const EVIL_CONFIG: &str = r#"{"ociVersion":"1.0.2","hostname":"EVIL-HOSTNAME","process":{"args":["EVIL-ARG"]},
  "annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-name":"EVIL-POD",
  "io.kubernetes.cri.image-name":"local/ctwatch-evil:1","io.kubernetes.cri.container-name":"EVIL-NAME"}}"#;

/// Asserts no event seen mentions any of `words`.
fn assert_never_seen(seen: &[Value], words: &[&str]) {
    for event in seen {
        let text = event.to_string();
        for word in words {
            assert!(!text.contains(word), "{word} reached an event: {event}");
        }
    }
}

/// The untrusted precreates for `id`: each says so, with the caller's UID, and carries nothing it claimed but the ID.
fn untrusted_precreates<'a>(seen: &'a [Value], id: &str) -> Vec<&'a Value> {
    let (uid, _) = user();
    let untrusted: Vec<&Value> =
        seen.iter().filter(|e| e["args"]["container_id"] == id && e["hook"]["trusted"] == false).collect();
    for e in &untrusted {
        assert_eq!(e["event"], "container_precreate", "an untrusted exec is only a precreate: {e}");
        assert_eq!(e["hook"]["caller_uid"], uid, "{e}");
        assert_eq!(e["args"]["runtime"], "runc", "no runtime taken from its claims: {e}");
        assert!(e["hook"]["oci"].is_null() && e["hook"]["verdict"].is_null(), "{e}");
    }
    untrusted
}

fn write_policy(dir: &Path) -> PathBuf {
    let path = dir.join("policy.toml");
    fs::write(
        &path,
        "mode = \"enforce\"\n[[deny]]\nname = \"no-evil\"\nreason = \"evil image\"\n\
         image = [\"local/ctwatch-evil:*\"]\n",
    )
    .unwrap();
    path
}

#[test]
fn a_user_cannot_speak_for_a_running_docker_container() {
    require_root();
    // The real container runs before the enforcing policy that would deny its image.
    let name = unique("attack-victim");
    let _remove = RemoveOnDrop(name.clone());
    let id = run(DOCKER, &["run", "-d", "--name", &name, IMAGE, "sleep", "120"]);
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path());
    let mut watch = Watch::start_with("auto", &["--hook", "on", "--policy", policy.to_str().unwrap()]);
    watch.wait_until(Duration::from_secs(30), "the victim at start", |seen| has_event(seen, "existing_container", &id));

    let attack = UserDir::new("ctwatch-attack");
    // 1. Its own bundle, the victim's ID.
    attack.write("x/config.json", EVIL_CONFIG);
    let plain = attack.0.join("x");
    runc_as_user(&["create", "--bundle", plain.to_str().unwrap(), &id]);
    // 2. A bundle path that looks like Docker's, with a pid file naming a root-only file.
    let fake_bundle = attack.write(&format!("{}/moby/{id}/config.json", TASKS.trim_start_matches('/')), EVIL_CONFIG);
    let fake_bundle = fake_bundle.parent().unwrap().to_str().unwrap().to_string();
    let secret = Secret::new();
    fs::write("/tmp/ctwatch-attack-root-only-pid", "1\n").unwrap();
    fs::set_permissions("/tmp/ctwatch-attack-root-only-pid", fs::Permissions::from_mode(0o600)).unwrap();
    runc_as_user(&["create", "--bundle", &fake_bundle, "--pid-file", "/tmp/ctwatch-attack-root-only-pid", &id]);
    // 3. config.json a symlink to a root-only file, and `-f` naming it.
    let linked = attack.0.join("linked");
    fs::create_dir_all(&linked).unwrap();
    std::os::unix::fs::symlink(secret.path(), linked.join("config.json")).unwrap();
    UserDir::chown_all(&attack.0, user().0, user().1);
    let secret_id = unique("attack-secret");
    runc_as_user(&["create", "--bundle", linked.to_str().unwrap(), &secret_id]);
    let f_id = unique("attack-f");
    runc_as_user(&["create", "-f", secret.path(), "--bundle", plain.to_str().unwrap(), &f_id]);

    watch.wait_until(Duration::from_secs(20), "the four untrusted precreates", |seen| {
        untrusted_precreates(seen, &id).len() >= 2
            && has_event(seen, "container_precreate", &secret_id)
            && has_event(seen, "container_precreate", &f_id)
    });
    watch.drain_for(Duration::from_millis(500));
    for other in [&secret_id, &f_id] {
        assert_eq!(untrusted_precreates(&watch.seen, other).len(), 1, "{:#?}", watch.about(other));
    }
    // Nothing the attacker wrote or pointed at reached any event, nor the victim's name next to its exec.
    assert_never_seen(&watch.seen, &["EVIL-", "local/ctwatch-evil", "SECRET-", "ctwatch-attack-root-only-pid"]);
    for e in untrusted_precreates(&watch.seen, &id) {
        assert_ne!(e["args"]["container_name"], name.as_str(), "no record looked up for it: {e}");
        assert_ne!(e["args"]["container_image"], IMAGE, "{e}");
    }
    // No violation names the victim, which keeps running.
    assert!(!has_event(&watch.seen, "container_policy_violation", &id), "{:#?}", watch.about(&id));
    assert_eq!(run(DOCKER, &["inspect", "-f", "{{.State.Running}}", &id]), "true");

    // The victim's own events carry nothing of the attacker's.
    run(DOCKER, &["rm", "-f", &name]);
    watch.wait_for("container_remove", &id);
    let remove = watch.event("container_remove", &id);
    assert!(remove["hook"].is_null(), "no hook findings attached to the victim: {remove}");
    let _ = fs::remove_file("/tmp/ctwatch-attack-root-only-pid");
}

#[test]
fn a_squatted_id_does_not_take_over_roots_create() {
    require_root();
    let mut watch = Watch::start_with("auto", &["--no-existing", "--hook", "on"]);
    let id = unique("attack-squat");
    let attack = UserDir::new("ctwatch-squat");
    attack.write("b/config.json", EVIL_CONFIG);
    runc_as_user(&["create", "--bundle", attack.0.join("b").to_str().unwrap(), &id]);
    watch.wait_until(Duration::from_secs(20), "the squatter's precreate", |seen| {
        has_event(seen, "container_precreate", &id)
    });
    assert_eq!(untrusted_precreates(&watch.seen, &id).len(), 1, "reported as untrusted: {:#?}", watch.about(&id));
    // Root now creates a container with that ID.
    let bundle = runc_bundle(&id, &["sleep", "60"]);
    let _cleanup = DeleteRunc(id.clone(), bundle.clone());
    run_detached("runc", &["run", "-d", "--bundle", bundle.to_str().unwrap(), &id]);
    watch.wait_for("container_create", &id);
    let trusted: Vec<&Value> = watch
        .seen
        .iter()
        .filter(|e| e["event"] == "container_precreate" && e["args"]["container_id"] == id.as_str())
        .filter(|e| e["hook"]["trusted"] == true)
        .collect();
    assert_eq!(trusted.len(), 1, "root's own precreate: {:#?}", watch.about(&id));
    assert_eq!(trusted[0]["hook"]["bundle"], bundle.to_str().unwrap());
    assert_eq!(trusted[0]["hook"]["caller_uid"], 0);
    let create = watch.event("container_create", &id);
    assert_eq!(create["hook"]["bundle"], bundle.to_str().unwrap(), "root's bundle: {create}");
    assert_eq!(create["hook"]["trusted"], true, "{create}");
    watch.wait_for("container_start", &id);
    let start = watch.event("container_start", &id);
    assert!(start["args"]["init_pid"].as_u64().is_some_and(|p| p > 0), "{start}");
    assert_never_seen(&watch.seen, &["EVIL-"]);
}

/// A process other than `init` whose cgroup names container `id`.
fn process_in_container(id: &str, init: u32) -> Option<u32> {
    for _ in 0..100 {
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
            let cgroup = fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if pid != init && cgroup.contains(id) && comm.trim() == "sleep" {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Deletes a runc container and its bundle when dropped.
struct DeleteRunc(String, PathBuf);

impl Drop for DeleteRunc {
    fn drop(&mut self) {
        let _ = Command::new("runc").args(["delete", "-f", &self.0]).stderr(Stdio::null()).status();
        let _ = fs::remove_dir_all(&self.1);
    }
}

#[test]
fn with_the_hook_alone_a_pid_file_cannot_end_a_running_container() {
    require_root();
    // Running before ctwatch starts: found by the scan, not followed by the hook.
    let name = unique("attack-hookonly");
    let _remove = RemoveOnDrop(name.clone());
    let id = run(DOCKER, &["run", "-d", "--name", &name, IMAGE, "sleep", "120"]);
    let mut watch = Watch::start_with("hook", &[]);
    watch.wait_for("existing_container", &id);
    let (out, _attack) = pid_file_attack(&name, &id);
    // The named process ends; the container does not.
    watch.drain_for(Duration::from_secs(4));
    assert!(!has_event(&watch.seen, "container_remove", &id), "{out:?} {:#?}", watch.about(&id));
    assert_eq!(untrusted_precreates(&watch.seen, &id).len(), 1, "reported as untrusted: {:#?}", watch.about(&id));
    assert_eq!(run(DOCKER, &["inspect", "-f", "{{.State.Running}}", &id]), "true");
    // (A container found at start is not followed by the hook alone: its real end is not awaited here.)
    run(DOCKER, &["rm", "-f", &name]);
}

/// As the test user, runs `runc create` of container `id` with a pid file
/// naming a short-lived process (`sleep 2`) inside that real container (the
/// user's directory is kept until the result is dropped).
fn pid_file_attack(name: &str, id: &str) -> (Output, UserDir) {
    // A short-lived process inside the real container, named by the attacker's pid file.
    run(DOCKER, &["exec", "-d", name, "sleep", "2"]);
    let init: u32 = run(DOCKER, &["inspect", "-f", "{{.State.Pid}}", id]).parse().unwrap();
    let short = process_in_container(id, init).expect("the exec'd sleep in the container").to_string();
    let attack = UserDir::new("ctwatch-pidfile");
    // No claimed image: the enforcing policy of the test next door does not apply to it.
    attack.write("b/config.json", r#"{"ociVersion":"1.0.2","hostname":"EVIL-HOSTNAME"}"#);
    let pid_file = attack.write("pid", &short);
    let out = runc_as_user(&[
        "create",
        "--bundle",
        attack.0.join("b").to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        id,
    ]);
    (out, attack)
}

#[test]
fn with_the_hook_alone_ls_keeps_a_container_a_pid_file_names() {
    require_root();
    let name = unique("attack-ls");
    let _remove = RemoveOnDrop(name.clone());
    let id = run(DOCKER, &["run", "-d", "--name", &name, IMAGE, "sleep", "120"]);
    let serve = serve::Serve::start(&["--source", "hook", "--hook", "on"]);
    let socket = serve.socket.to_str().unwrap().to_string();
    let ls = || run(ctwatch_bin().to_str().unwrap(), &["ls", "-q", "--no-trunc", "--socket", &socket]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !ls().contains(&id) {
        assert!(std::time::Instant::now() < deadline, "ls never listed the container");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (out, _attack) = pid_file_attack(&name, &id);
    std::thread::sleep(Duration::from_secs(4));
    assert!(ls().contains(&id), "ls keeps the running container: {out:?}");
    assert_eq!(run(DOCKER, &["inspect", "-f", "{{.State.Running}}", &id]), "true");
}
