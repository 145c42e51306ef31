//! An ordinary user against the hook (issue 12, items 4 and 5): argv in
//! pages of a FUSE file whose reads never answer must not wedge the hook,
//! stop ctwatch from stopping, or keep runtimes held after a SIGKILL; and a
//! big or unreadable `config.json` must not pass an enforcing policy.
//!
//! Real things only: a user made with `useradd`, a real FUSE mount made by
//! that user with `fusermount3` (tests/python/stuck_fuse.py, stdlib only),
//! and a small C program (tests/python/exec_stuck_argv.c, built with gcc)
//! that executes runc with its argv pointers in that mount.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const DENY_ANNOTATION: &str = "ctwatch.test/deny";

/// A local user, removed when dropped.
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

impl User {
    fn new(tag: &str) -> User {
        let name = format!("ctwfz{tag}{}", std::process::id());
        let _ = Command::new("userdel").args(["-f", &name]).stderr(Stdio::null()).status();
        run("useradd", &["-M", "-U", "-s", "/bin/sh", &name]);
        let uid = run("id", &["-u", &name]).parse().unwrap();
        let gid = run("id", &["-g", &name]).parse().unwrap();
        User { name, uid, gid }
    }

    /// A command run as this user (no groups, no capabilities).
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &self.uid.to_string(), "--regid", &self.gid.to_string(), "--clear-groups", "--"]);
        c.arg(program);
        c
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").args(["-f", &self.name]).stderr(Stdio::null()).status();
    }
}

/// One attack at a time: each saves and restores `/dev/fuse`'s mode.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `/dev/fuse` opened to every user (Debian's default), restored when dropped.
struct DevFuseForAll(u32, #[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

impl DevFuseForAll {
    fn new() -> DevFuseForAll {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let mode = fs::metadata("/dev/fuse").expect("/dev/fuse (apt-get install fuse3)").permissions().mode();
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
        DevFuseForAll(mode & 0o7777, turn)
    }
}

impl Drop for DevFuseForAll {
    fn drop(&mut self) {
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.0));
    }
}

/// The user's FUSE mount whose reads never answer, and the attacker's tools.
struct Attack {
    dir: tempfile::TempDir,
    daemon: Child,
    mount: PathBuf,
    helper: PathBuf,
    /// A private copy of runc (hooked alone, so no other test's runtime waits on us).
    runc: PathBuf,
    execs: Vec<Child>,
    _fuse: DevFuseForAll,
    user: User,
}

impl Attack {
    fn new(tag: &str) -> Attack {
        require_root();
        let fuse = DevFuseForAll::new();
        let user = User::new(tag);
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let runc = dir.path().join("runc");
        fs::copy("/usr/sbin/runc", &runc).unwrap();
        let helper = dir.path().join("exec_stuck_argv");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/exec_stuck_argv.c");
        run("gcc", &["-O1", "-o", helper.to_str().unwrap(), source.to_str().unwrap()]);
        let mount = dir.path().join("mnt");
        fs::create_dir(&mount).unwrap();
        nix::unistd::chown(&mount, Some(user.uid.into()), Some(user.gid.into())).unwrap();
        // Where the user can read it; the system's Python (a root-only pyenv is out of the user's reach).
        let script = dir.path().join("stuck_fuse.py");
        fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/stuck_fuse.py"), &script).unwrap();
        let daemon = user
            .command(Path::new("/usr/bin/python3"))
            .arg(&script)
            .arg(&mount)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut attack = Attack { dir, daemon, mount, helper, runc, execs: Vec::new(), _fuse: fuse, user };
        let mut line = String::new();
        BufReader::new(attack.daemon.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "mounted", "the user's FUSE file system is mounted");
        // (Only its user can look into it: root's stat is refused without allow_other.)
        attack
    }

    fn runc(&self) -> &str {
        self.runc.to_str().unwrap()
    }

