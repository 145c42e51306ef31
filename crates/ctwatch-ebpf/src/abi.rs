//! The records the eBPF programs send, and the pinned map's value: the Rust
//! side of `src/bpf/cgroup_events.h` (keep the two in sync).

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
    fn handles_are_stable() {
        assert_eq!(container_handle(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(container_handle("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(container_handle("a"), container_handle("b"));
    }
}
