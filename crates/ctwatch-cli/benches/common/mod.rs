//! What the bench binaries share.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

/// The hierarchy `ctwatch` follows by default: cgroup v1's cpuset, else the
/// unified (v2) mount.
pub fn default_hierarchy() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let find = |pred: &dyn Fn(&[&str]) -> bool| {
        mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 3 && pred(f))
            .map(|f| PathBuf::from(f[1]))
    };
    find(&|f| f[2] == "cgroup" && f[3].split(',').any(|o| o == "cpuset"))
        .or_else(|| find(&|f| f[2] == "cgroup2"))
        .expect("a cgroup hierarchy")
}

/// User + system CPU time of a process (all threads), from /proc/<pid>/stat.
pub fn process_cpu(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = after_comm.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // Fields after the comm: state is not numeric, so utime/stime are at 11/12 here.
    let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}
