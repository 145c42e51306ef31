//! The container runtimes ctwatch can name.

use std::fmt;

use serde::{Serialize, Serializer};

/// Which runtime created a container, as far as ctwatch can tell.
///
/// The names are the ones printed in events: `docker`, `containerd`, `crio`,
/// `podman`, `garden`, `runc` (a container run by runc alone, with no daemon),
/// the runtimes ctwatch recognises by their cgroups but does not enrich
/// (`crun`, `gvisor`, `kata`, `lxc`, `nspawn`, `libvirt-lxc`, `rkt`, `mesos`,
/// `bpm`, `ecs`), and `unknown` (a container whose runtime the cgroup path does
/// not say and no runtime state directory confirms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Runtime {
    /// Docker Engine (moby), including GitHub Actions job containers.
    Docker,
    /// containerd, through its CRI plugin or `ctr`/nerdctl.
    Containerd,
    /// CRI-O.
    Crio,
    /// Podman (libpod).
    Podman,
    /// Garden (Cloud Foundry).
    Garden,
    /// runc used directly, with no daemon above it.
    Runc,
    /// crun used directly with its systemd driver (`crun-<id>.scope`).
    Crun,
    /// gVisor's `runsc` used directly with its systemd driver (`runsc-<id>.scope`).
    Gvisor,
    /// A Kata Containers sandbox (`kata_<id>`): the VM holding a pod's containers.
    Kata,
    /// LXC, LXD and Incus system containers (`lxc.payload.<name>`).
    Lxc,
    /// systemd-nspawn (and other containers registered with systemd-machined).
    Nspawn,
    /// libvirt's LXC driver.
    LibvirtLxc,
    /// rkt pods.
    Rkt,
    /// The Apache Mesos containerizer.
    Mesos,
    /// Cloud Foundry's BOSH Process Manager.
    Bpm,
    /// An AWS Fargate task container (`/ecs/<task>/<task>-<n>`).
    Ecs,
    /// A container whose runtime is not known yet.
    Unknown,
}

impl Runtime {
    /// Every runtime, in a stable order (used for tables and metrics);
    /// `Unknown` stays last.
    pub const ALL: [Runtime; 17] = [
        Runtime::Docker,
        Runtime::Containerd,
        Runtime::Crio,
        Runtime::Podman,
        Runtime::Garden,
        Runtime::Runc,
        Runtime::Crun,
        Runtime::Gvisor,
        Runtime::Kata,
        Runtime::Lxc,
        Runtime::Nspawn,
        Runtime::LibvirtLxc,
        Runtime::Rkt,
        Runtime::Mesos,
        Runtime::Bpm,
        Runtime::Ecs,
        Runtime::Unknown,
    ];

    /// The name printed in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Crio => "crio",
            Runtime::Podman => "podman",
            Runtime::Garden => "garden",
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
            Runtime::Gvisor => "gvisor",
            Runtime::Kata => "kata",
            Runtime::Lxc => "lxc",
            Runtime::Nspawn => "nspawn",
            Runtime::LibvirtLxc => "libvirt-lxc",
            Runtime::Rkt => "rkt",
            Runtime::Mesos => "mesos",
            Runtime::Bpm => "bpm",
            Runtime::Ecs => "ecs",
            Runtime::Unknown => "unknown",
        }
    }

    /// The runtime with this printed name (`cri-o` is accepted for `crio`).
    pub fn from_name(name: &str) -> Option<Runtime> {
        let name = if name.eq_ignore_ascii_case("cri-o") { "crio" } else { name };
        Runtime::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Runtime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}
