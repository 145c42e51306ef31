//! The records the eBPF programs send, and the maps' values: the Rust side
//! of `src/bpf/cgroup_events.h` and `src/bpf/exec_argv.h` (keep them in sync).

use ctwatch::sources::CgroupChange;

/// Bytes before the path in a ring-buffer record.
pub const RECORD_HEADER: usize = 40;
/// The longest path the programs report in full (PATH_MAX).
pub const PATH_MAX: usize = 4096;
/// `CTWATCH_MAX_DEPTH`: how many levels the programs' path walk follows.
pub const MAX_DEPTH: u32 = 96;
/// `CTWATCH_PATH_TRUNCATED`: the path was longer than [`PATH_MAX`] or deeper
/// than [`MAX_DEPTH`] levels, and only its innermost components are present.
pub const PATH_TRUNCATED: u32 = 1;

/// One cgroup change as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRecord {
    /// The full 64-bit cgroup ID.
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the change.
    pub ktime_ns: u64,
    /// The hierarchy (0 for the unified one).
    pub hierarchy_id: u32,
    /// Depth below the hierarchy's root.
    pub level: u32,
    /// mkdir or rmdir.
    pub change: CgroupChange,
    /// True when the path was cut (see [`PATH_TRUNCATED`]): find it by ID.
    pub truncated: bool,
    /// The path relative to the hierarchy's root (`/a/b`).
    pub path: String,
}

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than its header or than the path length it claims.
    #[error("short record ({0} bytes)")]
    Short(usize),
    /// An unknown change code.
    #[error("unknown change code {0}")]
    BadChange(u32),
    /// An unknown process event kind.
    #[error("unknown process event kind {0}")]
    BadKind(u32),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses one ring-buffer record. Never panics, whatever the bytes.
pub fn parse_record(bytes: &[u8]) -> Result<CgroupRecord, RecordError> {
    if bytes.len() < RECORD_HEADER {
        return Err(RecordError::Short(bytes.len()));
    }
    let change = match u32_at(bytes, 24) {
        1 => CgroupChange::Mkdir,
        2 => CgroupChange::Rmdir,
        other => return Err(RecordError::BadChange(other)),
    };
    let path_len = u32_at(bytes, 32) as usize;
    let raw =
        bytes.get(RECORD_HEADER..RECORD_HEADER.saturating_add(path_len)).ok_or(RecordError::Short(bytes.len()))?;
    // Components come innermost first, each ended by a NUL.
    // Names that are not UTF-8 are kept, escaped (see `cgroupfs::path_from_bytes`).
    let mut components: Vec<String> =
        raw.split(|b| *b == 0).filter(|c| !c.is_empty()).map(ctwatch::cgroupfs::path_from_bytes).collect();
    components.reverse();
    let mut path = String::with_capacity(path_len + 1);
    for c in &components {
        path.push('/');
        path.push_str(c);
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(CgroupRecord {
        cgroup_id: u64_at(bytes, 0),
        ktime_ns: u64_at(bytes, 8),
        hierarchy_id: u32_at(bytes, 16),
        level: u32_at(bytes, 20),
        change,
        truncated: u32_at(bytes, 28) & PATH_TRUNCATED != 0,
        path,
    })
}

/// `ctwatch_container_state`: where a container is in its life.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapState {
    /// Already running when ctwatch started.
    Existing = 1,
    /// Its cgroup was made while ctwatch watched.
    Created = 2,
    /// A task has entered one of its cgroups since (set in the kernel).
    Started = 3,
}

/// `CTWATCH_CGROUP_IS_ROOT`: the key is the container's root cgroup.
pub const CGROUP_IS_ROOT: u32 = 1;

/// The pinned map's value (`struct ctwatch_container_value`, 16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerValue {
    /// Stable container handle: FNV-1a 64 of the container ID.
    pub handle: u64,
    /// A [`MapState`].
    pub state: u32,
    /// [`CGROUP_IS_ROOT`] or 0.
    pub flags: u32,
}

// SAFETY: plain old data, no padding (8 + 4 + 4 bytes).
unsafe impl aya::Pod for ContainerValue {}

