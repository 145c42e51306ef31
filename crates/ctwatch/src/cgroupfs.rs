//! The cgroup filesystems of this host: which hierarchies exist, which one the
//! tracker watches, and the identity (ID, ctime) of a cgroup directory.
//!
//! On a hybrid host the kernel mirrors every runtime's mkdir into each
//! hierarchy; ctwatch watches exactly one, so each container is seen once.

use std::fs;
use std::os::unix::ffi::OsStrExt;
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
/// as the kernel prints it: `/` for the root, else `/a/b`, in the form of
/// [`path_from_bytes`] (names that are not UTF-8 are kept, escaped).
pub fn relative_path(mount_point: &Path, dir: &Path) -> Option<String> {
    let rel = dir.strip_prefix(mount_point).ok()?;
    let rel = path_from_bytes(rel.as_os_str().as_bytes());
    Some(if rel.is_empty() { "/".to_string() } else { format!("/{rel}") })
}

/// The character that starts the escape of a byte that is not UTF-8 in a
/// cgroup path string (NUL: the kernel never allows it in a name).
pub const BYTE_ESCAPE: char = '\0';

/// A cgroup path (or name) as ctwatch keeps it: bytes that are valid UTF-8
/// unchanged; each byte that is not part of valid UTF-8 as NUL followed by
/// its two lowercase hex digits. No cgroup name contains NUL, so this is
/// lossless and unambiguous, and [`path_to_bytes`] gives the bytes back.
pub fn path_from_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push(BYTE_ESCAPE);
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

/// The bytes of a path made by [`path_from_bytes`] (a NUL not followed by
/// two hex digits is kept as it is).
pub fn path_to_bytes(path: &str) -> Vec<u8> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == 0 {
            if let Some(byte) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// True when the path (in the form of [`path_from_bytes`]) is not UTF-8 on the filesystem.
pub fn path_is_escaped(path: &str) -> bool {
    path.contains(BYTE_ESCAPE)
}

/// A path for people to read: bytes that are not UTF-8 as `\xNN`.
pub fn display_path(path: &str) -> std::borrow::Cow<'_, str> {
    if !path_is_escaped(path) {
        return path.into();
    }
    let bytes = path_to_bytes(path);
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.into()
}

/// The absolute path of the cgroup at `rel` (a path relative to the
/// hierarchy, in the form of [`path_from_bytes`]).
pub fn absolute_path(mount_point: &Path, rel: &str) -> PathBuf {
    let bytes = path_to_bytes(rel.trim_start_matches('/'));
    mount_point.join(std::ffi::OsStr::from_bytes(&bytes))
}

/// `FILEID_KERNFS`: the file handle type of kernfs (cgroupfs), whose 8 handle
/// bytes are the node's 64-bit ID, which is the cgroup ID.
const FILEID_KERNFS: i32 = 0xfe;

#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: [u8; 8],
}

/// Finds a cgroup's path from its ID, whatever its depth: opens it by file
/// handle on the hierarchy mounted at `mount_point` (the kernel's own way of
/// naming a cgroup by ID; needs `CAP_DAC_READ_SEARCH`) and reads the path of
/// the descriptor back. Returns the path relative to the hierarchy in the
/// form of [`path_from_bytes`]; an error when the cgroup is gone, or when its
/// path does not fit in PATH_MAX (`ENAMETOOLONG`).
pub fn path_of_cgroup_id(mount_point: &Path, cgroup_id: u64) -> std::io::Result<String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mount = fs::File::open(mount_point)?;
    let mut handle = KernfsHandle { handle_bytes: 8, handle_type: FILEID_KERNFS, id: cgroup_id.to_ne_bytes() };
    // SAFETY: `handle` is a `struct file_handle` with 8 bytes of handle
    // data, as `handle_bytes` says; the kernel reads no further.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&mut handle as *mut KernfsHandle).cast::<libc::file_handle>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by the kernel, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let target = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    let gone = || std::io::Error::from_raw_os_error(libc::ENOENT);
    // A cgroup removed meanwhile reads back as "<path> (deleted)", which is no directory of this ID.
    let meta = fs::metadata(&target).map_err(|_| gone())?;
    if meta.ino() != cgroup_id {
        return Err(gone());
    }
    relative_path(mount_point, &target).ok_or_else(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_every_byte_and_utf8_is_unchanged() {
        for valid in ["/", "/docker/abc", "/system.slice/machine-my\\x2dbox.scope", "/é/ünï/😀"] {
            assert_eq!(path_from_bytes(valid.as_bytes()), valid);
            assert_eq!(path_to_bytes(valid), valid.as_bytes());
            assert!(!path_is_escaped(valid));
            assert_eq!(display_path(valid), valid);
        }
        let raw: &[u8] = b"/\xff\xfe-x/caf\xc3/\xe2\x82/docker/abc";
        let kept = path_from_bytes(raw);
        assert_eq!(kept, "/\0ff\0fe-x/caf\0c3/\0e2\082/docker/abc");
        assert_eq!(path_to_bytes(&kept), raw);
        assert!(path_is_escaped(&kept));
        assert_eq!(display_path(&kept), "/\\xff\\xfe-x/caf\\xc3/\\xe2\\x82/docker/abc");
        for n in 0..=255u8 {
            let b = [b'/', n, n.wrapping_mul(7), b'a'];
            if !b.contains(&0) {
                assert_eq!(path_to_bytes(&path_from_bytes(&b)), b);
            }
        }
        assert_eq!(
            absolute_path(Path::new("/sys/fs/cgroup"), &kept).as_os_str().as_bytes(),
            [b"/sys/fs/cgroup".as_slice(), raw].concat()
        );
        assert_eq!(
            relative_path(Path::new("/m"), Path::new(std::ffi::OsStr::from_bytes(b"/m/\xff"))).unwrap(),
            "/\0ff"
        );
    }
}
