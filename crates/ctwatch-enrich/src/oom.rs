//! OOM kills per container from the cgroup's own counters: v2
//! `memory.events` `oom_kill`, v1 `memory.oom_control` `oom_kill`.
//!
//! The counters vanish with the cgroup (once rmdir'd they cannot be read),
//! and a container's cgroup is removed the moment its last process exits, so
//! the count must be read while it still changes, not at the end. The
//! cheapest correct way is to let the kernel say when: [`OomWatcher`] reads a
//! container's counter when it starts watching it, and again whenever the
//! kernel signals an OOM in that cgroup (v2: an inotify `IN_MODIFY` on
//! `memory.events`, which the kernel raises on every OOM kill; v1: an
//! eventfd registered on `memory.oom_control` through `cgroup.event_control`,
//! which fires when the cgroup hits OOM, before the victim is chosen, so it
//! is read again shortly after). No polling: a container that never hits
//! OOM costs one read at start and one at the end.
//!
//! Use: [`OomWatcher::watch`] at the container's create (its memory cgroup
//! directories), [`OomWatcher::sample`] whenever the agent hears of the
//! container (cheap), and [`OomWatcher::finish`] at its remove: the last
//! count seen (the kernel's count if the cgroup is still there).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inotify::{Inotify, WatchDescriptor, WatchMask};
use tracing::debug;

/// The `oom_kill` count in a `memory.events` or `memory.oom_control` file's text.
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// The `oom_kill` count of a v2 cgroup directory (`memory.events`; needs the
/// memory controller enabled for it), `None` when unreadable.
pub fn read_oom_kills_v2(cgroup_dir: &Path) -> Option<u64> {
    parse_oom_kill(&std::fs::read_to_string(cgroup_dir.join("memory.events")).ok()?)
}

/// The `oom_kill` count of a v1 memory cgroup directory (`memory.oom_control`,
/// kernel 4.13 and later), `None` when unreadable.
pub fn read_oom_kills_v1(memory_dir: &Path) -> Option<u64> {
    parse_oom_kill(&std::fs::read_to_string(memory_dir.join("memory.oom_control")).ok()?)
}

/// Where one container's counter is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryCgroup {
    /// A v2 cgroup directory (with `memory.events`).
    V2(PathBuf),
    /// A v1 memory-controller cgroup directory (with `memory.oom_control`).
    V1(PathBuf),
}

impl MemoryCgroup {
    /// The count now, `None` when unreadable (gone, or no memory controller).
    pub fn read(&self) -> Option<u64> {
        match self {
            MemoryCgroup::V2(dir) => read_oom_kills_v2(dir),
            MemoryCgroup::V1(dir) => read_oom_kills_v1(dir),
        }
    }
}

