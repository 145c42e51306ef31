//! Paths as a container sees them, resolved to what they reach on the host.
//!
//! The container's root is `/proc/<pid>/root` of a process in it. Every
//! component of the path, symlinks and `..` included, is resolved by the
//! kernel *inside* that root (`openat2` with `RESOLVE_IN_ROOT`): an absolute
//! symlink or a `../../..` chain in the container stops at the container's
//! root, so a link can never lead ctwatch to a host file. Magic links
//! (`/proc/self/root`-style) are refused.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode};
use thiserror::Error;

/// Why a path could not be resolved.
#[derive(Debug, Error)]
pub enum ResolveError {
    /// The container's root could not be opened (its process is gone, or no permission).
    #[error("cannot open the root of process {pid}: {source}")]
    NoRoot {
        /// The process whose root was asked for.
        pid: u32,
        /// Why.
        source: io::Error,
    },
    /// Nothing is at that path inside the container.
    #[error("{path:?} does not exist in the container")]
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// The path is not usable (empty, or with a NUL byte).
    #[error("invalid path {0:?}")]
    InvalidPath(String),
    /// The kernel lacks `openat2` (Linux 5.6+), so safe resolution is impossible.
    #[error("this kernel has no openat2 (Linux 5.6 or later is needed to resolve paths safely)")]
    Unsupported,
    /// The file changed while its host path was being made (a rename or a link swapped in).
    #[error("{path:?} changed while it was being resolved; try again")]
    Changed {
        /// The path asked for.
        path: String,
    },
    /// The path is not a regular file, so it is not read (a FIFO, device or directory).
    #[error("{path:?} is not a regular file in the container; only regular files are read")]
    NotRegular {
        /// The path inside the container.
        path: String,
    },
    /// Another failure of the kernel call.
    #[error("cannot resolve {path:?}: {source}")]
    Io {
        /// The path asked for.
        path: String,
        /// Why.
        source: io::Error,
    },
}

/// A path resolved inside a container's root.
#[derive(Debug)]
pub struct ResolvedPath {
    /// The path inside the container, with every symlink and `..` resolved.
    pub container_path: PathBuf,
    /// A host path that reaches the same file (through `/proc/<pid>/root`).
    /// Only a name: to read the file, use [`ResolvedPath::file`], which cannot be raced.
    pub host_path: PathBuf,
    /// The file itself, opened `O_PATH` (no read access; reopen through
    /// `/proc/self/fd/<fd>` with the mode wanted, or use [`ResolvedPath::read`]).
    pub file: OwnedFd,
    /// The file's device (`st_dev` of [`ResolvedPath::file`]): whoever opens
    /// [`ResolvedPath::host_path`] must find the same device and inode.
    pub dev: u64,
    /// The file's inode number (`st_ino` of [`ResolvedPath::file`]).
    pub ino: u64,
}

/// Part of a file read through its resolved descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChunk {
    /// The bytes read.
    pub data: Vec<u8>,
    /// The file's size when it was read.
    pub size: u64,
    /// True when `data` reaches the end of the file.
    pub eof: bool,
}

impl ResolvedPath {
    /// Reads at most `max` bytes from `offset` of the resolved file, through
    /// [`ResolvedPath::file`] (never by name, so a link swapped in meanwhile
    /// cannot redirect the read). Only regular files are read: a FIFO or a
    /// device is refused with [`ResolveError::NotRegular`], never opened.
    pub fn read(&self, offset: u64, max: usize) -> Result<FileChunk, ResolveError> {
        let path = self.container_path.to_string_lossy().into_owned();
        let io_err = |source: io::Error| ResolveError::Io { path: path.clone(), source };
        let st = fstat(self.file.as_raw_fd()).map_err(|e| io_err(e.into()))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(ResolveError::NotRegular { path });
        }
        // Reopening our own descriptor's /proc link opens that very inode, for reading.
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        let fd = nix::fcntl::open(format!("/proc/self/fd/{}", self.file.as_raw_fd()).as_str(), flags, Mode::empty())
            .map_err(|e| io_err(e.into()))?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        let file = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let meta = file.metadata().map_err(io_err)?;
        if meta.dev() != self.dev || meta.ino() != self.ino {
            return Err(ResolveError::Changed { path });
        }
        let size = meta.len();
        let want = max.min(size.saturating_sub(offset).try_into().unwrap_or(usize::MAX));
        let mut data = vec![0; want];
        let mut got = 0;
        while got < want {
            match std::os::unix::fs::FileExt::read_at(&file, &mut data[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        data.truncate(got);
        Ok(FileChunk { eof: offset + got as u64 >= size, data, size })
    }
}

/// Opens `path` inside `root` (a directory), resolving every component inside it.
pub fn open_in_root(root: &Path, path: &str) -> Result<OwnedFd, ResolveError> {
    if path.is_empty() || path.contains('\0') {
        return Err(ResolveError::InvalidPath(path.to_string()));
    }
    let root_fd = open_dir(root).map_err(|source| ResolveError::Io { path: root.display().to_string(), source })?;
    open_beneath(&root_fd, path)
}

/// Resolves `path` as process `pid` (read under `proc_root`, normally `/proc`) sees it.
pub fn resolve_in_process_root(proc_root: &Path, pid: u32, path: &str) -> Result<ResolvedPath, ResolveError> {
    if path.is_empty() || path.contains('\0') {
        return Err(ResolveError::InvalidPath(path.to_string()));
    }
    let root = proc_root.join(pid.to_string()).join("root");
    let root_fd = open_dir(&root).map_err(|source| ResolveError::NoRoot { pid, source })?;
    let file = open_beneath(&root_fd, path)?;
    let io_err = |source| ResolveError::Io { path: path.to_string(), source };
    // The kernel's name for the file: relative to the container's root when
    // the container has its own mount namespace, else a host path already.
    let named = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(io_err)?;
    let same_mounts = same_mount_namespace(proc_root, pid);
    let host_path = if same_mounts { named.clone() } else { join_under(&root, &named) };
    let container_path = if same_mounts { strip_root(proc_root, pid, &named) } else { named };
    // The name must reach this very file; a swap in between is refused.
    let want = fstat(file.as_raw_fd()).map_err(|e| io_err(e.into()))?;
    match fs::symlink_metadata(&host_path) {
        Ok(m) if m.dev() == want.st_dev && m.ino() == want.st_ino => {}
        _ => return Err(ResolveError::Changed { path: path.to_string() }),
    }
    Ok(ResolvedPath { container_path, host_path, file, dev: want.st_dev, ino: want.st_ino })
}

fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_beneath(root: &OwnedFd, path: &str) -> Result<OwnedFd, ResolveError> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match nix::fcntl::openat2(root.as_raw_fd(), path, how) {
        // SAFETY: `openat2` just returned this descriptor and nothing else owns it.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => {
            Err(ResolveError::NotFound { path: path.to_string() })
        }
        Err(nix::errno::Errno::ENOSYS) => Err(ResolveError::Unsupported),
        Err(e) => Err(ResolveError::Io { path: path.to_string(), source: e.into() }),
    }
}

