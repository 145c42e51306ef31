//! Who executed a runtime binary, and reading the files it named as it would.
//!
//! The exec is held by fanotify while this runs, so the task cannot change
//! its credentials meanwhile: `/proc/<tid>/status` says who is asking. Only a
//! caller that could create a container itself (euid 0 with `CAP_SYS_ADMIN`
//! in the initial user namespace, which is ctwatch's) is trusted; anyone else can run runc too,
//! with any arguments, and must not be able to speak for a real container.
//!
//! Files a caller names (`config.json`, `-f`, the pid file, `state.json`)
//! are opened inside the caller's root (`RESOLVE_IN_ROOT`), without magic
//! links (`RESOLVE_NO_MAGICLINKS`), by a short-lived thread whose fsuid,
//! fsgid and supplementary groups are the caller's, so a file the caller
//! could not read is not read for it.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use ctwatch::untrusted::RecordFileError;

/// `CAP_SYS_ADMIN`'s bit in a capability set.
const CAP_SYS_ADMIN: u32 = 21;

/// The credentials of the task that executed a runtime binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Effective UID.
    pub euid: u32,
    /// Filesystem UID (what file access is checked with).
    pub fsuid: u32,
    /// Filesystem GID.
    pub fsgid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Whether `CAP_SYS_ADMIN` is in its effective set.
    pub cap_sys_admin: bool,
    /// Whether it is in the initial user namespace (ctwatch's own).
    pub initial_userns: bool,
}

impl Caller {
    /// Reads task `tid`'s credentials (`None` when it is gone or unreadable).
    pub fn of(proc_root: &Path, tid: u32) -> Option<Caller> {
        let task = proc_root.join(tid.to_string());
        let status = std::fs::read_to_string(task.join("status")).ok()?;
        // ctwatch's own user namespace is the initial one: a permission-class
        // fanotify group needs CAP_SYS_ADMIN there (PID 1's may be unreadable).
        Self::parse(&status, userns_of(&task)? == userns_of(&proc_root.join("self"))?)
    }

    /// Parses a `/proc/<tid>/status`.
    fn parse(status: &str, initial_userns: bool) -> Option<Caller> {
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let ids = |name: &str| -> Option<Vec<u32>> {
            field(name)?.split_whitespace().map(|v| v.parse().ok()).collect::<Option<Vec<u32>>>()
        };
        let uids = ids("Uid:")?;
        let gids = ids("Gid:")?;
        let groups = ids("Groups:").unwrap_or_default();
        let cap_eff = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
        Some(Caller {
            euid: *uids.get(1)?,
            fsuid: *uids.get(3)?,
            fsgid: *gids.get(3)?,
            groups,
            cap_sys_admin: cap_eff & (1 << CAP_SYS_ADMIN) != 0,
            initial_userns,
        })
    }

    /// Whether it could create any container itself: root with `CAP_SYS_ADMIN`
    /// in the initial user namespace. Rootless runtimes are not trusted.
    pub fn trusted(&self) -> bool {
        self.euid == 0 && self.cap_sys_admin && self.initial_userns
    }
}

/// The user namespace a task is in, as the nsfs device and inode.
fn userns_of(task: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(task.join("ns/user")).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// A caller's root and working directory, opened while its exec is held, to
/// read the files it names later (its pid file comes after it may have exited).
#[derive(Debug)]
pub struct CallerFs {
    creds: Caller,
    root: OwnedFd,
    /// The working directory inside the root, when it is under it.
    cwd_in_root: Option<PathBuf>,
    cwd: OwnedFd,
}

impl CallerFs {
    /// Opens process `pid`'s root and working directory.
    pub fn open(proc_root: &Path, pid: u32, creds: Caller) -> std::io::Result<CallerFs> {
        let proc = proc_root.join(pid.to_string());
        let root = open_path(&proc.join("root"))?;
        let cwd = open_path(&proc.join("cwd"))?;
        let cwd_in_root = match (std::fs::read_link(proc.join("root")), std::fs::read_link(proc.join("cwd"))) {
            (Ok(r), Ok(c)) => c.strip_prefix(&r).ok().map(Path::to_path_buf),
            _ => None,
        };
        Ok(CallerFs { creds, root, cwd_in_root, cwd })
    }

    /// Reads the regular file at `path` (as the caller gave it: absolute in its
    /// root, or relative to its working directory), at most `max` bytes, with the
    /// caller's file access rights, never following a magic link or leaving its root.
    pub fn read(&self, path: &Path, max: u64) -> Result<Vec<u8>, RecordFileError> {
        let creds = self.creds.clone();
        let (dir, rel, in_root) = if path.is_absolute() {
            (self.root.as_raw_fd(), strip_root(path), true)
        } else if let Some(cwd) = &self.cwd_in_root {
            (self.root.as_raw_fd(), cwd.join(path), true)
        } else {
            // The working directory is outside the root: `..` stops at it.
            (self.cwd.as_raw_fd(), path.to_path_buf(), true)
        };
        let opened = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("hook-caller-read".into())
                .spawn_scoped(s, move || {
                    become_caller(&creds)?;
                    openat2_in_root(dir, &rel, in_root)
                })
                .map_err(RecordFileError::Io)?
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the reading thread panicked")))
                .map_err(RecordFileError::Io)
        })?;
        read_regular(File::from(opened), max)
    }
}

