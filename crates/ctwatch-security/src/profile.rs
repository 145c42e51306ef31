//! [`SecurityProfile`]: what a container may do, derived from its OCI config
//! alone (a pure function: no file, no daemon, no clock).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::oci::{Config, ParseError};

/// Every Linux capability up to `CAP_AUDIT_READ` (38, the set every kernel
/// since 3.16 has). A container holding all of them holds "all capabilities"
/// as `--privileged` gives them (newer kernels add `CAP_PERFMON`, `CAP_BPF`
/// and `CAP_CHECKPOINT_RESTORE`, which runtimes add too when the kernel has them).
pub const ALL_CAPABILITIES: [&str; 38] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
];

/// The capabilities Docker and containerd give a container by default
/// (moby `oci/caps/defaults.go`, containerd `oci/spec.go`: the same 14).
/// `capabilities_added` is the bounding set minus these. Podman's default
/// (containers.conf) is a subset of this list (it leaves out `CAP_MKNOD`,
/// `CAP_NET_RAW` and `CAP_AUDIT_WRITE` in recent releases), so for Podman
/// this undercounts additions of those three, never overcounts.
pub const RUNTIME_DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Syscalls that the default seccomp profiles of Docker/moby, containerd
/// (`contrib/seccomp`, CRI `RuntimeDefault`) and Podman/CRI-O
/// (containers/common `seccomp.json`) never allow, whatever capabilities the
/// container has. A deny-by-default profile that allows none of them is
/// reported as [`Seccomp::RuntimeDefault`].
pub const NEVER_ALLOWED_BY_DEFAULT_PROFILES: [&str; 7] =
    ["add_key", "request_key", "kexec_load", "kexec_file_load", "uselib", "userfaultfd", "nfsservctl"];

/// Namespace paths that are the host's own: `/proc/1/ns/*` and Docker's
/// `--network host` sandbox, a bind mount of the host's network namespace.
/// Other joined paths (a pod's sandbox, `--network container:X`) are
/// reported in `joined_namespaces`: a pure function cannot tell whether they
/// are the host's.
pub const HOST_NAMESPACE_PATHS: [&str; 2] = ["/proc/1/ns/", "/run/docker/netns/default"];

/// Namespace types, as the OCI spec names them.
pub const NAMESPACE_TYPES: [&str; 8] = ["pid", "network", "ipc", "uts", "mount", "user", "cgroup", "time"];

/// Host paths whose bind mount gives a container the host (or its
/// runtimes): a mount of one of these, of anything below the first six, or of
/// any directory above one of them (`/`, `/run`, `/var`) is `sensitive`.
pub const SENSITIVE_HOST_PATHS: [&str; 16] = [
    "/proc",
    "/sys",
    "/etc",
    "/dev",
    "/boot",
    "/root",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/k3s/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/run/podman/podman.sock",
    "/run/dockershim.sock",
    "/var/lib/kubelet",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/containers",
];
/// How many of [`SENSITIVE_HOST_PATHS`] are whole trees (anything below is sensitive too).
const SENSITIVE_TREES: usize = 6;

/// Bind-mount sources that the runtimes or kubelet make themselves (a
/// container's `resolv.conf`, `hosts`, `hostname`, `/dev/shm`, named volumes,
/// Kubernetes volumes that are not `hostPath`): not host mounts. A source
/// below one of these directories is not reported (a `hostPath` volume
/// naming a path in them is not told apart from kubelet's own).
pub const RUNTIME_MANAGED_SOURCES: [&str; 9] = [
    "/var/lib/docker/containers/",
    "/var/lib/docker/volumes/",
    "/var/lib/containers/storage/",
    "/run/containers/storage/",
    "/var/lib/kubelet/pods/",
    "/var/lib/containerd/io.containerd.grpc.v1.cri/",
    "/run/containerd/io.containerd.grpc.v1.cri/",
    "/run/k3s/containerd/io.containerd.grpc.v1.cri/",
    "/var/lib/rancher/k3s/agent/containerd/io.containerd.grpc.v1.cri/",
];