/// The stable numeric handle of a container: FNV-1a 64 of its ID, the same
/// in every run of ctwatch and on every host.
pub fn container_handle(container_id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// `CTWATCH_ARGV_MAX_ARGS`: arguments of an exec captured at most.
pub const ARGV_MAX_ARGS: usize = 64;
/// `CTWATCH_ARGV_ARG_MAX`: bytes of one captured argument, its NUL included.
pub const ARGV_ARG_MAX: usize = 256;
/// `CTWATCH_EXEC_PATH_MAX`: the longest watched executable path, its NUL included.
pub const EXEC_PATH_MAX: usize = 256;
/// `CTWATCH_ARGV_UNREADABLE`: an argument could not be read without faulting.
pub const ARGV_UNREADABLE: u32 = 1;
/// `CTWATCH_ARGV_TOO_MANY`: more than [`ARGV_MAX_ARGS`] arguments.
pub const ARGV_TOO_MANY: u32 = 2;
/// `CTWATCH_ARGV_ARG_CUT`: an argument filled its [`ARGV_ARG_MAX`] bytes and may be cut.
pub const ARGV_ARG_CUT: u32 = 4;
/// `CTWATCH_ARGV_USER_BACKED`: the unreadable page is served by a user (a
/// FUSE file, userfaultfd memory) or its mapping could not be looked at.
pub const ARGV_USER_BACKED: u32 = 8;

/// `struct ctwatch_exec_argv`: the value of the `argv_by_tid` map.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecArgvValue {
    /// The argv address passed to the syscall.
    pub argv_ptr: u64,
    /// `bpf_ktime_get_ns()` at the syscall's entry.
    pub ktime_ns: u64,
    /// The exec'ing task's thread group.
    pub tgid: u32,
    /// Arguments present (read or not).
    pub argc: u32,
    /// `ARGV_*` flags.
    pub flags: u32,
    /// Padding.
    pub _pad: u32,
    /// The first address that could not be read, or 0.
    pub fault_addr: u64,
    /// Bytes of each argument, NUL included (0: not read).
    pub len: [u16; ARGV_MAX_ARGS],
    /// The arguments, each NUL-terminated in its slot.
    pub args: [[u8; ARGV_ARG_MAX]; ARGV_MAX_ARGS],
}

// SAFETY: plain old data, no padding (8+8+4*4+8+2*64+256*64 bytes, 8-aligned).
unsafe impl aya::Pod for ExecArgvValue {}

/// An exec's argv as the eBPF capture saw it at the syscall's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedExec {
    /// The argv address passed to the syscall (to match it to the task's current syscall).
    pub argv_address: u64,
    /// `bpf_ktime_get_ns()` at the syscall's entry.
    pub ktime_ns: u64,
    /// The exec'ing task's thread group.
    pub tgid: u32,
    /// The arguments read (lossily as UTF-8), up to the first unreadable one.
    pub args: Vec<String>,
    /// Some argument could not be read without faulting (its page was not present).
    pub unreadable: bool,
    /// The unreadable page is served by a user (a file on FUSE, userfaultfd
    /// memory), or its mapping could not be looked at: reading it from
    /// userspace may block for good. When `unreadable` without this, the
    /// page is the kernel's to fill (a local file not yet mapped, swap) and a
    /// reader that faults it in is safe.
    pub user_backed: bool,
    /// The first address that could not be read, or 0.
    pub fault_address: u64,
    /// More than [`ARGV_MAX_ARGS`] arguments, or one of [`ARGV_ARG_MAX`] bytes or more: `args` may be cut.
    pub incomplete: bool,
}

impl From<&ExecArgvValue> for CapturedExec {
    fn from(v: &ExecArgvValue) -> Self {
        let argc = (v.argc as usize).min(ARGV_MAX_ARGS);
        let mut args = Vec::with_capacity(argc);
        for i in 0..argc {
            let len = v.len[i] as usize;
            if len == 0 {
                break; // not read
            }
            let slot = &v.args[i][..len.min(ARGV_ARG_MAX)];
            let bytes = slot.split(|b| *b == 0).next().unwrap_or(&[]);
            args.push(String::from_utf8_lossy(bytes).into_owned());
        }
        CapturedExec {
            argv_address: v.argv_ptr,
            ktime_ns: v.ktime_ns,
            tgid: v.tgid,
            args,
            unreadable: v.flags & ARGV_UNREADABLE != 0,
            user_backed: v.flags & ARGV_USER_BACKED != 0,
            fault_address: v.fault_addr,
            incomplete: v.flags & (ARGV_TOO_MANY | ARGV_ARG_CUT) != 0,
        }
    }
}