/// Re-reads after a v1 OOM notification (it comes before the kill is counted).
const REREAD_AFTER: [Duration; 9] = [
    Duration::from_millis(2),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(150),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
];

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OomError {
    /// inotify, epoll or the thread could not be set up.
    #[error("OOM watcher: {0}")]
    Setup(#[from] std::io::Error),
}

struct Entry {
    cgroup: MemoryCgroup,
    /// Highest count read so far.
    last: Option<u64>,
    wd: Option<WatchDescriptor>,
    /// v1: the eventfd and the open `memory.oom_control` it is registered on.
    v1_fds: Option<(OwnedFd, File)>,
    token: u64,
}

struct State {
    entries: HashMap<String, Entry>,
    by_token: HashMap<u64, String>,
    by_wd: HashMap<WatchDescriptor, String>,
    /// Keys to read again, and when.
    rereads: Vec<(Instant, String)>,
    next_token: u64,
}

struct Shared {
    state: Mutex<State>,
    inotify: Mutex<Inotify>,
    epoll: OwnedFd,
    capacity: usize,
    refused: AtomicU64,
    notifications: AtomicU64,
}

/// Watches the OOM counters of the containers it is told about (see the
/// module docs). At most `capacity` containers; watches asked beyond that
/// are refused and counted ([`OomWatcher::refused`]).
pub struct OomWatcher {
    shared: Arc<Shared>,
}

/// The epoll token of the inotify fd.
const INOTIFY_TOKEN: u64 = 0;

impl OomWatcher {
    /// Starts the watcher's thread.
    pub fn start(capacity: usize) -> Result<Self, OomError> {
        let inotify = Inotify::init()?;
        // SAFETY: epoll_create1 has no preconditions; the fd is checked and owned below.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: epfd is a new fd that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
        epoll_add(epoll.as_raw_fd(), inotify.as_raw_fd(), INOTIFY_TOKEN)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                entries: HashMap::new(),
                by_token: HashMap::new(),
                by_wd: HashMap::new(),
                rereads: Vec::new(),
                next_token: 1,
            }),
            inotify: Mutex::new(inotify),
            epoll,
            capacity: capacity.max(1),
            refused: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
        });
        // The thread owns its own copy of the epoll fd: it is never closed under it.
        let epoll = shared.epoll.try_clone()?;
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new().name("oom-watch".into()).spawn(move || run(weak, epoll))?;
        Ok(OomWatcher { shared })
    }

    /// Starts watching container `key`'s counter in `cgroup`; returns the
    /// count now (`None` when unreadable, e.g. no memory controller). A key
    /// already watched is read again.
    pub fn watch(&self, key: &str, cgroup: MemoryCgroup) -> Option<u64> {
        {
            let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.entries.contains_key(key) {
                drop(state);
                return self.sample(key);
            }
            if state.entries.len() >= self.shared.capacity {
                self.shared.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let now = cgroup.read();
        let mut wd = None;
        let mut v1_fds = None;
        match &cgroup {
            MemoryCgroup::V2(dir) => {
                let inotify = self.shared.inotify.lock().unwrap_or_else(|e| e.into_inner());
                wd = inotify.watches().add(dir.join("memory.events"), WatchMask::MODIFY).ok();
            }
            MemoryCgroup::V1(dir) => {
                v1_fds = register_v1(dir).map_err(|e| debug!(dir = %dir.display(), "no OOM eventfd: {e}")).ok()
            }
        }
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let token = state.next_token;
        state.next_token += 1;
        if let Some((efd, _)) = &v1_fds {
            if epoll_add(self.shared.epoll.as_raw_fd(), efd.as_raw_fd(), token).is_err() {
                v1_fds = None;
            }
        }
        if let Some(wd) = &wd {
            state.by_wd.insert(wd.clone(), key.to_string());
        }
        state.by_token.insert(token, key.to_string());
        state.entries.insert(key.to_string(), Entry { cgroup, last: now, wd, v1_fds, token });
        drop(state);
        // Read again now that the notification is registered: a kill between
        // the first read and the registration would otherwise go unseen.
        sample(&self.shared, key).or(now)
    }

    /// Reads container `key`'s counter now (while its cgroup exists) and
    /// returns the highest count seen.
    pub fn sample(&self, key: &str) -> Option<u64> {
        sample(&self.shared, key)
    }

    /// Stops watching `key` and returns the last count seen (read once more
    /// if the cgroup is still there).
    pub fn finish(&self, key: &str) -> Option<u64> {
        let count = sample(&self.shared, key);
        let entry = {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            let entry = state.entries.remove(key);
            if let Some(e) = &entry {
                state.by_token.remove(&e.token);
                if let Some(wd) = &e.wd {
                    state.by_wd.remove(wd);
                }
            }
            state.rereads.retain(|(_, k)| k != key);
            entry
        };
        if let Some(e) = entry {
            if let Some(wd) = e.wd {
                // Fails harmlessly when the kernel already dropped the watch with the file.
                let _ = self.shared.inotify.lock().unwrap_or_else(|p| p.into_inner()).watches().remove(wd);
            }
            // Dropping the eventfd and the file ends the v1 registration.
        }
        count
    }

    /// Containers watched now.
    pub fn len(&self) -> usize {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).entries.len()
    }

    /// True when none is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Watches refused because `capacity` containers were watched.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Kernel notifications handled so far.
    pub fn notifications(&self) -> u64 {
        self.shared.notifications.load(Ordering::Relaxed)
    }
}

/// Reads `key`'s counter outside the lock and keeps the highest.
fn sample(shared: &Shared, key: &str) -> Option<u64> {
    let cgroup = {
        let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.entries.get(key)?.cgroup.clone()
    };
    let now = cgroup.read();
    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let entry = state.entries.get_mut(key)?;
    entry.last = entry.last.max(now);
    entry.last
}