    /// As the user: exec the private runc with argv in page `page` of the stuck file.
    fn stuck_exec(&mut self, page: usize) -> usize {
        let child = self
            .user
            .command(&self.helper)
            .arg(self.mount.join("argv"))
            .arg(&self.runc)
            .arg(page.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.execs.push(child);
        self.execs.len() - 1
    }

    /// Waits (15 s at most) for stuck exec `i` to end; its exit code and output.
    fn wait_exec(&mut self, i: usize) -> (Option<i32>, String) {
        let started = Instant::now();
        let child = &mut self.execs[i];
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "the stuck exec was never answered");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out);
        (status.code(), out)
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        for c in &mut self.execs {
            let _ = c.kill();
        }
        // The daemon's end of /dev/fuse closing aborts the connection: every read still waiting fails.
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        for c in &mut self.execs {
            let _ = c.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mount).stderr(Stdio::null()).status();
        let _ = self.dir.path();
    }
}

fn write_enforce_policy(dir: &Path) -> PathBuf {
    let path = dir.join("policy.toml");
    fs::write(
        &path,
        format!(
            "mode = \"enforce\"\n[[deny]]\nname = \"test-deny\"\nannotations = {{ \"{DENY_ANNOTATION}\" = \"yes\" }}\n"
        ),
    )
    .unwrap();
    path
}

/// A runc bundle; `edit` changes its config.
fn bundle(tag: &str, edit: impl FnOnce(&mut Value)) -> (String, PathBuf) {
    let id = unique(tag);
    let bundle = runc_bundle(&id, &["sleep", "60"]);
    let config = bundle.join("config.json");
    let mut spec: Value = serde_json::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    edit(&mut spec);
    fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
    (id, bundle)
}

