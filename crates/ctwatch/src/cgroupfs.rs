//! The cgroup filesystems of this host: which hierarchies exist, which one the
//! tracker watches, and the identity (ID, ctime) of a cgroup directory.
//!
//! On a hybrid host the kernel mirrors every runtime's mkdir into each
//! hierarchy; ctwatch watches exactly one, so each container is seen once.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// `CGROUP_SUPER_MAGIC` from `linux/magic.h` (cgroup v1).
const CGROUP_SUPER_MAGIC: i64 = 0x27e0eb;
/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h` (cgroup v2).
const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;

/// The version of a cgroup hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// A legacy hierarchy with its own controllers.
    V1,
    /// The unified hierarchy.
    V2,
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted (for example `/sys/fs/cgroup/cpuset`).
    pub mount_point: PathBuf,
    /// v1 or v2.
    pub version: CgroupVersion,
    /// The v1 controllers (or `name=...`) it carries; empty for v2.
    pub controllers: Vec<String>,
    /// The kernel's hierarchy ID (`/proc/self/cgroup`'s first column; 0 for v2).
    pub hierarchy_id: u32,
}

/// A cgroup directory's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupDirInfo {
    /// The full 64-bit cgroup ID (the kernfs node ID, which is the inode number).
    pub cgroup_id: u64,
    /// The directory's ctime, in nanoseconds since the Unix epoch.
    pub ctime_ns: u64,
    /// How many subdirectories it has (kernfs keeps `nlink` at 2 + subdirs).
    pub subdirs: u64,
}

/// What can go wrong finding or opening a cgroup filesystem.
#[derive(Debug, Error)]
pub enum CgroupFsError {
    /// The path does not exist.
    #[error("no cgroup filesystem at {0}: mount one there or pass --cgroup-root")]
    Missing(PathBuf),
    /// The path exists but cannot be read.
    #[error("cannot read {path}: {source} (run as root)")]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The path is not on a cgroup filesystem.
    #[error("{0} is not a cgroup filesystem: pass --cgroup-root a directory under /sys/fs/cgroup")]
    NotCgroupFs(PathBuf),
    /// No hierarchy is mounted at all.
    #[error("no cgroup hierarchy is mounted (see /proc/self/mountinfo): mount cgroup2 on /sys/fs/cgroup")]
    NoneMounted,
}

/// The hierarchies mounted on this host, read from `/proc/self/mountinfo`
/// and `/proc/self/cgroup`.
pub fn mounted_hierarchies() -> Result<Vec<Hierarchy>, CgroupFsError> {
    let read =
        |p: &str| fs::read_to_string(p).map_err(|source| CgroupFsError::Unreadable { path: PathBuf::from(p), source });
    Ok(parse_hierarchies(&read("/proc/self/mountinfo")?, &read("/proc/self/cgroup")?))
}

/// Parses `mountinfo` and `/proc/self/cgroup` text into hierarchies (the
/// first mount of each hierarchy wins).
pub fn parse_hierarchies(mountinfo: &str, proc_cgroup: &str) -> Vec<Hierarchy> {
    let mut found: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        // <id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> <source> <super opts>
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split_whitespace();
        let fstype = right.next().unwrap_or("");
        let super_opts = right.nth(1).unwrap_or("");
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_mountinfo(mount_point));
        let (version, controllers) = match fstype {
            "cgroup2" => (CgroupVersion::V2, Vec::new()),
            "cgroup" => (
                CgroupVersion::V1,
                super_opts
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro") && !o.contains("relatime") && !o.starts_with("release_agent")
                    })
                    .filter(|o| !matches!(*o, "nosuid" | "nodev" | "noexec" | "clone_children" | "noprefix" | "xattr"))
                    .map(str::to_string)
                    .collect(),
            ),
            _ => continue,
        };
        if found.iter().any(|h| h.version == version && h.controllers == controllers) {
            continue;
        }
        let hierarchy_id = match version {
            CgroupVersion::V2 => 0,
            CgroupVersion::V1 => hierarchy_id_of(proc_cgroup, &controllers).unwrap_or(0),
        };
        found.push(Hierarchy { mount_point, version, controllers, hierarchy_id });
    }
    found
}

fn hierarchy_id_of(proc_cgroup: &str, controllers: &[String]) -> Option<u32> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let id = parts.next()?.parse().ok()?;
        let listed: Vec<&str> = parts.next()?.split(',').collect();
        (!listed.is_empty()
            && controllers.iter().all(|c| listed.contains(&c.as_str()))
            && listed.len() == controllers.len())
        .then_some(id)
    })
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// Picks the hierarchy to watch: the unified one on a pure v2 host, else the
/// v1 `cpuset` hierarchy (every runtime creates it), else `memory`, `pids`,
/// any v1 hierarchy, and the unified one last.
pub fn default_hierarchy(hierarchies: &[Hierarchy]) -> Option<&Hierarchy> {
    let v1_with = |c: &str| hierarchies.iter().find(|h| h.controllers.iter().any(|x| x == c));
    if let Some(v2) = hierarchies.iter().find(|h| h.version == CgroupVersion::V2) {
        if !hierarchies.iter().any(|h| h.version == CgroupVersion::V1) {
            return Some(v2);
        }
    }
    v1_with("cpuset")
        .or_else(|| v1_with("memory"))
        .or_else(|| v1_with("pids"))
        .or_else(|| {
            hierarchies
                .iter()
                .find(|h| h.version == CgroupVersion::V1 && !h.controllers.iter().any(|c| c.starts_with("name=")))
        })
        .or_else(|| hierarchies.iter().find(|h| h.version == CgroupVersion::V2))
        .or_else(|| hierarchies.first())
}

/// The hierarchy that contains `dir` (the longest mount point above it).
pub fn hierarchy_containing<'a>(hierarchies: &'a [Hierarchy], dir: &Path) -> Option<&'a Hierarchy> {
    hierarchies.iter().filter(|h| dir.starts_with(&h.mount_point)).max_by_key(|h| h.mount_point.as_os_str().len())
}

/// Checks that `dir` is a readable directory on a cgroup filesystem.
pub fn check_cgroup_dir(dir: &Path) -> Result<CgroupVersion, CgroupFsError> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CgroupFsError::Missing(dir.to_path_buf())),
        Err(source) => return Err(CgroupFsError::Unreadable { path: dir.to_path_buf(), source }),
        Ok(m) if !m.is_dir() => return Err(CgroupFsError::NotCgroupFs(dir.to_path_buf())),
        Ok(_) => {}
    }
    let magic =
        filesystem_magic(dir).map_err(|source| CgroupFsError::Unreadable { path: dir.to_path_buf(), source })?;
    fs::read_dir(dir).map_err(|source| CgroupFsError::Unreadable { path: dir.to_path_buf(), source })?;
    match magic {
        CGROUP_SUPER_MAGIC => Ok(CgroupVersion::V1),
        CGROUP2_SUPER_MAGIC => Ok(CgroupVersion::V2),
        _ => Err(CgroupFsError::NotCgroupFs(dir.to_path_buf())),
    }
}

/// The magic number of the filesystem `path` is on (`statfs`'s `f_type`).
pub fn filesystem_magic(path: &Path) -> std::io::Result<i64> {
    let stat = nix::sys::statfs::statfs(path)?;
    #[allow(clippy::unnecessary_cast)] // the field's type differs between libcs
    let magic = stat.filesystem_type().0 as i64;
    Ok(magic)
}

/// The identity of the cgroup directory at `dir`.
pub fn cgroup_dir_info(dir: &Path) -> std::io::Result<CgroupDirInfo> {
    let meta = fs::symlink_metadata(dir)?;
    Ok(info_from_metadata(&meta))
}

/// The identity of a cgroup directory from metadata already read.
pub fn info_from_metadata(meta: &fs::Metadata) -> CgroupDirInfo {
    let ctime_ns =
        (meta.ctime().max(0) as u64).saturating_mul(1_000_000_000).saturating_add(meta.ctime_nsec().max(0) as u64);
    CgroupDirInfo { cgroup_id: meta.ino(), ctime_ns, subdirs: meta.nlink().saturating_sub(2) }
}

/// The path of `dir` relative to the hierarchy mounted at `mount_point`,
/// as the kernel prints it: `/` for the root, else `/a/b`.
pub fn relative_path(mount_point: &Path, dir: &Path) -> Option<String> {
    let rel = dir.strip_prefix(mount_point).ok()?;
    let rel = rel.to_str()?;
    Some(if rel.is_empty() { "/".to_string() } else { format!("/{rel}") })
}
