//! The argv of an `execve` that is waiting for ctwatch's permission answer.
//!
//! When fanotify reports `FAN_OPEN_EXEC_PERM`, the process is still inside
//! `execve`: its `/proc/<pid>/cmdline` is still the caller's (a shim, conmon,
//! podman), not the runtime's. The new argv is only in the caller's memory, at
//! the address passed to the syscall. `/proc/<tid>/syscall` gives that address
//! (the task is blocked in the syscall, so it is stable) and `/proc/<tid>/mem`
//! reads it. Both need ptrace access, which root has.
//!
//! The event is queued a moment before the task goes to sleep waiting for the
//! answer; read in that moment, the syscall file says `running`. The task
//! cannot get past the wait without our answer, so the read is retried.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use thiserror::Error;

/// At most this many arguments are read.
pub const MAX_ARGS: usize = 1024;
/// At most this many bytes of one argument are kept.
pub const MAX_ARG_BYTES: usize = 8192;
/// At most this many bytes of arguments in all.
pub const MAX_TOTAL_BYTES: usize = 256 * 1024;

#[cfg(target_arch = "x86_64")]
const SYS_EXECVE: i64 = 59;
#[cfg(target_arch = "x86_64")]
const SYS_EXECVEAT: i64 = 322;
#[cfg(target_arch = "aarch64")]
const SYS_EXECVE: i64 = 221;
#[cfg(target_arch = "aarch64")]
const SYS_EXECVEAT: i64 = 281;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYS_EXECVE: i64 = libc::SYS_execve as i64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYS_EXECVEAT: i64 = libc::SYS_execveat as i64;

/// Why an exec's argv could not be read.
#[derive(Debug, Error)]
pub enum ExecArgsError {
    /// `/proc/<tid>/syscall` or `/proc/<tid>/mem` could not be read.
    #[error("cannot read {what} of task {tid}: {source}")]
    Io {
        /// The task.
        tid: u32,
        /// Which file.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The task is not blocked in `execve`/`execveat` (it was killed, or the event is not an exec).
    #[error("task {tid} is not in execve (syscall file says {state:?})")]
    NotInExec {
        /// The task.
        tid: u32,
        /// The start of what the syscall file said.
        state: String,
    },
}

/// How long [`exec_argv`] retries while the task is still on its way to sleep.
pub const RUNNING_PATIENCE: std::time::Duration = std::time::Duration::from_millis(50);

/// Reads the argv that task `tid` passed to the `execve` it is blocked in,
/// retrying (up to [`RUNNING_PATIENCE`]) while the kernel still reports the
/// task as running.
pub fn exec_argv(proc_root: &Path, tid: u32) -> Result<Vec<String>, ExecArgsError> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(20);
    loop {
        match exec_argv_once(proc_root, tid) {
            Err(ExecArgsError::NotInExec { state, .. })
                if state.starts_with("running") && start.elapsed() < RUNNING_PATIENCE =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(2));
            }
            result => return result,
        }
    }
}

/// One attempt of [`exec_argv`].
fn exec_argv_once(proc_root: &Path, tid: u32) -> Result<Vec<String>, ExecArgsError> {
    let task = proc_root.join(tid.to_string());
    let syscall = std::fs::read_to_string(task.join("syscall")).map_err(|source| ExecArgsError::Io {
        tid,
        what: "syscall",
        source,
    })?;
    let argv_address = argv_address(&syscall)
        .ok_or_else(|| ExecArgsError::NotInExec { tid, state: syscall.chars().take(40).collect() })?;
    let mem = File::open(task.join("mem")).map_err(|source| ExecArgsError::Io { tid, what: "mem", source })?;
    read_argv(&mem, argv_address).map_err(|source| ExecArgsError::Io { tid, what: "mem", source })
}

/// The argv pointer from a `/proc/<tid>/syscall` line, when the syscall is an exec.
pub fn argv_address(syscall: &str) -> Option<u64> {
    let mut fields = syscall.split_whitespace();
    let number: i64 = fields.next()?.parse().ok()?;
    let args: Vec<u64> =
        fields.take(6).filter_map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok()).collect();
    match number {
        n if n == SYS_EXECVE => args.get(1).copied(),
        n if n == SYS_EXECVEAT => args.get(2).copied(),
        _ => None,
    }
}

/// Reads a NULL-terminated array of string pointers at `address` from `mem`.
fn read_argv(mem: &File, address: u64) -> std::io::Result<Vec<String>> {
    let mut args = Vec::new();
    let mut total = 0;
    let mut pointers = [0u8; 8 * 64];
    let mut at = address;
    'outer: while args.len() < MAX_ARGS {
        let n = mem.read_at(&mut pointers, at)?;
        if n < 8 {
            break;
        }
        for chunk in pointers[..n - n % 8].chunks_exact(8) {
            let pointer = u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
            if pointer == 0 || args.len() >= MAX_ARGS || total >= MAX_TOTAL_BYTES {
                break 'outer;
            }
            let arg = read_c_string(mem, pointer, MAX_ARG_BYTES.min(MAX_TOTAL_BYTES - total))?;
            total += arg.len() + 1;
            args.push(arg);
        }
        at += (n - n % 8) as u64;
    }
    Ok(args)
}

/// Reads a NUL-terminated string at `address`, at most `max` bytes, lossily as UTF-8.
fn read_c_string(mem: &File, address: u64, max: usize) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 256];
    let mut at = address;
    while bytes.len() < max {
        let n = mem.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        if let Some(end) = buf[..n].iter().position(|&b| b == 0) {
            bytes.extend_from_slice(&buf[..end]);
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
        at += n as u64;
    }
    bytes.truncate(max);
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_pointer_comes_from_the_right_argument() {
        let execve = format!("{SYS_EXECVE} 0xc000010000 0xc000020000 0xc000030000 0x0 0x0 0x0 0x7ffd 0x4000");
        assert_eq!(argv_address(&execve), Some(0xc000020000));
        let execveat = format!("{SYS_EXECVEAT} 0xffffff9c 0xc000010000 0xc000020000 0x0 0x0 0x0 0x7ffd 0x4000");
        assert_eq!(argv_address(&execveat), Some(0xc000020000));
        assert_eq!(argv_address("running"), None);
        assert_eq!(argv_address("0 0x3 0x0 0x0 0x0 0x0 0x0 0x7ffd 0x4000"), None);
        assert_eq!(argv_address(""), None);
        assert_eq!(argv_address(&format!("{SYS_EXECVE} zz")), None);
    }

    #[test]
    fn reads_this_process_argv_from_its_own_memory() {
        // Build an argv array in our own memory and read it back through /proc/self/mem.
        let strings = [c"runc", c"--root", c"/run/x", c"create"];
        let mut pointers: Vec<u64> = strings.iter().map(|s| s.as_ptr() as u64).collect();
        pointers.push(0);
        let mem = File::open("/proc/self/mem").unwrap();
        let args = read_argv(&mem, pointers.as_ptr() as u64).unwrap();
        assert_eq!(args, ["runc", "--root", "/run/x", "create"]);
    }
}