/// `CTWATCH_COMM_MAX`: bytes of a process record's filename and argv[0] fields.
pub const PROCESS_TEXT_MAX: usize = 256;
/// Bytes of a process record (`struct ctwatch_process_record`).
pub const PROCESS_RECORD_SIZE: usize = 32 + 2 * PROCESS_TEXT_MAX;

/// A process event in a container cgroup, as the kernel reported it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// A task in a container cgroup exec'd (by default only each container's first exec).
    Exec {
        /// The task's cgroup ID in the default (unified) hierarchy.
        cgroup_id: u64,
        /// The task (its TID).
        pid: u32,
        /// Its process (thread group).
        tgid: u32,
        /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the exec.
        ktime_ns: u64,
        /// The file executed, as the exec named it (up to 255 bytes).
        filename: String,
        /// The new argv\[0\] (up to 255 bytes).
        argv0: String,
    },
    /// A thread group leader in a container cgroup exited.
    Exit {
        /// The task's cgroup ID in the default (unified) hierarchy.
        cgroup_id: u64,
        /// The leader's PID.
        pid: u32,
        /// `bpf_ktime_get_ns()` at the exit.
        ktime_ns: u64,
        /// `task->exit_code`: see [`exit_status`] and [`exit_signal`].
        exit_code: u32,
    },
    /// The OOM killer chose a task in a container cgroup.
    OomKill {
        /// The victim's cgroup ID in the default (unified) hierarchy.
        cgroup_id: u64,
        /// The victim (its TID).
        pid: u32,
        /// Its process.
        tgid: u32,
        /// `bpf_ktime_get_ns()` at the kill.
        ktime_ns: u64,
    },
}

/// The exit status of a `task->exit_code` when the task exited normally (`exit(n)`), else `None`.
pub fn exit_status(exit_code: u32) -> Option<u8> {
    (exit_code & 0x7f == 0).then_some(((exit_code >> 8) & 0xff) as u8)
}

/// The signal that killed a task, from its `task->exit_code`, if one did.
pub fn exit_signal(exit_code: u32) -> Option<u8> {
    let signal = (exit_code & 0x7f) as u8;
    (signal != 0).then_some(signal)
}

fn text_at(b: &[u8], at: usize) -> String {
    let field = &b[at..at + PROCESS_TEXT_MAX];
    String::from_utf8_lossy(field.split(|c| *c == 0).next().unwrap_or(&[])).into_owned()
}

