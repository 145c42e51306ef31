//! Walking a cgroup tree: the scan at start, and the resync after a loss.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::cgroupfs::{self, CgroupDirInfo};

use super::{CgroupChange, CgroupEvent, Origin};

/// One directory met by [`walk`].
#[derive(Debug)]
pub struct VisitedDir<'a> {
    /// Its absolute path.
    pub abs: &'a Path,
    /// Its path relative to the hierarchy root.
    pub rel: &'a str,
    /// Its identity.
    pub info: CgroupDirInfo,
}

/// Walks the directory tree under `start` (inclusive) in pre-order: each
/// directory is passed to `visit` before its children are listed, so a watch
/// added by `visit` is in place before the listing (nothing created in
/// between is missed). Directories that vanish mid-walk are skipped.
pub fn walk(mount_point: &Path, start: &Path, mut visit: impl FnMut(&VisitedDir<'_>)) {
    let mut stack: Vec<PathBuf> = vec![start.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(info) = cgroupfs::cgroup_dir_info(&dir) else {
            continue;
        };
        let Some(rel) = cgroupfs::relative_path(mount_point, &dir) else {
            continue;
        };
        visit(&VisitedDir { abs: &dir, rel: &rel, info });
        // No subdirectory when it was read, and none since `visit` (which may
        // add a watch): a subdirectory made between the two reads is listed
        // here, one made after is the watch's to report. Reading it once only
        // lost a `mkdir -p a/b` whose `b` came between the read and the watch.
        if info.subdirs == 0 && cgroupfs::cgroup_dir_info(&dir).map_or(true, |now| now.subdirs == 0) {
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut children: Vec<PathBuf> =
            entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect();
        // Pop in name order: parents before children, siblings sorted.
        children.sort_unstable_by(|a, b| b.cmp(a));
        stack.extend(children);
    }
}

/// Scans the tree under `start` once and returns a `Mkdir` for every cgroup
/// below it (not `start` itself), parents before children.
pub fn scan(mount_point: &Path, start: &Path, origin: Origin) -> Vec<CgroupEvent> {
    let mut events = Vec::new();
    let observed = SystemTime::now();
    walk(mount_point, start, |dir| {
        if dir.abs != start {
            events.push(CgroupEvent {
                change: CgroupChange::Mkdir,
                origin,
                cgroup_id: dir.info.cgroup_id,
                path: dir.rel.to_string(),
                ctime_ns: dir.info.ctime_ns,
                observed,
                kernel_time: None,
            });
        }
    });
    events
}
