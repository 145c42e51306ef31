//! What the bench binaries share.

use std::fs;
use std::path::PathBuf;

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