/// How the container's syscalls are filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seccomp {
    /// No filter, or one that allows everything it does not log.
    Unconfined,
    /// A deny-by-default filter allowing none of
    /// [`NEVER_ALLOWED_BY_DEFAULT_PROFILES`]: the runtime's default profile
    /// (or one at least as strict about those).
    RuntimeDefault,
    /// Any other filter (Kubernetes `Localhost`).
    Custom,
}

impl Seccomp {
    /// Its name (`unconfined`, `runtime_default`, `custom`).
    pub fn as_str(self) -> &'static str {
        match self {
            Seccomp::Unconfined => "unconfined",
            Seccomp::RuntimeDefault => "runtime_default",
            Seccomp::Custom => "custom",
        }
    }
}

/// A bind mount of a host path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMount {
    /// The host path.
    pub source: String,
    /// Where the container sees it.
    pub destination: String,
    /// Whether it is mounted read-only.
    pub read_only: bool,
    /// Whether it gives access to the host or its runtimes (see [`SENSITIVE_HOST_PATHS`]).
    pub sensitive: bool,
}

/// A device node made in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    /// Its path in the container.
    pub path: String,
    /// `c` (char), `b` (block), `u`, `p`.
    pub kind: String,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
}

/// Resource limits (`None`: unlimited).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory_bytes: Option<i64>,
    /// CPUs in thousandths (quota × 1000 / period): `--cpus 0.5` is 500.
    pub cpu_millis: Option<u64>,
    /// CPU shares (weight), when set.
    pub cpu_shares: Option<u64>,
    /// The cpuset, when set (`0-1`).
    pub cpuset: String,
    /// Maximum number of tasks.
    pub pids: Option<i64>,
}

/// What a container may do, from its OCI config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityProfile {
    /// As the runtimes define `--privileged`: every capability, every device
    /// allowed by the device cgroup, no seccomp filter and no AppArmor profile.
    pub privileged: bool,
    /// Bounding capabilities beyond [`RUNTIME_DEFAULT_CAPABILITIES`], sorted.
    pub capabilities_added: Vec<String>,
    /// Capabilities of [`RUNTIME_DEFAULT_CAPABILITIES`] not in the bounding set, sorted.
    pub capabilities_dropped: Vec<String>,
    /// The bounding set: every capability the container's processes can ever hold, sorted.
    pub capabilities_bounding: Vec<String>,
    /// The init's effective set, sorted.
    pub capabilities_effective: Vec<String>,
    /// Namespaces shared with the host: a type the config does not create,
    /// or one joined at `/proc/1/ns/...` (pid, network, ipc, uts, mount,
    /// user, cgroup, time).
    pub host_namespaces: Vec<String>,
    /// Namespaces joined from another process (`type` → path), e.g. a pod's sandbox.
    pub joined_namespaces: BTreeMap<String, String>,
    /// The init's UID (inside the container's user namespace).
    pub run_as_uid: u32,
    /// The init's GID.
    pub run_as_gid: u32,
    /// Its supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Whether the init runs as UID 0.
    pub run_as_root: bool,
    /// Whether UID 0 inside is mapped to an unprivileged host UID (a user namespace).
    pub root_remapped: bool,
    /// `no_new_privs`: setuid binaries and file capabilities gain nothing.
    pub no_new_privileges: bool,
    /// Whether the root filesystem is read-only.
    pub read_only_rootfs: bool,
    /// The syscall filter.
    pub seccomp: Seccomp,
    /// The AppArmor profile ("" none).
    pub apparmor: String,
    /// The SELinux process label ("" none).
    pub selinux: String,
    /// Whether `/proc` is unmasked (no masked or read-only paths: Kubernetes' `procMount: Unmasked`).
    pub proc_unmasked: bool,
    /// Bind mounts of host paths (not those the runtimes make, see [`RUNTIME_MANAGED_SOURCES`]).
    pub host_mounts: Vec<HostMount>,
    /// Device nodes made in the container.
    pub devices: Vec<DeviceNode>,
    /// Whether the device cgroup allows every device.
    pub all_devices_allowed: bool,
    /// Namespaced kernel parameters set.
    pub sysctls: BTreeMap<String, String>,
    /// Resource limits.
    pub limits: Limits,
}

