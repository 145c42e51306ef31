//! The deadline answers a held runtime exec when ctwatch's worker is stuck;
//! a dropped hook leaves no fanotify group and holds nothing.
//!
//! A worker is made to hang for real: the exec looks like a containerd
//! container (its bundle is under `io.containerd.runtime.v2.task/<ns>/`), so
//! the worker asks containerd, and the containerd socket given here is a real
//! unix socket that accepts connections and never answers. The runtime is a
//! private copy of runc, so no other runtime exec on the machine is held.
//! Needs root (fanotify permission events); skipped otherwise.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use ctwatch::hook::HookMessage;
use ctwatch::sources::SourceMessage;
use ctwatch_hook::identity::IdentitySources;
use ctwatch_hook::{Hook, HookConfig};

/// The tests count this process's fanotify groups: one test at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How long the stuck containerd lookup lasts: far beyond the deadline.
const STUCK_FOR: Duration = Duration::from_secs(4);

struct Setup {
    _serial: std::sync::MutexGuard<'static, ()>,
    _dir: tempfile::TempDir,
    runc: PathBuf,
    _listener: UnixListener,
    socket: PathBuf,
}

fn setup() -> Option<Setup> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: fanotify permission events need root");
        return None;
    }
    let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let runc = dir.path().join("runc");
    std::fs::copy(which_runc()?, &runc).unwrap();
    let socket = dir.path().join("containerd.sock");
    let listener = UnixListener::bind(&socket).unwrap(); // never accepts: every call hangs
    Some(Setup { _serial: serial, _dir: dir, runc, _listener: listener, socket })
}

fn which_runc() -> Option<PathBuf> {
    let found = ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        eprintln!("skipped: no runc binary to copy");
    }
    found
}

fn config(setup: &Setup, fail_closed: bool) -> HookConfig {
    HookConfig {
        runtime_paths: vec![setup.runc.clone()],
        replace_default_paths: true,
        deadline: Duration::from_millis(100),
        fail_closed,
        identity: IdentitySources {
            containerd_socket: Some(setup.socket.clone()),
            containerd_timeout: STUCK_FOR,
            ..IdentitySources::default()
        },
        workers: 1,
        ..HookConfig::default()
    }
}

/// Runs `runc create` of a containerd-looking container with the private copy.
/// Through a shell, so the test thread is not itself the exec being held.
fn runc_create(runc: &Path, id: &str) -> Output {
    let bundle = format!("/nonexistent/io.containerd.runtime.v2.task/ctwatch-test/{id}");
    Command::new("sh")
        .args(["-c", "exec \"$0\" \"$@\""])
        .arg(runc)
        .args(["create", "--bundle", &bundle, id])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The precreate for `id`, waiting for the stuck worker to come back.
fn precreate(rx: &crossbeam_channel::Receiver<SourceMessage>, id: &str) -> ctwatch::hook::HookInfo {
    loop {
        let message = rx.recv_timeout(STUCK_FOR * 3).expect("the precreate arrives once the worker is unstuck");
        if let SourceMessage::Hook(m) = message {
            if let HookMessage::Precreate { container, info, .. } = *m {
                if container.id == id {
                    return *info;
                }
            }
        }
    }
}

#[test]
fn the_deadline_allows_a_held_exec_when_the_worker_is_stuck() {
    let Some(setup) = setup() else { return };
    let (tx, rx) = crossbeam_channel::unbounded();
    let hook = Hook::start(config(&setup, false), tx).unwrap();
    let out = runc_create(&setup.runc, "deadline-open");
    // The exec went through (runc itself then fails: the bundle does not exist)
    // while the worker was still stuck: nothing has come out of it yet.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("Operation not permitted"), "allowed by the deadline: {stderr}");
    assert!(rx.try_recv().is_err(), "the worker is still waiting for containerd");
    assert_eq!(hook.stats().deadline_answers.load(Ordering::Relaxed), 1);
    let info = precreate(&rx, "deadline-open");
    assert!(info.answered_by_deadline);
    assert!(info.answer_us >= STUCK_FOR.as_micros() as u64 / 2, "the worker's own answer came much later");
}

#[test]
fn fail_closed_denies_a_held_exec_when_the_worker_is_stuck() {
    let Some(setup) = setup() else { return };
    let (tx, rx) = crossbeam_channel::unbounded();
    let hook = Hook::start(config(&setup, true), tx).unwrap();
    let out = runc_create(&setup.runc, "deadline-closed");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Operation not permitted"), "refused by the deadline: {stderr}");
    assert_eq!(hook.stats().deadline_answers.load(Ordering::Relaxed), 1);
    let info = precreate(&rx, "deadline-closed");
    assert!(info.answered_by_deadline);
}

fn fanotify_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("fanotify")))
        .count()
}

#[test]
fn dropping_the_hook_leaves_no_group_and_execs_run_unheld() {
    let Some(setup) = setup() else { return };
    let before = fanotify_fds();
    for _ in 0..20 {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let hook = Hook::start(HookConfig { workers: 1, ..config(&setup, true) }, tx).unwrap();
        assert_eq!(fanotify_fds(), before + 1, "one group per hook");
        drop(hook);
    }
    assert_eq!(fanotify_fds(), before, "every group closed");
    // Unmarked and closed: the fail-closed deadline no longer applies.
    let out = Command::new(&setup.runc).arg("--version").output().unwrap();
    assert!(out.status.success());
}
