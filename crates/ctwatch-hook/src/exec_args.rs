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
//!
//! Reading another process's memory faults its pages in, and a page of a
//! FUSE file is read by whoever runs that FUSE daemon: any user can put an
//! argv there and never answer. Such a read sleeps uninterruptibly (not even
//! SIGKILL ends it once the daemon has taken the request), so the hook never
//! does it on its own threads: [`ArgvReader`] forks a child for each read,
//! waits for its output with a timeout, and leaves a child that does not
//! finish behind (killed, reaped when it can be; it holds no fd of ctwatch's,
//! so it never keeps the fanotify group open). Children left behind are
//! capped per caller's user: with [`MAX_STUCK_PER_USER`] of a user's reads
//! still stuck, that user's next execs are unverifiable at once (without
//! taking a worker's time), while other users' execs are still read; past
//! [`MAX_STUCK_READERS`] in all, every exec is.
//!
//! When an in-kernel capture is available ([`ArgvCapture`]: ctwatch-ebpf's
//! program on the execve/execveat syscalls' entry, which reads the argv
//! without faulting pages in), the hook takes the argv from it first
//! ([`from_capture`]) and forks no reader: an argument in a page that is not
//! in memory and that a user serves (a FUSE page nobody has read) makes the
//! exec unverifiable at once ([`ExecArgsError::NotResident`]). An exec the
//! capture did not see (another path to the binary, no eBPF) or saw only in
//! part (more or longer arguments than it keeps, or an argument in a page the
//! kernel fills, such as a literal in a forked child's untouched rodata) is
//! read by the forked reader as before.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
#[non_exhaustive]
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
    /// The read did not finish in time (the caller's memory is on a file
    /// system that does not answer, or is being paged in too slowly).
    #[error("reading the argv of task {tid} took longer than {waited:?}; the exec is unverifiable")]
    Timeout {
        /// The task.
        tid: u32,
        /// How long ctwatch waited.
        waited: Duration,
    },
    /// Too many earlier reads (of this user's execs, or in all) are still stuck; this one was not tried.
    #[error("{stuck} earlier argv reads of uid {uid}'s execs are still stuck; the exec of task {tid} is unverifiable")]
    TooManyStuck {
        /// The task.
        tid: u32,
        /// The caller's real UID.
        uid: u32,
        /// Reads still stuck.
        stuck: usize,
    },
    /// The reader process could not be started or failed oddly.
    #[error("cannot read the argv of task {tid}: {reason}")]
    Reader {
        /// The task.
        tid: u32,
        /// Why.
        reason: String,
    },
    /// The task is not blocked in `execve`/`execveat` (it was killed, or the event is not an exec).
    #[error("task {tid} is not in execve (syscall file says {state:?})")]
    NotInExec {
        /// The task.
        tid: u32,
        /// The start of what the syscall file said.
        state: String,
    },
    /// The in-kernel capture could not read an argument without faulting its
    /// page in, and that page is served by a user (a FUSE file, userfaultfd memory).
    #[error("an argument of task {tid}'s exec is in a page that is not in memory and that a user serves (FUSE or userfaultfd; read by eBPF without faulting); the exec is unverifiable")]
    NotResident {
        /// The task.
        tid: u32,
    },
}

impl ExecArgsError {
    /// Whether the exec is "unverifiable": its argv could not be read in
    /// time or without faulting, as opposed to a task that is gone or not in
    /// an exec. Such an exec gets the default answer and is reported.
    pub fn is_unverifiable(&self) -> bool {
        matches!(
            self,
            ExecArgsError::Timeout { .. } | ExecArgsError::TooManyStuck { .. } | ExecArgsError::NotResident { .. }
        )
    }
}