fn same_mount_namespace(proc_root: &Path, pid: u32) -> bool {
    let ns = |p: PathBuf| fs::metadata(p).map(|m| m.ino()).ok();
    let theirs = ns(proc_root.join(pid.to_string()).join("ns/mnt"));
    theirs.is_some() && theirs == ns(proc_root.join("self/ns/mnt"))
}

/// `root` + an absolute in-container path.
fn join_under(root: &Path, inner: &Path) -> PathBuf {
    let relative = inner.strip_prefix("/").unwrap_or(inner);
    if relative.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(relative)
    }
}

/// The in-container form of a host path, for a process chrooted in our mount namespace.
fn strip_root(proc_root: &Path, pid: u32, host: &Path) -> PathBuf {
    let Ok(root) = fs::read_link(proc_root.join(pid.to_string()).join("root")) else {
        return host.to_path_buf();
    };
    match host.strip_prefix(&root) {
        Ok(rest) => {
            let mut bytes = b"/".to_vec();
            bytes.extend(rest.as_os_str().as_encoded_bytes());
            PathBuf::from(OsString::from_vec(bytes))
        }
        Err(_) => host.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_dotdots_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/hostname"), "inside\n").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/hostname", root.join("etc/rel-link")).unwrap();
        for path in ["/abs-link", "etc/rel-link", "/../../etc/hostname", "/etc/../../etc/hostname"] {
            let fd = open_in_root(root, path).unwrap();
            let name = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
            assert_eq!(name, root.join("etc/hostname"), "{path}");
        }
        // A link to something the root does not have is "not found", never the host's file.
        std::os::unix::fs::symlink("/etc/shadow", root.join("shadow-link")).unwrap();
        assert!(matches!(open_in_root(root, "/shadow-link"), Err(ResolveError::NotFound { .. })));
        assert!(matches!(open_in_root(root, ""), Err(ResolveError::InvalidPath(_))));
        assert!(matches!(open_in_root(root, "a\0b"), Err(ResolveError::InvalidPath(_))));
    }

    #[test]
    fn reads_go_through_the_descriptor_and_only_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "0123456789").unwrap();
        let me = std::process::id();
        let resolved = resolve_in_process_root(Path::new("/proc"), me, file.to_str().unwrap()).unwrap();
        let meta = fs::metadata(&file).unwrap();
        assert_eq!((resolved.dev, resolved.ino), (meta.dev(), meta.ino()));
        let chunk = resolved.read(3, 4).unwrap();
        assert_eq!((chunk.data.as_slice(), chunk.size, chunk.eof), (&b"3456"[..], 10, false));
        let tail = resolved.read(8, 100).unwrap();
        assert_eq!((tail.data.as_slice(), tail.eof), (&b"89"[..], true));
        assert_eq!(resolved.read(50, 10).unwrap(), FileChunk { data: Vec::new(), size: 10, eof: true });
        // Swapped for a link to another file after resolving: the read still reaches the file resolved.
        fs::remove_file(&file).unwrap();
        fs::write(dir.path().join("other"), "other").unwrap();
        std::os::unix::fs::symlink(dir.path().join("other"), &file).unwrap();
        assert_eq!(resolved.read(0, 100).unwrap().data, b"0123456789");
        // A FIFO is refused, not opened (which would block).
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let resolved = resolve_in_process_root(Path::new("/proc"), me, fifo.to_str().unwrap()).unwrap();
        assert!(matches!(resolved.read(0, 10), Err(ResolveError::NotRegular { .. })));
    }

    #[test]
    fn magic_links_are_refused() {
        // A root with a magic link right in it: /proc/self/cwd. RESOLVE_IN_ROOT
        // alone refuses it too on today's kernels, but with EXDEV and only "for
        // now" (openat2(2)); RESOLVE_NO_MAGICLINKS refuses it with ELOOP, which
        // is what this checks (the test fails if the flag is dropped).
        let refused = open_in_root(Path::new("/proc/self"), "cwd");
        match refused {
            Err(ResolveError::Io { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ELOOP), "refused by RESOLVE_NO_MAGICLINKS: {source}")
            }
            other => panic!("a magic link must be refused: {other:?}"),
        }
        // And a symlink to a magic link through the host's /proc: not even reachable.
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/proc/self/root/etc/passwd", dir.path().join("magic")).unwrap();
        assert!(open_in_root(dir.path(), "/magic").is_err());
    }
}
