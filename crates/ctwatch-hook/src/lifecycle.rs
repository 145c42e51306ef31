//! After a create was allowed: the container's init PID from the pid file (or
//! the runtime's `state.json`), and, when the hook is the only source, its
//! end, seen with a pidfd (ctwatch runs in the host PID namespace) or, where
//! pidfds are not available, by polling `/proc`. With a kernel source the
//! cgroup's rmdir says when a container is gone, so inits are not followed
//! past their start (no fd per running container). One thread, no fanotify
//! group per container: a create that fails leaves nothing behind.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use ctwatch::cgroupfs::{self, Hierarchy};
use ctwatch::hook::HookMessage;
use ctwatch::sources::{CgroupChange, CgroupEvent, Origin, SourceMessage};
use ctwatch::untrusted::read_capped;
use tracing::debug;

use crate::caller::CallerFs;

/// How often pid files are looked at while a create is under way.
const WAITING_TICK: Duration = Duration::from_millis(5);
/// How often the loop wakes when only running containers are followed.
const IDLE_TICK: Duration = Duration::from_millis(200);
/// A create whose runtime is still alive but has written no pid file after this long is given up on.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// The largest pid file or `state.json` read.
const MAX_STATE_BYTES: u64 = ctwatch::untrusted::MAX_RUNTIME_FILE;

/// A create to follow.
#[derive(Debug)]
pub struct Track {
    /// The container ID.
    pub id: String,
    /// The runtime process (runc/crun/conmon) that was allowed to run.
    pub owner_pid: u32,
    /// A pidfd for it, when the kernel has them.
    pub owner: Option<OwnedFd>,
    /// The runtime process's start time (`/proc/<pid>/stat` field 22), taken
    /// while its exec was held: an init PID must be of a process started later.
    pub owner_start: Option<u64>,
    /// Where the init PID will be written (the caller's path, read through `fs`).
    pub pid_file: Option<PathBuf>,
    /// The runtime's `state.json` for the container (holds `init_process_pid`).
    pub state_json: Option<PathBuf>,
    /// The caller's root and credentials, to read its files as it would
    /// (`None`: the paths are read as they are, as ctwatch; only for tests).
    pub fs: Option<Arc<CallerFs>>,
}

enum Followed {
    Waiting { track: Track, since: Instant },
    Running { id: String, init_pid: u32, pidfd: Option<OwnedFd>, start_time: Option<u64>, cgroup: Option<CgroupEvent> },
}

/// Opens a pidfd for `pid` (`None` when the kernel has no `pidfd_open` or the process is gone).
pub fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd, owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether a pidfd says its process has exited (it polls readable then).
fn has_exited(pidfd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
}

/// A process's start time (field 22 of `/proc/<pid>/stat`): tells a PID's reuse apart.
pub fn start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// A file the runtime was told of, read as its caller would.
fn read_caller_file(track: &Track, path: &Path) -> Option<Vec<u8>> {
    match &track.fs {
        Some(fs) => fs.read(path, MAX_STATE_BYTES).ok(),
        None => read_capped(path, MAX_STATE_BYTES).ok(),
    }
}

/// The PID in a pid file or a runc/crun `state.json`.
fn read_init_pid(track: &Track) -> Option<u32> {
    if let Some(file) = &track.pid_file {
        let text = read_caller_file(track, file)?;
        return String::from_utf8_lossy(&text).trim().parse().ok().filter(|&p| p > 0);
    }
    #[derive(serde::Deserialize)]
    struct State {
        init_process_pid: u32,
    }
    let text = read_caller_file(track, track.state_json.as_ref()?)?;
    let state: State = serde_json::from_slice(&text).ok()?;
    Some(state.init_process_pid).filter(|&p| p > 0)
}