/// An exec's argv as an in-kernel capture saw it at the syscall's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedArgv {
    /// The argv address the task passed to the syscall (matched to the
    /// syscall it is blocked in, so an older exec's capture is never used).
    pub argv_address: u64,
    /// The arguments read, up to the first that could not be.
    pub args: Vec<String>,
    /// Some argument is in a page a user serves (a FUSE file, userfaultfd
    /// memory) and could not be read without faulting: the exec is unverifiable.
    pub unreadable: bool,
    /// More or longer arguments than the capture keeps, or an argument in a
    /// page the kernel can fill (not yet mapped, swapped out): read the argv
    /// from `/proc` instead.
    pub incomplete: bool,
}

/// Looks up the captured argv of a task's exec by its TID (the fanotify
/// event's PID). Made by whoever loaded the capture (the agent, from
/// ctwatch-ebpf), so this crate does not depend on eBPF.
#[derive(Clone)]
pub struct ArgvCapture(Arc<dyn Fn(u32) -> Option<CapturedArgv> + Send + Sync>);

impl ArgvCapture {
    /// A capture that answers with `lookup`.
    pub fn new(lookup: impl Fn(u32) -> Option<CapturedArgv> + Send + Sync + 'static) -> Self {
        ArgvCapture(Arc::new(lookup))
    }

    /// The capture of task `tid`'s latest exec, if any.
    pub fn lookup(&self, tid: u32) -> Option<CapturedArgv> {
        (self.0)(tid)
    }
}

impl std::fmt::Debug for ArgvCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArgvCapture")
    }
}

