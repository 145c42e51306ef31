//! Which runtime binaries to mark: the usual install paths of runc, crun and
//! conmon (distribution packages, k3s, rke2, k0s, microk8s, CRI-O,
//! Bottlerocket), plus the user's own.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where runtimes are installed, by distribution or Kubernetes flavour.
/// A `*` component matches any one directory name.
pub const DEFAULT_RUNTIME_PATHS: &[&str] = &[
    // Distribution packages and manual installs.
    "/bin/runc",
    "/usr/bin/runc",
    "/usr/sbin/runc",
    "/usr/local/bin/runc",
    "/usr/local/sbin/runc",
    "/bin/crun",
    "/usr/bin/crun",
    "/usr/local/bin/crun",
    "/usr/bin/conmon",
    "/usr/local/bin/conmon",
    "/usr/libexec/podman/conmon",
    "/usr/local/libexec/podman/conmon",
    // CRI-O's own copies.
    "/usr/libexec/crio/runc",
    "/usr/libexec/crio/crun",
    "/usr/libexec/crio/conmon",
    "/usr/local/libexec/crio/conmon",
    "/usr/lib/cri-o-runc/sbin/runc",
    // k3s, rke2, k0s, microk8s.
    "/var/lib/rancher/k3s/data/current/bin/runc",
    "/var/lib/rancher/k3s/data/*/bin/runc",
    "/var/lib/rancher/rke2/bin/runc",
    "/var/lib/rancher/rke2/data/*/bin/runc",
    "/var/lib/k0s/bin/runc",
    "/snap/microk8s/current/bin/runc",
    // Bottlerocket and Flatcar.
    "/x86_64-bottlerocket-linux-gnu/sys-root/usr/bin/runc",
    "/aarch64-bottlerocket-linux-gnu/sys-root/usr/bin/runc",
    "/run/torcx/unpack/docker/bin/runc",
];

/// Which runtime a binary is, by its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuntimeTool {
    /// runc (or a runc-compatible binary such as `crio-runc`).
    Runc,
    /// crun.
    Crun,
    /// conmon (Podman's and CRI-O's monitor, which runs runc/crun).
    Conmon,
}

impl RuntimeTool {
    /// Guesses the tool from a path's file name (`None` when it names none of them).
    pub fn from_path(path: &Path) -> Option<RuntimeTool> {
        let name = path.file_name()?.to_str()?;
        if name.contains("conmon") {
            Some(RuntimeTool::Conmon)
        } else if name.contains("crun") {
            Some(RuntimeTool::Crun)
        } else if name.contains("runc") {
            Some(RuntimeTool::Runc)
        } else {
            None
        }
    }

    /// The tool's name.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeTool::Runc => "runc",
            RuntimeTool::Crun => "crun",
            RuntimeTool::Conmon => "conmon",
        }
    }
}

/// A runtime binary found on this host, to be marked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeBinary {
    /// The path it was found at (symlinks resolved).
    pub path: PathBuf,
    /// Which tool it is (runc when the name does not say).
    pub tool: RuntimeTool,
    /// Device and inode: what fanotify marks, and how duplicates are told apart.
    pub dev_ino: (u64, u64),
}

/// The paths to look at: the defaults plus `extra`, or only `extra` when `replace` is set.
pub fn candidate_paths(extra: &[PathBuf], replace: bool) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> =
        if replace { Vec::new() } else { DEFAULT_RUNTIME_PATHS.iter().map(PathBuf::from).collect() };
    paths.extend(extra.iter().cloned());
    paths
}

/// Finds which of `candidates` exist as regular files (expanding `*`
/// components), one entry per inode, in the order given.
pub fn find_runtime_binaries(candidates: &[PathBuf]) -> Vec<RuntimeBinary> {
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for candidate in candidates {
        for path in expand_glob(candidate) {
            let Ok(real) = fs::canonicalize(&path) else { continue };
            let Ok(meta) = fs::metadata(&real) else { continue };
            if !meta.is_file() || !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            // The name the user gave says more than the target's (crio-runc -> runc).
            let tool =
                RuntimeTool::from_path(&path).or_else(|| RuntimeTool::from_path(&real)).unwrap_or(RuntimeTool::Runc);
            found.push(RuntimeBinary { path: real, tool, dev_ino: (meta.dev(), meta.ino()) });
        }
    }
    found
}

/// Expands `*` components (one directory level each); other paths come back as they are.
fn expand_glob(pattern: &Path) -> Vec<PathBuf> {
    let mut current = vec![PathBuf::from("/")];
    if !pattern.is_absolute() || !pattern.to_string_lossy().contains('*') {
        return vec![pattern.to_path_buf()];
    }
    for component in pattern.components().skip(1) {
        let part = component.as_os_str();
        let mut next = Vec::new();
        for dir in &current {
            if part == "*" {
                let Ok(entries) = fs::read_dir(dir) else { continue };
                let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                names.sort();
                next.extend(names);
            } else {
                next.push(dir.join(part));
            }
        }
        current = next;
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_inode_once_and_expands_stars() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        for hash in ["aaa", "bbb"] {
            fs::create_dir_all(data.join(hash).join("bin")).unwrap();
            fs::write(data.join(hash).join("bin/runc"), b"x").unwrap();
        }
        fs::write(dir.path().join("conmon"), b"x").unwrap();
        std::os::unix::fs::symlink(data.join("aaa/bin/runc"), dir.path().join("crio-runc")).unwrap();
        let found = find_runtime_binaries(&[
            data.join("*/bin/runc"),
            dir.path().join("crio-runc"),
            dir.path().join("conmon"),
            dir.path().join("missing"),
        ]);
        let names: Vec<_> =
            found.iter().map(|b| (b.path.strip_prefix(dir.path()).unwrap().to_owned(), b.tool)).collect();
        assert_eq!(
            names,
            vec![
                (PathBuf::from("data/aaa/bin/runc"), RuntimeTool::Runc),
                (PathBuf::from("data/bbb/bin/runc"), RuntimeTool::Runc),
                (PathBuf::from("conmon"), RuntimeTool::Conmon),
            ]
        );
    }

    #[test]
    fn replace_drops_the_defaults() {
        assert_eq!(candidate_paths(&[PathBuf::from("/x/runc")], true), vec![PathBuf::from("/x/runc")]);
        assert!(candidate_paths(&[], false).len() > 10);
    }
}