/// A coarse class for metrics: how far a container is from the Pod Security Standards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivilegeClass {
    /// Passes the `restricted` profile.
    Restricted,
    /// Passes `baseline`, not `restricted`.
    Baseline,
    /// Fails `baseline` without being privileged (host namespaces, added capabilities, host paths...).
    Elevated,
    /// `privileged` (see [`SecurityProfile::privileged`]).
    Privileged,
}

impl PrivilegeClass {
    /// Its name, for a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            PrivilegeClass::Restricted => "restricted",
            PrivilegeClass::Baseline => "baseline",
            PrivilegeClass::Elevated => "elevated",
            PrivilegeClass::Privileged => "privileged",
        }
    }
}

/// A filter key [`SecurityProfile::matches_filter`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// Not one of `privileged`, `host_ns`, `cap`, `run_as_root`, `seccomp`, `class`, `host_mount`.
    #[error(
        "unknown security filter {0:?} (known: privileged, host_ns, cap, run_as_root, seccomp, class, host_mount)"
    )]
    UnknownKey(String),
    /// A boolean filter given something else.
    #[error("filter {key}= takes true or false, not {value:?}")]
    NotABool {
        /// The key.
        key: String,
        /// The value given.
        value: String,
    },
}

/// `CAP_SYS_ADMIN`, whatever the case or prefix it was written with.
pub fn capability_name(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

fn sorted_caps(list: &[String]) -> Vec<String> {
    let mut caps: Vec<String> = list.iter().map(|c| capability_name(c)).collect();
    caps.sort();
    caps.dedup();
    caps
}

/// `/var/run/x` is `/run/x` (a symlink on every distribution); `.`, `..`
/// (lexically) and repeated or trailing slashes are dropped.
fn normalize_host_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let joined = format!("/{}", parts.join("/"));
    match joined.strip_prefix("/var/run") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/run{rest}"),
        _ => joined,
    }
}

fn is_under(path: &str, dir: &str) -> bool {
    path == dir || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/')) || dir == "/"
}

/// Whether a bind of this host path gives access to the host or its runtimes.
pub fn is_sensitive_host_path(source: &str) -> bool {
    let path = normalize_host_path(source);
    SENSITIVE_HOST_PATHS.iter().enumerate().any(|(i, s)| {
        // The path is one of them, inside one of the trees, or above one.
        path == *s || (i < SENSITIVE_TREES && is_under(&path, s)) || is_under(s, &path)
    })
}

fn is_runtime_managed(source: &str) -> bool {
    let path = normalize_host_path(source);
    RUNTIME_MANAGED_SOURCES.iter().any(|m| path.starts_with(m))
}

fn classify_seccomp(config: &Config) -> Seccomp {
    let Some(filter) = &config.linux.seccomp else { return Seccomp::Unconfined };
    let permissive = |action: &str| matches!(action, "SCMP_ACT_ALLOW" | "SCMP_ACT_LOG" | "");
    if permissive(&filter.default_action) {
        // Allow-by-default: confining only if some rule blocks something.
        return if filter.syscalls.iter().all(|r| permissive(&r.action)) {
            Seccomp::Unconfined
        } else {
            Seccomp::Custom
        };
    }
    let allows_never_allowed =
        filter.syscalls.iter().filter(|r| r.action == "SCMP_ACT_ALLOW").any(|r| !r.never_allowed.is_empty());
    if allows_never_allowed {
        Seccomp::Custom
    } else {
        Seccomp::RuntimeDefault
    }
}