/// Runs `runc run -d` of a bundle (as root); its exit status and stderr. The container is deleted after.
fn runc_run(runc: &str, id: &str, bundle: &Path) -> (bool, String) {
    // stderr to a file: a detached container keeps runc's stdio open (a pipe would wait for it).
    let log = bundle.with_extension("stderr");
    let out = Command::new(runc)
        .args(["run", "-d", "--bundle", bundle.to_str().unwrap(), id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .status();
    let _ = Command::new(runc).args(["delete", "-f", id]).stderr(Stdio::null()).status();
    let _ = fs::remove_dir_all(bundle);
    let stderr = fs::read_to_string(&log).unwrap_or_default();
    let _ = fs::remove_file(&log);
    match out {
        Ok(status) => (status.success(), stderr),
        // FAN_DENY fails our own execve of runc with EPERM.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => (false, "exec: operation not permitted".into()),
        Err(e) => panic!("cannot run {runc}: {e}"),
    }
}

fn unverifiable_warnings(watch: &Watch) -> usize {
    watch.log.lock().unwrap().iter().filter(|l| l.contains("runtime exec unverifiable")).count()
}

#[test]
fn a_user_with_a_stuck_fuse_argv_cannot_wedge_the_hook_or_its_stop() {
    let mut attack = Attack::new("a");
    let policy = write_enforce_policy(attack.dir.path());
    let runc = attack.runc().to_string();
    let mut watch = Watch::start_with(
        "hook",
        &[
            "--no-existing",
            "--runtime-path",
            &runc,
            "--only-runtime-paths",
            "--policy",
            policy.to_str().unwrap(),
            "--hook-deadline",
            "1s",
        ],
    );
    // More stuck execs than the hook has workers.
    for page in 0..6 {
        attack.stuck_exec(page);
    }
    let started = Instant::now();
    while unverifiable_warnings(&watch) < 6 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "every stuck exec is answered and reported unverifiable; log: {:#?}",
            watch.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let warning = watch.log.lock().unwrap().iter().find(|l| l.contains("runtime exec unverifiable")).cloned().unwrap();
    assert!(warning.contains("took longer than"), "the log says why: {warning}");
    // ... and so do the events: untrusted precreates with no ID, the caller and why.
    watch.wait_until(Duration::from_secs(10), "6 unverifiable precreates", |seen| {
        seen.iter().filter(|e| e["hook"]["oci_error"].as_str().is_some_and(|w| w.starts_with("unverifiable: "))).count()
            >= 6
    });
    let reported = watch
        .seen
        .iter()
        .find(|e| e["hook"]["oci_error"].as_str().is_some_and(|w| w.starts_with("unverifiable: ")))
        .unwrap()
        .clone();
    assert_eq!(reported["event"], "container_precreate");
    assert_eq!(reported["args"]["container_id"], "");
    assert_eq!(reported["hook"]["trusted"], false);
    assert_eq!(reported["hook"]["caller_uid"], attack.user.uid);
    assert!(reported["hook"]["oci_error"].as_str().unwrap().contains("allowed (fail-open)"), "{reported}");
    // With that many of the user's reads still stuck, the next is not even tried (no worker waits on it)...
    attack.stuck_exec(6);
    let started = Instant::now();
    while !watch.logged("are still stuck") {
        assert!(started.elapsed() < Duration::from_secs(30), "the user's share of stuck reads is capped");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(watch.logged(&format!("of uid {}'s execs", attack.user.uid)));

    // ... but root's execs are still read: its containers are still seen before they start...
    let (id, dir) = bundle("fuse-ok", |_| {});
    let (ok, stderr) = runc_run(&runc, &id, &dir);
    assert!(ok, "an allowed container runs: {stderr}");
    watch.wait_for("container_precreate", &id);
    // ... and the policy is still enforced.
    let (id, dir) = bundle("fuse-denied", |s| s["annotations"] = serde_json::json!({ DENY_ANNOTATION: "yes" }));
    let (ok, stderr) = runc_run(&runc, &id, &dir);
    assert!(!ok && stderr.contains("operation not permitted"), "a denied container is refused: {stderr}");
    watch.wait_for("container_policy_violation", &id);
    assert_eq!(watch.event("container_policy_violation", &id)["hook"]["verdict"]["rule"], "test-deny");

    // 4.8 MB of environment: read in full, the annotation is seen, refused.
    let env: Vec<String> = (0..4800).map(|i| format!("BIG{i}={}", "x".repeat(1000))).collect();
    let (id, dir) = bundle("fuse-bigenv", |s| {
        s["process"]["env"] = serde_json::json!(env);
        s["annotations"] = serde_json::json!({ DENY_ANNOTATION: "yes" });
    });
    assert!(fs::metadata(dir.join("config.json")).unwrap().len() > 4_800_000);
    let (ok, stderr) = runc_run(&runc, &id, &dir);
    assert!(!ok && stderr.contains("operation not permitted"), "a big denied config is refused: {stderr}");
    watch.wait_for("container_policy_violation", &id);
    assert_eq!(watch.event("container_policy_violation", &id)["hook"]["verdict"]["rule"], "test-deny");

    // Over the cap (64 MiB): unverifiable, refused by enforce.
    let (id, dir) =
        bundle("fuse-huge", |s| s["process"]["env"] = serde_json::json!([format!("H={}", "y".repeat(65 << 20))]));
    let (ok, stderr) = runc_run(&runc, &id, &dir);
    assert!(!ok && stderr.contains("operation not permitted"), "an oversized config is refused: {stderr}");
    watch.wait_for("container_policy_violation", &id);
    let verdict = &watch.event("container_policy_violation", &id)["hook"]["verdict"];
    assert_eq!(verdict["rule"], "unverifiable", "{verdict}");
    assert!(verdict["reason"].as_str().unwrap().contains("more than"), "{verdict}");

    // Malformed: refused too.
    let (id, dir) = bundle("fuse-bad", |_| {});
    fs::write(dir.join("config.json"), b"{\"ociVersion\": ").unwrap();
    let (ok, _) = runc_run(&runc, &id, &dir);
    assert!(!ok);
    watch.wait_for("container_policy_violation", &id);
    assert_eq!(watch.event("container_policy_violation", &id)["hook"]["verdict"]["rule"], "unverifiable");

    // SIGINT stops ctwatch while the user's reads are still stuck.
    let pid = watch.pid();
    let stuck_readers = output("pgrep", &["-P", &pid.to_string()]);
    assert!(!stuck_readers.stdout.is_empty(), "the stuck reads are still there (children of ctwatch)");
    let status = watch.interrupt();
    assert!(status.code().is_some(), "ctwatch exited on SIGINT: {status:?}");
}

#[test]
fn fail_closed_denies_a_stuck_exec_and_sigkill_releases_held_execs() {
    let mut attack = Attack::new("b");
    let runc = attack.runc().to_string();
    let watch = Watch::start_with(
        "hook",
        &["--no-existing", "--runtime-path", &runc, "--only-runtime-paths", "--fail-closed", "--hook-deadline", "1s"],
    );
    let i = attack.stuck_exec(3);
    let (code, out) = attack.wait_exec(i);
    assert_eq!(code, Some(13), "the unverifiable exec is denied under --fail-closed: {out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    assert_eq!(unverifiable_warnings(&watch), 1);
    // Root's execs are still read and allowed under --fail-closed while the user's read is stuck.
    let out = Command::new(&runc).arg("--version").stdin(Stdio::null()).output().expect("runc --version is allowed");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("runc version"));

    // Hold a root exec (ctwatch stopped cannot answer), then SIGKILL ctwatch
    // while its reader of the user's argv is still stuck: the exec goes on.
    let ctwatch = Pid::from_raw(watch.pid() as i32);
    kill(ctwatch, Signal::SIGSTOP).unwrap();
    let mut held = Command::new("sh")
        .args(["-c", "exec \"$0\" --version", &runc])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(held.try_wait().unwrap().is_none(), "the exec waits for ctwatch");
    kill(ctwatch, Signal::SIGKILL).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = held.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the exec is still held after ctwatch was killed");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    drop(watch);
    // And the next exec of runc runs at once.
    assert!(Command::new(&runc).arg("--version").stdout(Stdio::null()).status().unwrap().success());
}

/// With eBPF loaded, the argv of a held exec comes from the in-kernel capture, which reads
/// without faulting: the FUSE argv is unverifiable at once (no reader is forked, none is left
/// stuck), and a normal `runc run` gets its argv from eBPF too.
#[test]
fn under_ebpf_a_fuse_argv_is_unverifiable_without_a_stuck_read_and_runc_argvs_come_from_ebpf() {
    let mut attack = Attack::new("e");
    let runc = attack.runc().to_string();
    let mut watch = Watch::start_with(
        "ebpf",
        &["--hook", "on", "--no-existing", "--runtime-path", &runc, "--only-runtime-paths", "--fail-closed"],
    );
    assert!(watch.logged("runtime argvs captured by eBPF"), "{:#?}", watch.log.lock().unwrap());
    let i = attack.stuck_exec(0);
    let (code, out) = attack.wait_exec(i);
    assert_eq!(code, Some(13), "the unverifiable exec is denied under --fail-closed: {out}");
    let warning = watch.log.lock().unwrap().iter().find(|l| l.contains("runtime exec unverifiable")).cloned();
    let warning = warning.expect("the exec is reported unverifiable");
    assert!(
        warning.contains("that a user serves (FUSE or userfaultfd; read by eBPF"),
        "the eBPF capture said so: {warning}"
    );
    watch.wait_until(Duration::from_secs(10), "the unverifiable precreate", |seen| {
        seen.iter().any(|e| e["hook"]["oci_error"].as_str().is_some_and(|w| w.contains("read by eBPF")))
    });
    // No reader was forked, so none is stuck.
    let children = output("pgrep", &["-P", &watch.pid().to_string()]);
    assert!(children.stdout.is_empty(), "no stuck reader: {}", String::from_utf8_lossy(&children.stdout));

    // A normal container: its runtime's argv comes from eBPF, and it is seen before it starts.
    let (id, dir) = bundle("ebpf-ok", |_| {});
    let (ok, stderr) = runc_run(&runc, &id, &dir);
    assert!(ok, "an allowed container runs: {stderr}");
    watch.wait_for("container_precreate", &id);
    assert_eq!(watch.event("container_precreate", &id)["hook"]["trusted"], true);
    let log = watch.log.clone();
    let status = watch.interrupt();
    assert!(status.code().is_some(), "ctwatch exited on SIGINT: {status:?}");
    let log = log.lock().unwrap();
    let stopping = log.iter().find(|l| l.contains("runtime hook stopping")).expect("the hook's closing line");
    let count = |field: &str| -> u64 {
        let at = stopping.find(&format!("{field}=")).unwrap_or_else(|| panic!("{field} in {stopping}"));
        stopping[at + field.len() + 1..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    assert!(count("argv_from_ebpf") >= 2, "the attack's exec and runc's: {stopping}");
    assert_eq!(count("argv_from_proc"), 0, "no argv was read from /proc: {stopping}");
}
