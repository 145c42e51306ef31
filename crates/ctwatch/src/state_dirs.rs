//! The runtimes' state directories: a second opinion on ambiguous cgroup names.
//!
//! runc creates `<root>/<container id>/` before it creates the container's
//! cgroups, so when a cgroup named like an ID appears, the state directory of
//! that ID already exists if a runtime is behind it.

use std::path::{Path, PathBuf};

use crate::runtime::Runtime;

/// Answers "does a runtime keep state for a container with this ID?".
pub trait StateDirs: Send + Sync {
    /// The runtime that keeps state for `name`, given the cgroup's parent
    /// directory name (a containerd namespace for `ctr` containers).
    fn runtime_of(&self, parent: Option<&str>, name: &str) -> Option<Runtime>;
}

/// Consults no state at all: classification from the path alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct PathOnly;

impl StateDirs for PathOnly {
    fn runtime_of(&self, _parent: Option<&str>, _name: &str) -> Option<Runtime> {
        None
    }
}

/// The state directories of the runtimes on this host.
#[derive(Debug, Clone)]
pub struct HostStateDirs {
    /// Docker's runc root (`/run/docker/runtime-runc/moby`).
    pub docker: PathBuf,
    /// containerd's runc root, one subdirectory per namespace (`/run/containerd/runc`).
    pub containerd: PathBuf,
    /// runc's default root (`/run/runc`), used by `runc run`, podman and CRI-O.
    pub runc: PathBuf,
    /// containerd's task bundles, one subdirectory per namespace
    /// (`/run/containerd/io.containerd.runtime.v2.task`; Docker's is `moby`).
    /// containerd writes a bundle's `config.json` before runc makes the cgroups.
    pub bundles: PathBuf,
}

impl Default for HostStateDirs {
    fn default() -> Self {
        HostStateDirs {
            docker: PathBuf::from("/run/docker/runtime-runc/moby"),
            containerd: PathBuf::from("/run/containerd/runc"),
            runc: PathBuf::from("/run/runc"),
            bundles: PathBuf::from("/run/containerd/io.containerd.runtime.v2.task"),
        }
    }
}

impl HostStateDirs {
    /// State directories under another root (for tests and chroots): `<root>/run/...`.
    pub fn under(root: &Path) -> Self {
        let d = HostStateDirs::default();
        let rebase = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        HostStateDirs {
            docker: rebase(&d.docker),
            containerd: rebase(&d.containerd),
            runc: rebase(&d.runc),
            bundles: rebase(&d.bundles),
        }
    }

    /// The containerd namespace that holds container `name`, if any.
    fn containerd_namespace_of(&self, parent: Option<&str>, name: &str) -> Option<String> {
        if let Some(ns) = parent.filter(|ns| is_safe_name(ns)) {
            if self.containerd.join(ns).join(name).is_dir() {
                return Some(ns.to_string());
            }
        }
        // A container with a custom cgroup parent: look in every namespace.
        std::fs::read_dir(&self.containerd).ok()?.flatten().find_map(|entry| {
            let ns = entry.file_name().into_string().ok()?;
            entry.path().join(name).is_dir().then_some(ns)
        })
    }
}

impl StateDirs for HostStateDirs {
    fn runtime_of(&self, parent: Option<&str>, name: &str) -> Option<Runtime> {
        if !is_safe_name(name) {
            return None;
        }
        if self.docker.join(name).is_dir() {
            return Some(Runtime::Docker);
        }
        if self.containerd_namespace_of(parent, name).is_some() {
            return Some(Runtime::Containerd);
        }
        if self.runc.join(name).is_dir() {
            return Some(Runtime::Runc);
        }
        None
    }
}

use crate::untrusted::is_safe_name;
