//! The inotify source: a recursive watch over one cgroup hierarchy, for hosts
//! where eBPF is not allowed.
//!
//! inotify reports only names, so the source keeps every directory it knows
//! (path → cgroup ID). When a directory appears it is watched first and then
//! listed, so directories created in between are found by the listing; the
//! known set drops the duplicates that the events then report. After a queue
//! overflow the whole tree is rescanned and diffed against the known set.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam_channel::Sender;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use thiserror::Error;
use tracing::{debug, warn};

use crate::cgroupfs;

use super::scan::walk;
use super::{CgroupChange, CgroupEvent, Origin, SourceMessage};

/// Why the inotify source could not start.
#[derive(Debug, Error)]
pub enum InotifyError {
    /// `inotify_init1` failed.
    #[error("cannot create an inotify instance: {0} (raise fs.inotify.max_user_instances)")]
    Init(io::Error),
    /// The root directory could not be watched.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Counters a source keeps about itself.
#[derive(Debug, Default)]
pub struct InotifyStats {
    /// Kernel queue overflows seen (each one triggered a resync).
    pub overflows: std::sync::atomic::AtomicU64,
    /// Directories that could not be watched (for example the watch limit).
    pub watch_failures: std::sync::atomic::AtomicU64,
}

/// A recursive inotify watch over the tree under `start`.
pub struct InotifySource {
    inotify: Inotify,
    mount_point: PathBuf,
    start: PathBuf,
    /// Watched directories: descriptor → relative path.
    watches: HashMap<WatchDescriptor, String>,
    /// Directories known below `start`: relative path → cgroup ID (0 if unread).
    known: HashMap<String, u64>,
    stats: Arc<InotifyStats>,
    warned_watch_limit: bool,
}

const MASK: WatchMask =
    WatchMask::CREATE.union(WatchMask::DELETE).union(WatchMask::ONLYDIR).union(WatchMask::DONT_FOLLOW);

impl InotifySource {
    /// Prepares a watch over `start`, a directory inside the hierarchy mounted at `mount_point`.
    pub fn new(mount_point: &Path, start: &Path) -> Result<Self, InotifyError> {
        let inotify = Inotify::init().map_err(InotifyError::Init)?;
        inotify
            .watches()
            .add(start, MASK)
            .map_err(|source| InotifyError::Watch { path: start.to_path_buf(), source })?;
        Ok(InotifySource {
            inotify,
            mount_point: mount_point.to_path_buf(),
            start: start.to_path_buf(),
            watches: HashMap::new(),
            known: HashMap::new(),
            stats: Arc::default(),
            warned_watch_limit: false,
        })
    }

    /// The source's counters, shared.
    pub fn stats(&self) -> Arc<InotifyStats> {
        self.stats.clone()
    }

    /// Scans what exists (sent as `Existing`), then follows changes until
    /// `stop` is set or the receiver is gone.
    pub fn run(self, tx: Sender<SourceMessage>, stop: Arc<AtomicBool>) -> io::Result<()> {
        self.run_from(false, tx, stop)
    }

    /// Takes over from a source that ended: what exists now is sent as a
    /// [`SourceMessage::Resync`] (containers made or removed in between are
    /// reconciled, nothing known is reported again), then changes are followed.
    pub fn run_after_loss(self, tx: Sender<SourceMessage>, stop: Arc<AtomicBool>) -> io::Result<()> {
        self.run_from(true, tx, stop)
    }