/// Parses one process record. Never panics, whatever the bytes.
pub fn parse_process_record(bytes: &[u8]) -> Result<ProcessEvent, RecordError> {
    if bytes.len() < PROCESS_RECORD_SIZE {
        return Err(RecordError::Short(bytes.len()));
    }
    let (pid, tgid) = (u32_at(bytes, 4), u32_at(bytes, 8));
    let (cgroup_id, ktime_ns) = (u64_at(bytes, 16), u64_at(bytes, 24));
    match u32_at(bytes, 0) {
        1 => Ok(ProcessEvent::Exec {
            cgroup_id,
            pid,
            tgid,
            ktime_ns,
            filename: text_at(bytes, 32),
            argv0: text_at(bytes, 32 + PROCESS_TEXT_MAX),
        }),
        2 => Ok(ProcessEvent::Exit { cgroup_id, pid, ktime_ns, exit_code: u32_at(bytes, 12) }),
        3 => Ok(ProcessEvent::OomKill { cgroup_id, pid, tgid, ktime_ns }),
        other => Err(RecordError::BadKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path_parts_innermost_first: &[&str], change: u32) -> Vec<u8> {
        let mut path = Vec::new();
        for p in path_parts_innermost_first {
            path.extend_from_slice(p.as_bytes());
            path.push(0);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&42u64.to_ne_bytes());
        b.extend_from_slice(&7u64.to_ne_bytes());
        b.extend_from_slice(&3u32.to_ne_bytes());
        b.extend_from_slice(&(path_parts_innermost_first.len() as u32).to_ne_bytes());
        b.extend_from_slice(&change.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(path.len() as u32).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&path);
        b
    }

    #[test]
    fn parses_a_record_and_rebuilds_the_path_outermost_first() {
        let r = parse_record(&record(&["abc", "docker"], 1)).unwrap();
        assert_eq!((r.cgroup_id, r.hierarchy_id, r.level, r.change), (42, 3, 2, CgroupChange::Mkdir));
        assert_eq!(r.path, "/docker/abc");
        assert!(!r.truncated);
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert_eq!(parse_record(&[0; 10]), Err(RecordError::Short(10)));
        assert_eq!(parse_record(&record(&["x"], 9)), Err(RecordError::BadChange(9)));
        let mut long = record(&["x"], 2);
        long[32..36].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(parse_record(&long).is_err());
        for n in 0..200 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
            let _ = parse_record(&junk);
        }
    }

    #[test]
    fn names_that_are_not_utf8_are_kept_escaped() {
        let mut b = record(&["abc", "docker", "x"], 1);
        // Replace the "x" component with the byte 0xff.
        let at = b.len() - 2;
        b[at] = 0xff;
        let r = parse_record(&b).unwrap();
        assert_eq!(r.path, "/\u{0}ff/docker/abc");
        assert_eq!(ctwatch::cgroupfs::path_to_bytes(&r.path), b"/\xff/docker/abc");
    }

    #[test]
    fn process_records_decode_and_bad_ones_are_errors() {
        let mut b = vec![0u8; PROCESS_RECORD_SIZE];
        b[0..4].copy_from_slice(&1u32.to_ne_bytes());
        b[4..8].copy_from_slice(&10u32.to_ne_bytes());
        b[8..12].copy_from_slice(&10u32.to_ne_bytes());
        b[16..24].copy_from_slice(&77u64.to_ne_bytes());
        b[32..39].copy_from_slice(b"/bin/sh");
        b[32 + PROCESS_TEXT_MAX..32 + PROCESS_TEXT_MAX + 2].copy_from_slice(b"sh");
        let e = parse_process_record(&b).unwrap();
        assert!(matches!(&e, ProcessEvent::Exec { cgroup_id: 77, pid: 10, filename, argv0, .. }
            if filename == "/bin/sh" && argv0 == "sh"));
        b[0..4].copy_from_slice(&2u32.to_ne_bytes());
        b[12..16].copy_from_slice(&0x300u32.to_ne_bytes());
        assert!(matches!(parse_process_record(&b), Ok(ProcessEvent::Exit { exit_code: 0x300, .. })));
        b[0..4].copy_from_slice(&9u32.to_ne_bytes());
        assert_eq!(parse_process_record(&b), Err(RecordError::BadKind(9)));
        assert_eq!(parse_process_record(&b[..40]), Err(RecordError::Short(40)));
        assert_eq!((exit_status(0x300), exit_signal(0x300)), (Some(3), None));
        assert_eq!((exit_status(9), exit_signal(9)), (None, Some(9)));
        assert_eq!((exit_status(0), exit_signal(0)), (Some(0), None));
    }

    #[test]
    fn captured_argv_stops_at_the_first_unread_argument() {
        // Boxed: the value is 16 KiB.
        // SAFETY: all-zero bytes are a valid ExecArgvValue (integers and byte arrays).
        let mut v: Box<ExecArgvValue> = Box::new(unsafe { std::mem::zeroed() });
        v.argc = 3;
        v.flags = ARGV_UNREADABLE;
        for (i, a) in ["runc", "create"].iter().enumerate() {
            v.args[i][..a.len()].copy_from_slice(a.as_bytes());
            v.len[i] = a.len() as u16 + 1;
        }
        let c = CapturedExec::from(&*v);
        assert_eq!(c.args, ["runc", "create"]);
        assert!(c.unreadable && !c.user_backed && !c.incomplete);
        assert_eq!(std::mem::size_of::<ExecArgvValue>(), 40 + 2 * ARGV_MAX_ARGS + ARGV_ARG_MAX * ARGV_MAX_ARGS);
    }

    #[test]
    fn handles_are_stable() {
        assert_eq!(container_handle(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(container_handle("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(container_handle("a"), container_handle("b"));
    }
}