/// `path` without its leading `/`.
fn strip_root(path: &Path) -> PathBuf {
    path.components().filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_))).collect()
}

/// Opens a directory as an `O_PATH` fd.
fn open_path(path: &Path) -> std::io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid C string; the returned fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes this thread's file access the caller's: supplementary groups, fsgid,
/// fsuid (leaving uid 0 drops the thread's file capabilities). The raw
/// syscalls change only this thread (glibc's `setgroups` would change all).
fn become_caller(creds: &Caller) -> std::io::Result<()> {
    let groups: Vec<libc::gid_t> = creds.groups.iter().take(65536).copied().collect();
    // SAFETY: a valid array of `groups.len()` gids.
    if unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: setfsgid/setfsuid take an id; they change only this thread.
    unsafe {
        libc::setfsgid(creds.fsgid);
        libc::setfsuid(creds.fsuid);
    }
    // Both return the previous value: a second call tells whether it took.
    // SAFETY: as above.
    let (gid, uid) = unsafe { (libc::setfsgid(creds.fsgid), libc::setfsuid(creds.fsuid)) };
    if gid as u32 != creds.fsgid || uid as u32 != creds.fsuid {
        return Err(std::io::Error::other("cannot take the caller's file credentials"));
    }
    Ok(())
}

/// `openat2(dir, rel, O_RDONLY|O_NONBLOCK, RESOLVE_NO_MAGICLINKS [|RESOLVE_IN_ROOT])`.
fn openat2_in_root(dir: i32, rel: &Path, in_root: bool) -> std::io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let c = std::ffi::CString::new(rel.as_os_str().as_encoded_bytes())?;
    let mut resolve = libc::RESOLVE_NO_MAGICLINKS;
    if in_root {
        resolve |= libc::RESOLVE_IN_ROOT;
    }
    // SAFETY: open_how is plain data; zeroed then filled.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = resolve;
    // SAFETY: valid pointers and the struct's size, as openat2 wants.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, dir, c.as_ptr(), &how as *const libc::open_how, size_of::<libc::open_how>())
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Reads an opened file if it is a regular one of at most `max` bytes.
fn read_regular(file: File, max: u64) -> Result<Vec<u8>, RecordFileError> {
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(RecordFileError::NotAFile);
    }
    if meta.len() > max {
        return Err(RecordFileError::TooLarge { size: meta.len(), max });
    }
    let mut text = Vec::new();
    file.take(max + 1).read_to_end(&mut text)?;
    if text.len() as u64 > max {
        return Err(RecordFileError::TooLarge { size: text.len() as u64, max });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_status() {
        let status =
            "Name:\trunc\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\nGroups:\t4 27 \nCapEff:\t000001ffffffffff\n";
        let c = Caller::parse(status, true).unwrap();
        assert_eq!((c.euid, c.fsuid, c.fsgid, c.groups.clone()), (0, 0, 100, vec![4, 27]));
        assert!(c.trusted());
        let user = "Uid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t\nCapEff:\t0000000000000000\n";
        assert!(!Caller::parse(user, true).unwrap().trusted());
        assert!(!Caller::parse(status, false).unwrap().trusted(), "root of another user namespace");
        let no_admin = status.replace("000001ffffffffff", "000001ffffdfffff");
        assert!(!Caller::parse(&no_admin, true).unwrap().trusted());
        assert!(Caller::parse("Uid:\tx\n", true).is_none());
    }

    #[test]
    fn reads_inside_the_callers_root_without_magic_links() {
        let me = std::process::id();
        let creds = Caller::of(Path::new("/proc"), me).unwrap();
        let fs = CallerFs::open(Path::new("/proc"), me, creds).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(fs.read(&file, 10).unwrap(), b"x");
        assert!(matches!(fs.read(&file, 0), Err(RecordFileError::TooLarge { .. })));
        assert!(matches!(fs.read(dir.path(), 10), Err(RecordFileError::NotAFile)));
        let magic = format!("/proc/{me}/root{}", file.display());
        assert!(matches!(fs.read(Path::new(&magic), 10), Err(RecordFileError::Io(_))), "no magic links");
        // A symlink out of the root stays in it.
        std::os::unix::fs::symlink("/../../..", dir.path().join("up")).unwrap();
        let through = dir.path().join("up").join(file.strip_prefix("/").unwrap());
        assert_eq!(fs.read(&through, 10).map_err(|e| e.to_string()), Ok(b"x".to_vec()), "{}", through.display());
    }

    #[test]
    fn reads_with_the_callers_file_rights() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to take another user's file credentials");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let public = dir.path().join("public");
        std::fs::write(&public, "p").unwrap();
        std::fs::set_permissions(&public, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let nobody = Caller {
            euid: 65534,
            fsuid: 65534,
            fsgid: 65534,
            groups: vec![],
            cap_sys_admin: false,
            initial_userns: true,
        };
        let fs = CallerFs::open(Path::new("/proc"), std::process::id(), nobody).unwrap();
        assert_eq!(fs.read(&public, 10).unwrap(), b"p");
        match fs.read(&secret, 10) {
            Err(RecordFileError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied),
            other => panic!("a root-only file read for nobody: {other:?}"),
        }
        // This thread kept its own credentials.
        assert_eq!(std::fs::read(&secret).unwrap(), b"s");
    }
}