/// What the capture says of one held exec.
#[derive(Debug)]
pub enum FromCapture {
    /// The whole argv.
    Args(Vec<String>),
    /// An argument could not be read ([`ExecArgsError::NotResident`]).
    Unverifiable(ExecArgsError),
    /// Nothing usable: read the argv some other way. Says why.
    NotCaptured(&'static str),
}

/// The argv of the exec task `tid` is blocked in, from `capture`. The
/// capture is used only when it is of that very exec: its argv address is
/// the one in the task's `/proc/<tid>/syscall` (which reads the task's
/// registers, never its memory), read with the same patience as
/// [`exec_argv`] while the task is still on its way to sleep.
pub fn from_capture(capture: &ArgvCapture, proc_root: &Path, tid: u32) -> FromCapture {
    let Some(captured) = capture.lookup(tid) else {
        return FromCapture::NotCaptured("the exec was not captured");
    };
    let syscall = proc_root.join(tid.to_string()).join("syscall");
    let start = Instant::now();
    let mut pause = Duration::from_micros(20);
    let address = loop {
        let Ok(text) = std::fs::read_to_string(&syscall) else {
            return FromCapture::NotCaptured("the task's syscall file is unreadable");
        };
        match argv_address(&text) {
            Some(address) => break address,
            None if text.starts_with("running") && start.elapsed() < RUNNING_PATIENCE => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(2));
            }
            None => return FromCapture::NotCaptured("the task is not in an exec"),
        }
    };
    if address != captured.argv_address {
        return FromCapture::NotCaptured("the capture is of another exec");
    }
    if captured.unreadable {
        return FromCapture::Unverifiable(ExecArgsError::NotResident { tid });
    }
    if captured.incomplete {
        return FromCapture::NotCaptured("more or longer arguments than the capture keeps");
    }
    FromCapture::Args(captured.args)
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
/// (It allocates nothing: the forked reader calls it.)
pub fn argv_address(syscall: &str) -> Option<u64> {
    let mut fields = syscall.split_whitespace();
    let number: i64 = fields.next()?.parse().ok()?;
    let index = match number {
        n if n == SYS_EXECVE => 1,
        n if n == SYS_EXECVEAT => 2,
        _ => return None,
    };
    let field = fields.nth(index)?;
    u64::from_str_radix(field.trim_start_matches("0x"), 16).ok()
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

/// Children left behind by reads that did not finish; past this many (not
/// yet exited), an exec is unverifiable without a read.
pub const MAX_STUCK_READERS: usize = 64;
/// Of them, at most this many for execs of one user (the caller's real UID).
pub const MAX_STUCK_PER_USER: usize = 4;

/// Exit codes of the reader child (the errno follows on the pipe).
const CHILD_SYSCALL_FAILED: i32 = 10;
const CHILD_NOT_IN_EXEC: i32 = 11;
const CHILD_MEM_FAILED: i32 = 12;
const CHILD_WRITE_FAILED: i32 = 13;

/// Reads exec argvs in forked children, each with a timeout (see the module
/// doc): no read can block the caller past its timeout, whatever the
/// caller's memory is backed by.
#[derive(Debug, Default)]
pub struct ArgvReader {
    /// Children that did not finish in time and were not reaped yet, with the caller's UID.
    stuck: Mutex<Vec<(libc::pid_t, u32)>>,
}

impl ArgvReader {
    /// A reader with no child left behind.
    pub fn new() -> Self {
        ArgvReader::default()
    }

    /// How many children of reads that timed out have not exited yet.
    pub fn stuck(&self) -> usize {
        self.reap()
    }

    /// Reaps the children that exited; returns how many are still stuck.
    fn reap(&self) -> usize {
        self.reap_for(u32::MAX).0
    }

    /// Reaps the children that exited; returns how many are still stuck, in all and for `uid`.
    fn reap_for(&self, uid: u32) -> (usize, usize) {
        let mut stuck = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: waitpid on our own children, no status wanted.
        stuck.retain(|&(pid, _)| unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } == 0);
        (stuck.len(), stuck.iter().filter(|(_, u)| *u == uid).count())
    }

    fn leave_behind(&self, pid: libc::pid_t, uid: u32) {
        // SAFETY: signalling and reaping our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        if unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } == 0 {
            self.stuck.lock().unwrap_or_else(|e| e.into_inner()).push((pid, uid));
        }
    }

    /// Reads the argv task `tid` passed to the `execve` it is blocked in, in
    /// a forked child, giving up after `timeout`.
    pub fn read(&self, proc_root: &Path, tid: u32, timeout: Duration) -> Result<Vec<String>, ExecArgsError> {
        // An unknown caller counts as one user (u32::MAX), so it cannot take everyone's share.
        let uid = caller_uid(proc_root, tid).unwrap_or(u32::MAX);
        let (all, users) = self.reap_for(uid);
        if users >= MAX_STUCK_PER_USER || all >= MAX_STUCK_READERS {
            return Err(ExecArgsError::TooManyStuck { tid, uid, stuck: users.max(all) });
        }
        let reader_error = |reason: String| ExecArgsError::Reader { tid, reason };
        let task = proc_root.join(tid.to_string());
        let cpath =
            |name: &str| CString::new(task.join(name).as_os_str().as_bytes()).map_err(|e| reader_error(e.to_string()));
        let (syscall_path, mem_path) = (cpath("syscall")?, cpath("mem")?);
        let mut fds = [0; 2];
        // SAFETY: a valid array of two fds.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(reader_error(format!("pipe: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: both fds were just made and are owned here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let start = Instant::now();
        // SAFETY: the child only makes raw system calls on memory prepared
        // before the fork (no allocation, no lock) and ends with `_exit`.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(reader_error(format!("fork: {}", std::io::Error::last_os_error())));
        }
        if pid == 0 {
            // SAFETY: in the child; see above.
            unsafe { libc::_exit(child_read_argv(&syscall_path, &mem_path, w.as_raw_fd())) }
        }
        drop(w);
        let mut out = Vec::new();
        if !read_until_eof(&r, &mut out, start, timeout) {
            self.leave_behind(pid, uid);
            return Err(ExecArgsError::Timeout { tid, waited: start.elapsed() });
        }
        // EOF: the child closed the pipe, it is exiting.
        let mut status = 0;
        loop {
            // SAFETY: reaping our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break;
            }
            if r < 0 {
                return Err(reader_error(format!("waitpid: {}", std::io::Error::last_os_error())));
            }
            if start.elapsed() >= timeout {
                self.leave_behind(pid, uid);
                return Err(ExecArgsError::Timeout { tid, waited: start.elapsed() });
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
        let errno = || {
            let bytes: [u8; 4] = out.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]);
            std::io::Error::from_raw_os_error(i32::from_ne_bytes(bytes))
        };
        match code {
            0 => Ok(split_args(&out)),
            CHILD_SYSCALL_FAILED => Err(ExecArgsError::Io { tid, what: "syscall", source: errno() }),
            CHILD_MEM_FAILED => Err(ExecArgsError::Io { tid, what: "mem", source: errno() }),
            CHILD_NOT_IN_EXEC => {
                Err(ExecArgsError::NotInExec { tid, state: String::from_utf8_lossy(&out).chars().take(40).collect() })
            }
            CHILD_WRITE_FAILED => Err(reader_error("the reader could not write its output".into())),
            _ => Err(reader_error(format!("the reader ended with status {status:#x}"))),
        }
    }
}