/// Registers an eventfd for OOM notifications of a v1 memory cgroup.
fn register_v1(dir: &Path) -> std::io::Result<(OwnedFd, File)> {
    let control = File::open(dir.join("memory.oom_control"))?;
    // SAFETY: eventfd has no preconditions; the fd is checked and owned below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: efd is a new fd that nothing else owns.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    let mut event_control = std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.event_control"))?;
    event_control.write_all(format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()).as_bytes())?;
    Ok((efd, control))
}

fn epoll_add(epfd: RawFd, fd: RawFd, token: u64) -> std::io::Result<()> {
    let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
    // SAFETY: both fds are open; `event` lives across the call.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The watcher's thread: waits for the kernel's notifications and reads the
/// counters they concern; ends when the watcher is dropped.
fn run(weak: std::sync::Weak<Shared>, epoll: OwnedFd) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut buffer = [0u8; 4096];
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let timeout = {
            let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            let next = state.rereads.iter().map(|(t, _)| *t).min();
            // Wake at least every 200 ms to notice the watcher dropped.
            next.map_or(200, |t| t.saturating_duration_since(Instant::now()).as_millis().min(200) as i32)
        };
        drop(shared);
        // SAFETY: `events` is a valid buffer of its length and `epoll` is open.
        let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, timeout) };
        let Some(shared) = weak.upgrade() else { return };
        let mut keys: Vec<String> = Vec::new();
        for event in events.iter().take(n.max(0) as usize) {
            shared.notifications.fetch_add(1, Ordering::Relaxed);
            let token = event.u64;
            if token == INOTIFY_TOKEN {
                let mut inotify = shared.inotify.lock().unwrap_or_else(|e| e.into_inner());
                let wds: Vec<WatchDescriptor> = match inotify.read_events(&mut buffer) {
                    Ok(evs) => evs.map(|e| e.wd).collect(),
                    Err(_) => Vec::new(),
                };
                drop(inotify);
                let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                keys.extend(wds.iter().filter_map(|wd| state.by_wd.get(wd).cloned()));
            } else {
                let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                let Some(key) = state.by_token.get(&token).cloned() else { continue };
                if let Some((efd, _)) = state.entries.get(&key).and_then(|e| e.v1_fds.as_ref()) {
                    let mut count = [0u8; 8];
                    // SAFETY: reading 8 bytes into an 8-byte buffer from a non-blocking eventfd.
                    let _ = unsafe { libc::read(efd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
                }
                let now = Instant::now();
                state.rereads.extend(REREAD_AFTER.iter().map(|d| (now + *d, key.clone())));
                keys.push(key);
            }
        }
        {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            state.rereads.retain(|(t, k)| {
                if *t <= now {
                    keys.push(k.clone());
                    false
                } else {
                    true
                }
            });
        }
        keys.sort();
        keys.dedup();
        for key in keys {
            sample(&shared, &key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_both_files() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v2), Some(2));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n";
        assert_eq!(parse_oom_kill(v1), Some(7));
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None, "kernels before 4.13");
        assert_eq!(parse_oom_kill("oom_kill x\n"), None);
    }

    #[test]
    fn the_counter_is_kept_after_the_directory_goes() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("c");
        std::fs::create_dir(&cg).unwrap();
        std::fs::write(cg.join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        let watcher = OomWatcher::start(1).unwrap();
        assert_eq!(watcher.watch("c", MemoryCgroup::V2(cg.clone())), Some(1));
        assert_eq!(watcher.watch("other", MemoryCgroup::V2(cg.clone())), None);
        assert_eq!(watcher.refused(), 1, "bounded");
        std::fs::write(cg.join("memory.events"), "oom 2\noom_kill 2\n").unwrap();
        // The inotify MODIFY is read by the thread; wait for it to be seen.
        let deadline = Instant::now() + Duration::from_secs(5);
        while watcher.notifications() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        std::fs::remove_dir_all(&cg).unwrap();
        assert_eq!(watcher.finish("c"), Some(2), "read on the change, before the directory went");
        assert!(watcher.is_empty());
        assert_eq!(watcher.finish("c"), None);
    }
}
