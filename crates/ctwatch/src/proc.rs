//! What `/proc` says about processes: which cgroup a process is in, which
//! namespaces it is in, and which process is a container's init.
//!
//! Every function takes the proc mount to read (normally `/proc`), so a
//! containerised agent can be pointed at the host's.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use thiserror::Error;

use crate::cgroupfs::{CgroupVersion, Hierarchy};

/// Why a process could not be looked up.
#[derive(Debug, Error)]
pub enum ProcError {
    /// There is no such process (or it exited while being read).
    #[error("no process {0}")]
    NoSuchProcess(u32),
    /// The process is not in the watched cgroup hierarchy (its `/proc/<pid>/cgroup` has no line for it).
    #[error("process {0} is not in the watched cgroup hierarchy")]
    NotInHierarchy(u32),
    /// Reading `/proc` failed for another reason (permissions, for example).
    #[error("cannot read {path}: {source}")]
    Io {
        /// What could not be read.
        path: String,
        /// Why.
        source: io::Error,
    },
}

impl ProcError {
    fn io(pid: u32, path: &Path, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => ProcError::NoSuchProcess(pid),
            _ => ProcError::Io { path: path.display().to_string(), source },
        }
    }
}

/// A namespace kind whose inode number identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// Mount namespace (`/proc/<pid>/ns/mnt`).
    Mount,
    /// Network namespace (`/proc/<pid>/ns/net`).
    Net,
    /// PID namespace (`/proc/<pid>/ns/pid`).
    Pid,
}

impl Namespace {
    fn file(self) -> &'static str {
        match self {
            Namespace::Mount => "mnt",
            Namespace::Net => "net",
            Namespace::Pid => "pid",
        }
    }
}

/// The path of process `pid`'s cgroup in `hierarchy`, as the kernel prints it (`/a/b`), in
/// the form of [`crate::cgroupfs::path_from_bytes`].
pub fn cgroup_path_of(proc_root: &Path, pid: u32, hierarchy: &Hierarchy) -> Result<String, ProcError> {
    let file = proc_root.join(pid.to_string()).join("cgroup");
    // The kernel prints the path's bytes as they are: keep names that are not UTF-8 (escaped).
    let text = crate::cgroupfs::path_from_bytes(&fs::read(&file).map_err(|e| ProcError::io(pid, &file, e))?);
    cgroup_path_in(&text, hierarchy).map(str::to_string).ok_or(ProcError::NotInHierarchy(pid))
}

/// The path for `hierarchy` in the text of a `/proc/<pid>/cgroup` file.
pub fn cgroup_path_in<'a>(proc_cgroup: &'a str, hierarchy: &Hierarchy) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let id: u32 = parts.next()?.parse().ok()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        let matches = match hierarchy.version {
            CgroupVersion::V2 => id == 0 && controllers.is_empty(),
            CgroupVersion::V1 => id == hierarchy.hierarchy_id && id != 0,
        };
        matches.then_some(path)
    })
}

/// The inode number that identifies process `pid`'s namespace of `kind`.
pub fn namespace_of(proc_root: &Path, pid: u32, kind: Namespace) -> Result<u64, ProcError> {
    let file = proc_root.join(pid.to_string()).join("ns").join(kind.file());
    fs::metadata(&file).map(|m| m.ino()).map_err(|e| ProcError::io(pid, &file, e))
}

/// The processes in the cgroup directory `dir` (`cgroup.procs`; empty if it has none or is gone).
pub fn cgroup_pids(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// True when process `pid` is the first process of its PID namespace
/// (`NSpid` ends in 1): a container's init.
pub fn is_namespace_init(proc_root: &Path, pid: u32) -> bool {
    let Ok(status) = fs::read_to_string(proc_root.join(pid.to_string()).join("status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|ids| ids.split_whitespace().last())
        .is_some_and(|last| last == "1")
}

/// The init process of the container whose root cgroup is `root_dir`: the
/// process that is PID 1 in its namespace, looked for in the root cgroup and
/// then its sub-cgroups (breadth first, a bounded number of directories);
/// else the lowest PID found. `None` while the container has no process.
pub fn container_init_pid(proc_root: &Path, root_dir: &Path) -> Option<u32> {
    const MAX_DIRS: usize = 64;
    let mut queue = std::collections::VecDeque::from([root_dir.to_path_buf()]);
    let mut lowest: Option<u32> = None;
    let mut visited = 0;
    while let Some(dir) = queue.pop_front() {
        visited += 1;
        let mut pids = cgroup_pids(&dir);
        pids.sort_unstable();
        if let Some(init) = pids.iter().copied().find(|pid| is_namespace_init(proc_root, *pid)) {
            return Some(init);
        }
        lowest = lowest.into_iter().chain(pids.first().copied()).min();
        if visited >= MAX_DIRS {
            break;
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            queue.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    lowest
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn v1(id: u32) -> Hierarchy {
        Hierarchy {
            mount_point: PathBuf::from("/sys/fs/cgroup/cpuset"),
            version: CgroupVersion::V1,
            controllers: vec!["cpuset".into()],
            hierarchy_id: id,
        }
    }

    #[test]
    fn picks_the_watched_hierarchys_line() {
        let text = "12:cpuset:/docker/abc\n3:memory:/docker/abc\n0::/system.slice/x\n";
        assert_eq!(cgroup_path_in(text, &v1(12)), Some("/docker/abc"));
        let v2 = Hierarchy { version: CgroupVersion::V2, controllers: vec![], hierarchy_id: 0, ..v1(0) };
        assert_eq!(cgroup_path_in(text, &v2), Some("/system.slice/x"));
        assert_eq!(cgroup_path_in(text, &v1(7)), None);
        assert_eq!(cgroup_path_in("garbage\n::\n", &v2), None);
        // A path with ':' in it stays whole.
        assert_eq!(cgroup_path_in("0::/kubepods/a:b:c\n", &v2), Some("/kubepods/a:b:c"));
    }

    #[test]
    fn this_process_has_namespaces_and_a_cgroup_line() {
        let me = std::process::id();
        assert!(namespace_of(Path::new("/proc"), me, Namespace::Mount).unwrap() > 0);
        assert!(matches!(namespace_of(Path::new("/proc"), u32::MAX, Namespace::Net), Err(ProcError::NoSuchProcess(_))));
    }
}