    fn run_from(mut self, after_loss: bool, tx: Sender<SourceMessage>, stop: Arc<AtomicBool>) -> io::Result<()> {
        let mut batch = Vec::new();
        if after_loss {
            self.discover(&self.start.clone(), Origin::Live, &mut batch);
            if tx.send(SourceMessage::Resync(batch)).is_err() {
                return Ok(());
            }
        } else {
            self.discover(&self.start.clone(), Origin::Existing, &mut batch);
            if tx.send(SourceMessage::Events(batch)).is_err() || tx.send(SourceMessage::ScanComplete).is_err() {
                return Ok(());
            }
        }
        let mut buffer = vec![0u8; 256 * 1024];
        while !stop.load(Ordering::Relaxed) {
            if !self.wait_readable(Duration::from_millis(200))? {
                continue;
            }
            let mut batch = Vec::new();
            let mut overflow = false;
            let mut raw: Vec<(WatchDescriptor, EventMask, Option<String>)> = Vec::new();
            match self.inotify.read_events(&mut buffer) {
                Ok(events) => {
                    for e in events {
                        raw.push((e.wd, e.mask, e.name.map(|n| cgroupfs::path_from_bytes(n.as_bytes()))));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
            for (wd, mask, name) in raw {
                if mask.contains(EventMask::Q_OVERFLOW) {
                    overflow = true;
                } else if mask.contains(EventMask::IGNORED) {
                    self.watches.remove(&wd);
                } else if mask.contains(EventMask::ISDIR) {
                    let (Some(parent), Some(name)) = (self.watches.get(&wd), name) else {
                        continue;
                    };
                    let rel = child_path(parent, &name);
                    if mask.contains(EventMask::CREATE) {
                        let abs = self.abs_path(&rel);
                        self.discover(&abs, Origin::Live, &mut batch);
                    } else if mask.contains(EventMask::DELETE) {
                        self.forget(&rel, &mut batch);
                    }
                }
            }
            if overflow {
                self.stats.overflows.fetch_add(1, Ordering::Relaxed);
                warn!("inotify queue overflowed: rescanning the cgroup tree (raise fs.inotify.max_queued_events to avoid this)");
                self.resync(&mut batch);
            }
            if !batch.is_empty() && tx.send(SourceMessage::Events(batch)).is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn abs_path(&self, rel: &str) -> PathBuf {
        cgroupfs::absolute_path(&self.mount_point, rel)
    }

    /// Watches `dir` and everything below it, reporting each directory not yet known.
    fn discover(&mut self, dir: &Path, origin: Origin, batch: &mut Vec<CgroupEvent>) {
        let observed = SystemTime::now();
        let mut vanished = true;
        let start = self.start.clone();
        let mut found = Vec::new();
        walk(&self.mount_point.clone(), dir, |visited| {
            vanished = false;
            match self.inotify.watches().add(visited.abs, MASK) {
                Ok(wd) => {
                    self.watches.insert(wd, visited.rel.to_string());
                }
                Err(e) => self.watch_failed(visited.abs, e),
            }
            if visited.abs != start {
                found.push((visited.rel.to_string(), visited.info));
            }
        });
        for (rel, info) in found {
            if self.known.get(&rel) == Some(&info.cgroup_id) {
                continue;
            }
            if self.known.contains_key(&rel) {
                // Same name, new directory: the old one went unreported.
                self.forget(&rel, batch);
            }
            self.known.insert(rel.clone(), info.cgroup_id);
            batch.push(CgroupEvent {
                change: CgroupChange::Mkdir,
                origin,
                cgroup_id: info.cgroup_id,
                path: rel,
                ctime_ns: info.ctime_ns,
                observed,
                kernel_time: None,
            });
        }
        if vanished && dir != self.start {
            // Created and removed before we could look: report it with an
            // unknown ID so that the removal that follows still pairs with it.
            if let Some(rel) = cgroupfs::relative_path(&self.mount_point, dir) {
                if !self.known.contains_key(&rel) {
                    self.known.insert(rel.clone(), 0);
                    batch.push(CgroupEvent {
                        change: CgroupChange::Mkdir,
                        origin,
                        cgroup_id: 0,
                        path: rel,
                        ctime_ns: 0,
                        observed,
                        kernel_time: None,
                    });
                }
            }
        }
    }

    /// Reports the removal of a known directory (unless it still exists: then
    /// the event was about an earlier directory of the same name).
    fn forget(&mut self, rel: &str, batch: &mut Vec<CgroupEvent>) {
        let Some(&cgroup_id) = self.known.get(rel) else {
            return;
        };
        if cgroup_id != 0 {
            if let Ok(info) = cgroupfs::cgroup_dir_info(&self.abs_path(rel)) {
                if info.cgroup_id == cgroup_id {
                    return;
                }
            }
        }
        self.known.remove(rel);
        batch.push(CgroupEvent {
            change: CgroupChange::Rmdir,
            origin: Origin::Live,
            cgroup_id,
            path: rel.to_string(),
            ctime_ns: 0,
            observed: SystemTime::now(),
            kernel_time: None,
        });
    }

    /// After a lost event: rescan everything, report what appeared and what went.
    fn resync(&mut self, batch: &mut Vec<CgroupEvent>) {
        let mut present: HashMap<String, u64> = HashMap::with_capacity(self.known.len());
        walk(&self.mount_point.clone(), &self.start.clone(), |visited| {
            present.insert(visited.rel.to_string(), visited.info.cgroup_id);
        });
        let mut gone: Vec<String> = self
            .known
            .iter()
            .filter(|(path, id)| present.get(*path) != Some(id))
            .map(|(path, _)| path.clone())
            .collect();
        // Children before parents, as the kernel would have removed them.
        gone.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| b.cmp(a)));
        for path in gone {
            self.forget(&path, batch);
        }
        let start = self.start.clone();
        self.discover(&start, Origin::Live, batch);
        debug!(known = self.known.len(), "inotify resync done");
    }

    fn watch_failed(&mut self, dir: &Path, error: io::Error) {
        if error.kind() == io::ErrorKind::NotFound {
            return;
        }
        self.stats.watch_failures.fetch_add(1, Ordering::Relaxed);
        if error.raw_os_error() == Some(libc::ENOSPC) && !self.warned_watch_limit {
            self.warned_watch_limit = true;
            warn!(dir = %dir.display(), "inotify watch limit reached: cgroups below this directory are not followed; raise fs.inotify.max_user_watches");
        } else {
            debug!(dir = %dir.display(), %error, "cannot watch directory");
        }
    }
}

fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}
