//! The argv of a hooked runtime's exec, captured in the kernel at the
//! syscall's entry (`exec_argv.bpf.c`), for the runtime hook.
//!
//! The hook holds a runtime's exec on a fanotify permission event and must
//! read what the runtime was asked to do. Reading the caller's memory from
//! userspace faults its pages in, and a page of a FUSE file that never
//! answers blocks that read for good. The eBPF programs read the argv with
//! `bpf_probe_read_user_str`, which fails on a page that is not present
//! instead of paging it in: an argv that cannot be read is reported as such
//! at once, never waited on.
//!
//! What is captured: for an `execve`/`execveat` whose path is one of the
//! watched paths (as passed to the syscall, not resolved), and for every
//! `execveat` of a file descriptor (`AT_EMPTY_PATH`, as `fexecve` does), up to
//! [`ARGV_MAX_ARGS`] arguments of up to [`ARGV_ARG_MAX`] − 1 bytes each,
//! kept by the task's TID (a bounded LRU map of 256 entries) until its next
//! exec. More or longer arguments set [`CapturedExec::incomplete`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::{Ebpf, EbpfLoader};
use tracing::{debug, warn};

use crate::abi::{CapturedExec, ExecArgvValue, EXEC_PATH_MAX};
pub use crate::abi::{ARGV_ARG_MAX, ARGV_MAX_ARGS};
use crate::loader::{kernel_btf, load_and_attach_tracepoints, preflight, refused, EbpfUnavailable, EXEC_ARGV_OBJECT};

/// Watched paths at most (the size of the kernel's `watched_paths` map).
pub const MAX_WATCHED_PATHS: usize = 64;

const TRACEPOINTS: [(&str, &str, &str); 2] =
    [("ctwatch_execve", "syscalls", "sys_enter_execve"), ("ctwatch_execveat", "syscalls", "sys_enter_execveat")];

/// The loaded and attached capture programs and their maps.
pub struct ExecArgvCapture {
    /// Keeps the programs attached (behind a lock only so the capture is `Sync`).
    _ebpf: Mutex<Ebpf>,
    argv: BpfHashMap<MapData, u32, ExecArgvValue>,
    captured: PerCpuArray<MapData, u64>,
    watched: Vec<PathBuf>,
}

impl ExecArgvCapture {
    /// Loads and attaches the capture for execs of `paths` (each path as
    /// given and, when it differs, its canonical form; paths under /proc,
    /// such as `/proc/self/exe`, as given). Paths of
    /// [`EXEC_PATH_MAX`] bytes or more, and those past
    /// [`MAX_WATCHED_PATHS`], are skipped with a warning.
    pub fn load(paths: &[PathBuf]) -> Result<Self, EbpfUnavailable> {
        preflight()?;
        if in_nested_pid_namespace() {
            // The capture is keyed by the host's TIDs; fanotify gives this namespace's.
            return Err(EbpfUnavailable::Refused(
                "ctwatch runs in a nested PID namespace: the eBPF argv capture's task IDs would not match".into(),
            ));
        }
        let btf = kernel_btf()?;
        let mut loader = EbpfLoader::new();
        loader.btf(Some(&btf));
        let mut ebpf = load_and_attach_tracepoints(&mut loader, EXEC_ARGV_OBJECT, &TRACEPOINTS)?;
        let missing = |name: &str| EbpfUnavailable::Refused(format!("map {name} missing from the object"));
        let mut watched_map: BpfHashMap<MapData, [u8; EXEC_PATH_MAX], u8> =
            BpfHashMap::try_from(ebpf.take_map("watched_paths").ok_or_else(|| missing("watched_paths"))?)
                .map_err(|e| refused("watched paths map", &e))?;
        let mut watched = Vec::new();
        // (/proc/self/exe is not resolved: it names whichever binary execs it.)
        let canonical = |p: &PathBuf| if p.starts_with("/proc") { None } else { p.canonicalize().ok() };
        for path in paths.iter().flat_map(|p| [Some(p.clone()), canonical(p)]).flatten() {
            if watched.contains(&path) {
                continue;
            }
            let Some(key) = path_key(&path) else {
                warn!(path = %path.display(), "path too long for the eBPF argv capture; its execs are read from /proc");
                continue;
            };
            if watched.len() >= MAX_WATCHED_PATHS {
                warn!(path = %path.display(), "too many runtime paths for the eBPF argv capture; its execs are read from /proc");
                continue;
            }
            watched_map.insert(key, 1, 0).map_err(|e| refused("watch a runtime path", &e))?;
            watched.push(path);
        }
        let argv = BpfHashMap::try_from(ebpf.take_map("argv_by_tid").ok_or_else(|| missing("argv_by_tid"))?)
            .map_err(|e| refused("argv map", &e))?;
        let captured = PerCpuArray::try_from(ebpf.take_map("captured").ok_or_else(|| missing("captured"))?)
            .map_err(|e| refused("capture counter", &e))?;
        debug!(paths = ?watched, "eBPF exec argv capture attached");
        Ok(ExecArgvCapture { _ebpf: Mutex::new(ebpf), argv, captured, watched })
    }

    /// The paths whose execs are captured.
    pub fn watched(&self) -> &[PathBuf] {
        &self.watched
    }

    /// The argv of task `tid` (a TID of the initial PID namespace, which is
    /// this process's) latest exec, if it was of a watched path.
    /// (An exec of any other path removes the task's entry in the kernel.)
    pub fn get(&self, tid: u32) -> Option<CapturedExec> {
        let value = self.argv.get(&tid, 0).ok()?;
        Some(CapturedExec::from(&value))
    }

    /// Watched execs captured since the programs were loaded.
    pub fn captured(&self) -> u64 {
        self.captured.get(&0, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0)
    }
}

/// Whether this process is in a PID namespace below the initial one
/// (`NSpid:` in its status lists more than one PID).
fn in_nested_pid_namespace() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("NSpid:")).map(|v| v.split_whitespace().count() > 1))
        .unwrap_or(false)
}

/// The map key of a path: its bytes, NUL-padded; `None` when too long.
fn path_key(path: &Path) -> Option<[u8; EXEC_PATH_MAX]> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= EXEC_PATH_MAX || bytes.contains(&0) {
        return None;
    }
    let mut key = [0u8; EXEC_PATH_MAX];
    key[..bytes.len()].copy_from_slice(bytes);
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_keys_are_nul_padded_and_bounded() {
        let key = path_key(Path::new("/usr/sbin/runc")).unwrap();
        assert_eq!(&key[..15], b"/usr/sbin/runc\0");
        assert!(key[15..].iter().all(|b| *b == 0));
        assert!(path_key(Path::new(&"x".repeat(EXEC_PATH_MAX))).is_none());
        assert!(path_key(Path::new(&"x".repeat(EXEC_PATH_MAX - 1))).is_some());
        assert!(!in_nested_pid_namespace(), "the tests run in the host's PID namespace");
    }
}