/// Whether `pid` descends from `ancestor` (following `PPid`, at most 64 steps).
fn descends_from(proc_root: &Path, pid: u32, ancestor: u32) -> bool {
    let mut pid = pid;
    for _ in 0..64 {
        let Ok(status) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")) else { return false };
        let parent: Option<u32> =
            status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok());
        match parent {
            Some(p) if p == ancestor => return true,
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

/// Whether a PID the runtime's files name can be the container's init: a
/// process started after the runtime's exec and, while the runtime lives,
/// its descendant. A pid file may name anything; this is what the kernel says.
fn plausible_init(proc_root: &Path, track: &Track, init_pid: u32, owner_alive: bool) -> bool {
    let Some(started) = start_time(proc_root, init_pid) else { return false };
    if track.owner_start.is_some_and(|owner| started < owner) {
        return false;
    }
    !owner_alive || descends_from(proc_root, init_pid, track.owner_pid)
}

/// The lifecycle thread's state.
pub struct Lifecycle {
    /// Where new creates arrive.
    pub tracks: Receiver<Track>,
    /// Where `Started`/`Exited`/`Failed` go.
    pub tx: Sender<SourceMessage>,
    /// Set to stop.
    pub stop: Arc<AtomicBool>,
    /// The proc mount.
    pub proc_root: PathBuf,
    /// When set (the hook is the only source), `Started`/`Exited` carry the
    /// container's cgroup in this hierarchy.
    pub hierarchy: Option<Hierarchy>,
    /// Follow each init to its exit (`Exited`); otherwise a container is done
    /// with once its init PID is known. Wanted when the hook is the only source.
    pub follow_exits: bool,
}

impl Lifecycle {
    /// Runs until stopped.
    pub fn run(self) {
        let mut followed: HashMap<String, Followed> = HashMap::new();
        while !self.stop.load(Ordering::Relaxed) {
            let waiting = followed.values().any(|f| matches!(f, Followed::Waiting { .. }));
            let tick = if waiting { WAITING_TICK } else { IDLE_TICK };
            match self.tracks.recv_timeout(tick) {
                Ok(track) => {
                    // One follower per container (conmon and the runc it runs both report it).
                    followed.entry(track.id.clone()).or_insert(Followed::Waiting { track, since: Instant::now() });
                    while let Ok(track) = self.tracks.try_recv() {
                        followed.entry(track.id.clone()).or_insert(Followed::Waiting { track, since: Instant::now() });
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
            let ids: Vec<String> = followed.keys().cloned().collect();
            for id in ids {
                let Some(state) = followed.remove(&id) else { continue };
                if let Some(next) = self.step(state) {
                    followed.insert(id, next);
                }
            }
        }
    }

    /// Moves one followed container on; `None` when it is done with.
    fn step(&self, state: Followed) -> Option<Followed> {
        match state {
            Followed::Waiting { track, since } => {
                // Look at the owner first: a pid file written just before it exited is still read.
                let owner_gone = match &track.owner {
                    Some(pidfd) => has_exited(pidfd),
                    None => !self.proc_root.join(track.owner_pid.to_string()).exists(),
                };
                if let Some(init_pid) = read_init_pid(&track) {
                    if plausible_init(&self.proc_root, &track, init_pid, !owner_gone) {
                        return self.started(track.id, init_pid);
                    }
                    debug!(id = %track.id, init_pid, "the pid file names a process that is not the runtime's; ignored");
                }
                if owner_gone || since.elapsed() > MAX_WAIT {
                    debug!(id = %track.id, "the runtime exited without starting the container");
                    self.send(HookMessage::Failed { id: track.id });
                    return None;
                }
                Some(Followed::Waiting { track, since })
            }
            Followed::Running { id, init_pid, pidfd, start_time: started, cgroup } => {
                let gone = match &pidfd {
                    Some(pidfd) => has_exited(pidfd),
                    None => start_time(&self.proc_root, init_pid) != started,
                };
                if !gone {
                    return Some(Followed::Running { id, init_pid, pidfd, start_time: started, cgroup });
                }
                let cgroup = cgroup.map(|c| CgroupEvent {
                    change: CgroupChange::Rmdir,
                    observed: SystemTime::now(),
                    kernel_time: None,
                    ..c
                });
                self.send(HookMessage::Exited { id, init_pid, cgroup });
                None
            }
        }
    }

    /// Reports the init PID; follows the init to its exit only when the hook is the only source.
    fn started(&self, id: String, init_pid: u32) -> Option<Followed> {
        let cgroup = self.hierarchy.as_ref().and_then(|h| self.cgroup_of(h, init_pid));
        if !self.follow_exits {
            self.send(HookMessage::Started { id, init_pid, cgroup });
            return None;
        }
        let pidfd = pidfd_open(init_pid);
        let started = start_time(&self.proc_root, init_pid);
        self.send(HookMessage::Started { id: id.clone(), init_pid, cgroup: cgroup.clone() });
        Some(Followed::Running { id, init_pid, pidfd, start_time: started, cgroup })
    }

    /// The init's cgroup as a `Mkdir` event.
    fn cgroup_of(&self, hierarchy: &Hierarchy, pid: u32) -> Option<CgroupEvent> {
        let path = ctwatch::proc::cgroup_path_of(&self.proc_root, pid, hierarchy).ok()?;
        let dir = cgroupfs::absolute_path(&hierarchy.mount_point, &path);
        let info = cgroupfs::cgroup_dir_info(&dir).ok()?;
        Some(CgroupEvent {
            change: CgroupChange::Mkdir,
            origin: Origin::Live,
            cgroup_id: info.cgroup_id,
            path,
            ctime_ns: info.ctime_ns,
            observed: SystemTime::now(),
            kernel_time: None,
        })
    }

    fn send(&self, message: HookMessage) {
        // A closed channel means the agent is stopping.
        let _ = self.tx.send(SourceMessage::Hook(Box::new(message)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_a_process_from_pid_file_to_exit() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("init.pid");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let (track_tx, tracks) = crossbeam_channel::unbounded();
        let (tx, rx) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let lifecycle = Lifecycle {
            tracks,
            tx,
            stop: stop.clone(),
            proc_root: "/proc".into(),
            hierarchy: None,
            follow_exits: true,
        };
        let thread = std::thread::spawn(move || lifecycle.run());
        let mut owner = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        // A pid file naming a process that is not the live runtime's descendant is ignored.
        let foreign = dir.path().join("foreign.pid");
        std::fs::write(&foreign, child.id().to_string()).unwrap();
        let owner_pid = owner.id();
        let track = |id: &str, owner_pid: u32, pid_file: &Path| Track {
            id: id.into(),
            owner_pid,
            owner: pidfd_open(owner_pid),
            owner_start: start_time(Path::new("/proc"), owner_pid),
            pid_file: Some(pid_file.to_path_buf()),
            state_json: None,
            fs: None,
        };
        track_tx.send(track("c0", owner_pid, &foreign)).unwrap();
        // The test process runs the child: its descendant, started after it.
        track_tx.send(track("c1", std::process::id(), &pid_file)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "nothing before the pid file, nothing from a foreign pid");
        std::fs::write(&pid_file, child.id().to_string()).unwrap();
        let started = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            matches!(started, SourceMessage::Hook(m) if *m == HookMessage::Started { id: "c1".into(), init_pid: child.id(), cgroup: None })
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let exited = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            matches!(exited, SourceMessage::Hook(m) if matches!(*m, HookMessage::Exited { ref id, .. } if id == "c1"))
        );
        // A create whose runtime exits without a pid file fails.
        let mut owner2 = std::process::Command::new("true").spawn().unwrap();
        let pidfd = pidfd_open(owner2.id());
        owner2.wait().unwrap();
        track_tx
            .send(Track {
                id: "c2".into(),
                owner_pid: owner2.id(),
                owner: pidfd,
                owner_start: None,
                pid_file: Some(dir.path().join("none")),
                state_json: None,
                fs: None,
            })
            .unwrap();
        let failed = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(failed, SourceMessage::Hook(m) if *m == HookMessage::Failed { id: "c2".into() }));
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        owner.kill().unwrap();
        owner.wait().unwrap();
    }

    #[test]
    fn without_follow_exits_a_container_is_done_with_at_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("init.pid");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        std::fs::write(&pid_file, child.id().to_string()).unwrap();
        let (track_tx, tracks) = crossbeam_channel::unbounded();
        let (tx, rx) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let lifecycle = Lifecycle {
            tracks,
            tx,
            stop: stop.clone(),
            proc_root: "/proc".into(),
            hierarchy: None,
            follow_exits: false,
        };
        let thread = std::thread::spawn(move || lifecycle.run());
        let owner = pidfd_open(std::process::id());
        let track = Track {
            id: "c3".into(),
            owner_pid: std::process::id(),
            owner,
            owner_start: None,
            pid_file: Some(pid_file),
            state_json: None,
            fs: None,
        };
        track_tx.send(track).unwrap();
        let started = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(started, SourceMessage::Hook(m) if matches!(*m, HookMessage::Started { .. })));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(500)).is_err(), "no exit followed");
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    }
}
