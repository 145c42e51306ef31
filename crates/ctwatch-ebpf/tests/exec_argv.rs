//! The exec argv capture against the real kernel: a watched binary's argv
//! is captured by TID, an argv in a page that is not present is reported
//! unreadable (not paged in), a long one incomplete, and a later exec of
//! another binary by the same task removes the entry.
//!
//! Needs root (CAP_BPF/CAP_PERFMON) and BTF.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ctwatch_ebpf::ExecArgvCapture;

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "these tests load eBPF programs: run them as root");
}

/// A private copy of /bin/sh at a unique path (so no other test's execs are captured).
fn private_sh(dir: &Path) -> PathBuf {
    let path = dir.join(format!("ctwatch-argv-sh-{}", std::process::id()));
    fs::copy("/bin/sh", &path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn run(sh: &Path, args: &[&str]) -> u32 {
    let mut child = Command::new(sh).args(args).stdin(Stdio::null()).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    pid
}

/// Forks a child that execs `sh` with argv[0] in a mapped page of a file
/// that it has never touched (not present in its page tables); returns its PID once it has exited.
fn exec_with_argv_in_an_untouched_page(sh: &Path, dir: &Path) -> u32 {
    let file = dir.join("argv-page");
    let mut text = b"untouched-argv0".to_vec();
    text.resize(4096, 0);
    fs::write(&file, &text).unwrap();
    let fd = fs::File::open(&file).unwrap();
    let path = CString::new(sh.as_os_str().as_bytes()).unwrap();
    let devnull = fs::File::open("/dev/null").unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: the child only makes raw system calls on memory prepared before the fork, then execs or exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        unsafe {
            libc::dup2(devnull.as_raw_fd(), 0);
            let map = libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_SHARED, fd.as_raw_fd(), 0);
            if map == libc::MAP_FAILED {
                libc::_exit(90);
            }
            let argv: [*const libc::c_char; 2] = [map as *const libc::c_char, std::ptr::null()];
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(91);
        }
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) < 90, "the child exec'd: status {status:#x}");
    pid as u32
}

/// Forks a child that execs `binary` by file descriptor (`execveat(fd, "", ..., AT_EMPTY_PATH)`,
/// as `fexecve` does) with `args`; returns its PID once it has exited.
fn exec_by_fd(binary: &Path, args: &[&str]) -> u32 {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(binary).unwrap();
    let args: Vec<CString> = args.iter().map(|a| CString::new(*a).unwrap()).collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // On the heap: a forked child does not inherit the page table entries of
    // read-only file mappings (a literal's page would not be present).
    let empty = CString::new("").unwrap();
    // SAFETY: the child only makes raw system calls on memory prepared before the fork, then execs or exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                file.as_raw_fd(),
                empty.as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            libc::_exit(91);
        }
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child exec'd: status {status:#x}");
    pid as u32
}

#[test]
fn captures_a_watched_exec_without_faulting_and_forgets_it_on_the_next_exec() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let sh = private_sh(dir.path());
    let capture = ExecArgvCapture::load(std::slice::from_ref(&sh)).expect("the capture loads");
    assert!(capture.watched().contains(&sh));

    // A watched exec: its whole argv, by the task's TID.
    let pid = run(&sh, &["-c", "exit 0", "second arg", ""]);
    let captured = capture.get(pid).expect("the watched exec was captured");
    assert_eq!(captured.args, [sh.to_str().unwrap(), "-c", "exit 0", "second arg", ""]);
    assert_eq!(captured.tgid, pid);
    assert!(!captured.unreadable && !captured.incomplete, "{captured:?}");
    assert_ne!(captured.argv_address, 0);

    // An exec by file descriptor (fexecve) is captured whatever the file.
    let pid = exec_by_fd(&sh, &["by-fd", "-c", "exit 0"]);
    assert_eq!(capture.get(pid).expect("an fexecve is captured").args, ["by-fd", "-c", "exit 0"]);

    // An exec that is not watched is not captured.
    let other = Command::new("/bin/true").status().unwrap();
    assert!(other.success());
    // A task that execs the watched binary, then another one: its entry is gone.
    let pid = run(&sh, &["-c", "exec /bin/true"]);
    assert_eq!(capture.get(pid), None, "an exec of another binary removes the task's entry");

    // An argument too long for its slot: the capture says it is incomplete.
    let long = "y".repeat(400);
    let pid = run(&sh, &["-c", "exit 0", &long]);
    let captured = capture.get(pid).unwrap();
    assert!(captured.incomplete && !captured.unreadable, "{captured:?}");
    assert_eq!(captured.args[3].len(), ctwatch_ebpf::exec_argv::ARGV_ARG_MAX - 1);

    // More arguments than the capture keeps: incomplete too.
    let many: Vec<String> = (0..70).map(|i| i.to_string()).collect();
    let mut args = vec!["-c", "exit 0"];
    args.extend(many.iter().map(String::as_str));
    let pid = run(&sh, &args);
    let captured = capture.get(pid).unwrap();
    assert!(captured.incomplete, "{captured:?}");
    assert_eq!(captured.args.len(), ctwatch_ebpf::exec_argv::ARGV_MAX_ARGS);

    // An argv in a page of a local file the caller never touched: unreadable without faulting,
    // said at once, and known to be the kernel's to fill, not a user's (the kernel's own copy
    // pages it in, so the exec itself succeeds).
    let pid = exec_with_argv_in_an_untouched_page(&sh, dir.path());
    let captured = capture.get(pid).expect("the exec was captured");
    assert!(captured.unreadable && !captured.user_backed, "{captured:?}");
    assert!(captured.args.is_empty(), "{captured:?}");
    assert_ne!(captured.fault_address, 0);
    assert!(capture.captured() >= 5, "captured {}", capture.captured());
}