/// Whether the device cgroup rules end up allowing every device: the last
/// rule that covers all devices is an allow, and no later rule denies any.
fn all_devices_allowed(config: &Config) -> bool {
    let rules = &config.linux.resources.devices;
    let covers_all = |r: &crate::oci::DeviceRule| {
        matches!(r.r#type.as_deref(), None | Some("a") | Some(""))
            && r.major.is_none_or(|m| m < 0)
            && r.minor.is_none_or(|m| m < 0)
    };
    match rules.iter().rposition(covers_all) {
        Some(i) => rules[i].allow && rules[i + 1..].iter().all(|r| r.allow),
        None => false,
    }
}

impl SecurityProfile {
    /// Derives the profile from a parsed config.
    pub fn from_config(config: &Config) -> SecurityProfile {
        let process = &config.process;
        let linux = &config.linux;
        let bounding = sorted_caps(&process.capabilities.bounding);
        let has = |cap: &str| bounding.iter().any(|c| c == cap);
        let capabilities_added: Vec<String> =
            bounding.iter().filter(|c| !RUNTIME_DEFAULT_CAPABILITIES.contains(&c.as_str())).cloned().collect();
        let mut capabilities_dropped: Vec<String> =
            RUNTIME_DEFAULT_CAPABILITIES.iter().filter(|c| !has(c)).map(|c| c.to_string()).collect();
        capabilities_dropped.sort();

        let mut host_namespaces = Vec::new();
        let mut joined_namespaces = BTreeMap::new();
        for kind in NAMESPACE_TYPES {
            match linux.namespaces.iter().rfind(|n| n.kind == kind) {
                None => host_namespaces.push(kind.to_string()),
                Some(n) if n.path.is_empty() => {}
                Some(n) if HOST_NAMESPACE_PATHS.iter().any(|h| normalize_host_path(&n.path).starts_with(h)) => {
                    host_namespaces.push(kind.to_string())
                }
                Some(n) => {
                    joined_namespaces.insert(kind.to_string(), n.path.clone());
                }
            }
        }
        let has_userns = !host_namespaces.iter().any(|n| n == "user");
        let host_ipc = host_namespaces.iter().any(|n| n == "ipc");
        let root_remapped =
            has_userns && linux.uid_mappings.iter().any(|m| m.container_id == 0 && m.size > 0 && m.host_id != 0);

        let host_mounts = config
            .mounts
            .iter()
            .filter(|m| m.kind == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind"))
            .filter(|m| m.source.starts_with('/') && !is_runtime_managed(&m.source))
            // `--ipc host`: the runtime binds the host's /dev/shm with its IPC namespace (Host Namespaces says it).
            .filter(|m| !(host_ipc && normalize_host_path(&m.source) == "/dev/shm" && m.destination == "/dev/shm"))
            .map(|m| HostMount {
                source: m.source.clone(),
                destination: m.destination.clone(),
                read_only: m.options.iter().any(|o| o == "ro"),
                sensitive: is_sensitive_host_path(&m.source),
            })
            .collect();

        let seccomp = classify_seccomp(config);
        let apparmor = process.apparmor_profile.clone();
        let all_devices_allowed = all_devices_allowed(config);
        let privileged = ALL_CAPABILITIES.iter().all(|c| has(c))
            && all_devices_allowed
            && seccomp == Seccomp::Unconfined
            && (apparmor.is_empty() || apparmor == "unconfined");

        let cpu = &linux.resources.cpu;
        let cpu_millis = match (cpu.quota, cpu.period) {
            (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).saturating_mul(1000) / p),
            _ => None,
        };
        let positive = |v: Option<i64>| v.filter(|v| *v > 0);
        SecurityProfile {
            privileged,
            capabilities_added,
            capabilities_dropped,
            capabilities_effective: sorted_caps(&process.capabilities.effective),
            capabilities_bounding: bounding,
            host_namespaces,
            joined_namespaces,
            run_as_uid: process.user.uid,
            run_as_gid: process.user.gid,
            additional_gids: process.user.additional_gids.clone(),
            run_as_root: process.user.uid == 0,
            root_remapped,
            no_new_privileges: process.no_new_privileges,
            read_only_rootfs: config.root.readonly,
            seccomp,
            apparmor,
            selinux: process.selinux_label.clone(),
            proc_unmasked: linux.masked_paths.is_empty() && linux.readonly_paths.is_empty(),
            host_mounts,
            devices: linux
                .devices
                .iter()
                .map(|d| DeviceNode { path: d.path.clone(), kind: d.kind.clone(), major: d.major, minor: d.minor })
                .collect(),
            all_devices_allowed,
            sysctls: linux.sysctl.clone(),
            limits: Limits {
                memory_bytes: positive(linux.resources.memory.limit),
                cpu_millis,
                cpu_shares: cpu.shares.filter(|s| *s > 0),
                cpuset: cpu.cpus.clone(),
                pids: positive(linux.resources.pids.limit),
            },
        }
    }

    /// Moves each joined namespace that `is_host(type, path)` says is the
    /// host's own into `host_namespaces`. A CRI container joins its pod
    /// sandbox's namespaces by path (`/proc/<pause PID>/ns/net`), which are
    /// the host's for a `hostNetwork`/`hostPID`/`hostIPC` pod: only a look at
    /// the system tells (see [`joins_host_namespace`]).
    pub fn resolve_joined_namespaces(&mut self, is_host: impl Fn(&str, &str) -> bool) {
        let host: Vec<String> =
            self.joined_namespaces.iter().filter(|(k, p)| is_host(k, p)).map(|(k, _)| k.clone()).collect();
        for kind in host {
            self.joined_namespaces.remove(&kind);
            self.host_namespaces.push(kind);
        }
        let order = |n: &String| NAMESPACE_TYPES.iter().position(|t| t == n).unwrap_or(usize::MAX);
        self.host_namespaces.sort_by_key(order);
    }

    /// Parses a `config.json` (at most [`MAX_CONFIG_BYTES`](crate::oci::MAX_CONFIG_BYTES)) and derives its profile.
    pub fn from_config_bytes(bytes: &[u8]) -> Result<SecurityProfile, ParseError> {
        Ok(SecurityProfile::from_config(&Config::from_slice(bytes)?))
    }

    /// The class for metrics (containers by privilege class).
    pub fn privilege_class(&self) -> PrivilegeClass {
        use crate::pss::{evaluate, Level};
        if self.privileged {
            PrivilegeClass::Privileged
        } else if evaluate(self, Level::Restricted).is_empty() {
            PrivilegeClass::Restricted
        } else if evaluate(self, Level::Baseline).is_empty() {
            PrivilegeClass::Baseline
        } else {
            PrivilegeClass::Elevated
        }
    }

    /// Whether the profile matches one `--filter KEY=VALUE` of `ls`/`watch`:
    /// `privileged=true|false`, `host_ns=pid` (any namespace type),
    /// `cap=SYS_ADMIN` (in the bounding set; `CAP_` optional, any case),
    /// `run_as_root=true|false`, `seccomp=unconfined|runtime_default|custom`,
    /// `class=privileged|elevated|baseline|restricted`, `host_mount=PATH` (a
    /// host mount's source), `host_mount=sensitive`. An unknown key is an error.
    pub fn matches_filter(&self, key: &str, value: &str) -> Result<bool, FilterError> {
        let boolean = |v: &str| match v {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(FilterError::NotABool { key: key.to_string(), value: v.to_string() }),
        };
        Ok(match key {
            "privileged" => self.privileged == boolean(value)?,
            "run_as_root" => self.run_as_root == boolean(value)?,
            "host_ns" => {
                let v = if value == "net" { "network" } else { value };
                self.host_namespaces.iter().any(|n| n == v)
            }
            "cap" => {
                let cap = capability_name(value);
                self.capabilities_bounding.contains(&cap)
            }
            "seccomp" => self.seccomp.as_str() == value,
            "class" => self.privilege_class().as_str() == value,
            "host_mount" if value == "sensitive" => self.host_mounts.iter().any(|m| m.sensitive),
            "host_mount" => {
                let v = normalize_host_path(value);
                self.host_mounts.iter().any(|m| normalize_host_path(&m.source) == v)
            }
            _ => return Err(FilterError::UnknownKey(key.to_string())),
        })
    }
}

/// Whether the namespace file at `path` is the host's namespace of that type:
/// the same device and inode as `<proc_root>/1/ns/<type>` (the host's
/// init's), or, where PID 1's namespaces cannot be read (some sandboxes deny
/// it even to root), as `<proc_root>/self/ns/<type>` (ctwatch's own: it runs
/// in the host's namespaces). `false` when neither can be read.
pub fn joins_host_namespace(proc_root: &std::path::Path, kind: &str, path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let file = match kind {
        "network" => "net",
        "mount" => "mnt",
        other => other,
    };
    let host = std::fs::metadata(proc_root.join("1/ns").join(file))
        .or_else(|_| std::fs::metadata(proc_root.join("self/ns").join(file)));
    match (std::fs::metadata(path), host) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}