impl Drop for ArgvReader {
    fn drop(&mut self) {
        // What is still stuck goes to init when ctwatch exits.
        self.reap();
    }
}

/// The real UID of task `tid` (from its status file, which reads none of its memory).
fn caller_uid(proc_root: &Path, tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(proc_root.join(tid.to_string()).join("status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// Reads `r` until EOF (true) or until `timeout` from `start` passes (false).
fn read_until_eof(r: &OwnedFd, out: &mut Vec<u8>, start: Instant, timeout: Duration) -> bool {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return false;
        }
        let mut pfd = libc::pollfd { fd: r.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, i32::MAX as u128) as i32) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: reading into a buffer of that size.
        let n = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => return true,
            n if n > 0 => {
                // The child writes at most MAX_TOTAL_BYTES plus terminators; more is ignored.
                if out.len() < MAX_TOTAL_BYTES + MAX_ARGS + 8 {
                    out.extend_from_slice(&buf[..n as usize]);
                }
            }
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
}

/// The arguments in the child's output: each one ends with a NUL.
fn split_args(out: &[u8]) -> Vec<String> {
    match out.strip_suffix(&[0]) {
        Some(body) => body.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect(),
        None if out.is_empty() => Vec::new(),
        None => out.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect(),
    }
}

/// Writes all of `bytes` to `fd`, or false.
///
/// # Safety
/// `fd` is an open fd.
unsafe fn write_all(fd: i32, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        if n < 0 {
            if *libc::__errno_location() == libc::EINTR {
                continue;
            }
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

/// The reader child: reads the syscall file and the argv from the task's
/// memory and writes the arguments, each ending with a NUL, to `out`. Only
/// raw system calls on stack buffers: it runs right after a fork of a
/// multi-threaded process.
///
/// # Safety
/// Call only in a freshly forked child; `out` is an open fd.
unsafe fn child_read_argv(syscall: &std::ffi::CStr, mem: &std::ffi::CStr, out: i32) -> i32 {
    // Keep only `out`: ctwatch's fds (the fanotify group above all) must not
    // live on in a child that stays stuck.
    if out > 0 {
        libc::syscall(libc::SYS_close_range, 0u32, (out - 1) as u32, 0u32);
    }
    libc::syscall(libc::SYS_close_range, (out + 1) as u32, u32::MAX, 0u32);
    let fail = |code: i32| {
        let errno = *libc::__errno_location();
        write_all(out, &errno.to_ne_bytes());
        code
    };
    let mut text = [0u8; 512];
    let mut pause = libc::timespec { tv_sec: 0, tv_nsec: 20_000 };
    let start = Instant::now();
    let address = loop {
        let fd = libc::open(syscall.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return fail(CHILD_SYSCALL_FAILED);
        }
        let n = libc::read(fd, text.as_mut_ptr().cast(), text.len());
        if n < 0 {
            return fail(CHILD_SYSCALL_FAILED);
        }
        libc::close(fd);
        let state = std::str::from_utf8(&text[..n as usize]).unwrap_or("");
        match argv_address(state) {
            Some(address) => break address,
            None if state.starts_with("running") && start.elapsed() < RUNNING_PATIENCE => {
                libc::nanosleep(&pause, std::ptr::null_mut());
                pause.tv_nsec = (pause.tv_nsec * 2).min(2_000_000);
            }
            None => {
                write_all(out, &text[..n as usize]);
                return CHILD_NOT_IN_EXEC;
            }
        }
    };
    let fd = libc::open(mem.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return fail(CHILD_MEM_FAILED);
    }
    let mut pointers = [0u8; 8 * 64];
    let mut string = [0u8; 256];
    let (mut at, mut count, mut total) = (address, 0usize, 0usize);
    'outer: while count < MAX_ARGS {
        let n = libc::pread(fd, pointers.as_mut_ptr().cast(), pointers.len(), at as libc::off_t);
        if n < 0 {
            return fail(CHILD_MEM_FAILED);
        }
        let n = n as usize;
        if n < 8 {
            break;
        }
        for chunk in pointers[..n - n % 8].chunks_exact(8) {
            let pointer = u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
            if pointer == 0 || count >= MAX_ARGS || total >= MAX_TOTAL_BYTES {
                break 'outer;
            }
            let max = MAX_ARG_BYTES.min(MAX_TOTAL_BYTES - total);
            let (mut p, mut len) = (pointer, 0usize);
            while len < max {
                let m = libc::pread(fd, string.as_mut_ptr().cast(), string.len(), p as libc::off_t);
                if m < 0 {
                    return fail(CHILD_MEM_FAILED);
                }
                let m = m as usize;
                if m == 0 {
                    break;
                }
                let end = string[..m].iter().position(|&b| b == 0);
                let take = end.unwrap_or(m).min(max - len);
                if !write_all(out, &string[..take]) {
                    return CHILD_WRITE_FAILED;
                }
                len += take;
                if end.is_some() {
                    break;
                }
                p += m as u64;
            }
            if !write_all(out, &[0]) {
                return CHILD_WRITE_FAILED;
            }
            total += len + 1;
            count += 1;
        }
        at += (n - n % 8) as u64;
    }
    0
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

    #[test]
    fn a_capture_is_used_only_for_the_exec_the_task_is_in() {
        let capture = |c: Option<CapturedArgv>| ArgvCapture::new(move |_| c.clone());
        let me = std::process::id();
        // This task is not in an exec: whatever was captured is not used.
        let c = CapturedArgv { argv_address: 1, args: vec!["runc".into()], unreadable: false, incomplete: false };
        assert!(matches!(
            from_capture(&capture(Some(c)), Path::new("/proc"), me),
            FromCapture::NotCaptured("the task is not in an exec")
        ));
        assert!(matches!(
            from_capture(&capture(None), Path::new("/proc"), me),
            FromCapture::NotCaptured("the exec was not captured")
        ));
        assert!(ExecArgsError::NotResident { tid: 1 }.is_unverifiable());
        assert!(!ExecArgsError::NotInExec { tid: 1, state: String::new() }.is_unverifiable());
        assert_eq!(format!("{:?}", capture(None)), "ArgvCapture");
    }

    #[test]
    fn the_forked_reader_reads_a_waiting_exec_and_reports_errors() {
        // A task that is not in execve: the reader says so, and leaves nothing behind.
        let reader = ArgvReader::new();
        let me = std::process::id();
        match reader.read(Path::new("/proc"), me, Duration::from_secs(5)) {
            Err(ExecArgsError::NotInExec { state, .. }) => assert!(!state.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            reader.read(Path::new("/proc"), u32::MAX - 1, Duration::from_secs(5)),
            Err(ExecArgsError::Io { what: "syscall", .. })
        ));
        assert_eq!(reader.stuck(), 0);
        assert_eq!(caller_uid(Path::new("/proc"), me), Some(nix::unistd::getuid().as_raw()));
        assert_eq!(split_args(b"a\0\0b\0"), ["a", "", "b"]);
        assert!(split_args(b"").is_empty());
    }
}
