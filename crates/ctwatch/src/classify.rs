//! Recognising containers from cgroup paths.
//!
//! A cgroup path (relative to its hierarchy's root, such as
//! `/kubepods/besteffort/pod<uid>/<64 hex>`) is read from its innermost
//! component outwards; the first component that names a container decides
//! (so in Docker-in-Docker the inner container wins). When that component is
//! the last one, the path is the container's root cgroup; otherwise it is a
//! sub-cgroup created inside the container.
//!
//! Names that do not say which runtime made them (a bare 64-hex ID, the
//! `/<namespace>/<id>` of `ctr`, the `/<id>` of `runc run`) are confirmed by
//! asking [`StateDirs`] whether a runtime keeps state for that ID. Nothing here
//! panics, whatever the input: paths come from the kernel and from users.

use std::borrow::Cow;

use crate::runtime::Runtime;
use crate::state_dirs::StateDirs;

/// What a cgroup path says about the container it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The runtime that made the container.
    pub runtime: Runtime,
    /// The container's ID as its runtime knows it.
    pub container_id: String,
    /// The path of the container's root cgroup (a prefix of the input path).
    pub root_path: String,
    /// True when the input path is the container's root cgroup itself.
    pub is_root: bool,
    /// The Kubernetes pod UID found in an enclosing pod cgroup, dashes restored.
    pub pod_uid: Option<String>,
}

/// Classifies a cgroup path; `None` means the cgroup is not part of a container.
///
/// `state` is consulted only for the last component when its name alone is
/// ambiguous, so a classification costs at most a few `stat` calls.
pub fn classify(path: &str, state: &dyn StateDirs) -> Option<Classification> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let last = components.len().checked_sub(1)?;
    for index in (0..components.len()).rev() {
        let name = components[index];
        let parent = index.checked_sub(1).map(|p| components[p]);
        let grandparent = index.checked_sub(2).map(|p| components[p]);
        let in_kubepods = components[..index].iter().any(|c| c.contains("kubepods"));
        let found = match match_component(name, parent, grandparent) {
            Match::Container(runtime, id) => Some((runtime, id.into_owned())),
            Match::NotContainer => None,
            Match::Ambiguous { hex_id } if index == last => {
                match state.runtime_of(parent, name) {
                    Some(runtime) => Some((runtime, name.to_string())),
                    // A bare 64-hex ID inside a pod is a container whose runtime
                    // enrichment will tell.
                    None if hex_id && in_kubepods => Some((Runtime::Unknown, name.to_string())),
                    None => None,
                }
            }
            Match::Ambiguous { hex_id } => (hex_id && in_kubepods).then(|| (Runtime::Unknown, name.to_string())),
        };
        if let Some((runtime, container_id)) = found {
            return Some(Classification {
                runtime,
                container_id,
                root_path: join_path(&components[..=index]),
                is_root: index == last,
                pod_uid: components[..index].iter().rev().find_map(|c| pod_uid_of(c)),
            });
        }
    }
    None
}

/// The verdict on one path component.
#[derive(Debug, PartialEq, Eq)]
enum Match<'a> {
    /// The name itself says it is a container of this runtime, with this ID.
    Container(Runtime, Cow<'a, str>),
    /// Not a container (an ordinary cgroup, or a runtime's helper like conmon).
    NotContainer,
    /// Could be a container: only a runtime's state can tell.
    Ambiguous { hex_id: bool },
}

fn container(runtime: Runtime, id: &str) -> Match<'_> {
    Match::Container(runtime, Cow::Borrowed(id))
}

fn match_component<'a>(name: &'a str, parent: Option<&str>, grandparent: Option<&str>) -> Match<'a> {
    // systemd driver: `<prefix>-<id>.scope`; systemd-machined: `machine-<name>.scope`.
    if let Some(stem) = name.strip_suffix(".scope") {
        return match_scope(stem);
    }
    // `machinectl start <name>`: the container runs in its template instance.
    if let Some(machine) = name.strip_prefix("systemd-nspawn@").and_then(|n| n.strip_suffix(".service")) {
        return match unescape_unit(machine) {
            Some(machine) if is_runtime_id(&machine) => Match::Container(Runtime::Nspawn, machine),
            _ => Match::NotContainer,
        };
    }
    // LXC 4+, LXD and Incus: `lxc.payload.<name>` (the monitor is `lxc.monitor.<name>`).
    if let Some(id) = name.strip_prefix("lxc.payload.") {
        return if is_runtime_id(id) { container(Runtime::Lxc, id) } else { Match::NotContainer };
    }
    // libvirt-lxc without systemd: `/machine/<name>.libvirt-lxc`.
    if let Some(id) = name.strip_suffix(".libvirt-lxc") {
        return if is_runtime_id(id) { container(Runtime::LibvirtLxc, id) } else { Match::NotContainer };
    }
    // cgroupsPath in systemd's "slice:prefix:id" form used as a plain path.
    if let Some((_, rest)) = name.split_once(':') {
        let Some((prefix, id)) = rest.split_once(':') else {
            return Match::NotContainer;
        };
        let runtime = match prefix {
            "cri-containerd" | "nerdctl" => Runtime::Containerd,
            "crio" => Runtime::Crio,
            "docker" => Runtime::Docker,
            "libpod" => Runtime::Podman,
            _ => return Match::NotContainer,
        };
        return if is_hex_id(id) { container(runtime, id) } else { Match::NotContainer };
    }
    if is_hex_id(name) {
        return match (parent, grandparent) {
            (Some("docker") | Some("actions_job"), _) => container(Runtime::Docker, name),
            // ECS on EC2 (Docker, cgroupfs driver): `/ecs/<task id>/<container id>`.
            (_, Some("ecs")) => container(Runtime::Docker, name),
            // Kata's Rust runtime with no cgroupsPath: `kata_sandboxed_pod/<sandbox id>`.
            (Some("kata_sandboxed_pod"), _) => container(Runtime::Kata, name),
            // Kata's VMM threads left outside the pod: not a container.
            (Some("kata_overhead"), _) => Match::NotContainer,
            _ => Match::Ambiguous { hex_id: true },
        };
    }
    // Kata: `<pod cgroup>/kata_<sandbox id>` (and `kata_<container id>` in its legacy mode).
    if let Some(id) = name.strip_prefix("kata_") {
        return if is_hex_id(id) { container(Runtime::Kata, id) } else { Match::NotContainer };
    }
    match (parent, grandparent) {
        (Some("kata_sandboxed_pod"), _) if is_runtime_id(name) => return container(Runtime::Kata, name),
        // AWS Fargate: `/ecs/<task id>/<task id>-<n>`.
        (Some(task), Some("ecs")) if is_fargate_id(name, task) => return container(Runtime::Ecs, name),
        // Legacy libvirt-lxc: `/libvirt/lxc/<name>`.
        (Some("lxc"), Some("libvirt")) if is_runtime_id(name) => return container(Runtime::LibvirtLxc, name),
        // LXC 1-3 (`/lxc/<name>`) and LXC 4 with separate payload and monitor trees.
        (Some("lxc") | Some("lxc.payload"), _) if is_runtime_id(name) => return container(Runtime::Lxc, name),
        // Mesos containerizer: `/mesos/<container uuid>`, nested ones below their parent.
        (Some("mesos"), _) if is_uuid(name) => return container(Runtime::Mesos, name),
        _ => {}
    }
    if is_garden_id(name) {
        return container(Runtime::Garden, name);
    }
    // BOSH Process Manager with runc's cgroupfs driver: `bpm-<job>`.
    if let Some(id) = name.strip_prefix("bpm-") {
        let unit = UNIT_SUFFIXES.iter().any(|s| id.ends_with(s));
        return if is_runtime_id(id) && !unit { container(Runtime::Bpm, id) } else { Match::NotContainer };
    }
    match match_hex_prefixed(name) {
        Match::Container(runtime, id) => Match::Container(runtime, id),
        Match::NotContainer if looks_like_runtime_helper(name) => Match::NotContainer,
        _ if is_plain_name(name) => Match::Ambiguous { hex_id: false },
        _ => Match::NotContainer,
    }
}

/// A systemd scope's name without `.scope`.
fn match_scope(stem: &str) -> Match<'_> {
    if let Match::Container(runtime, id) = match_hex_prefixed(stem) {
        return Match::Container(runtime, id);
    }
    // The systemd drivers of runc, crun and runsc with no cgroupsPath:
    // `:<runtime>:<id>`, IDs of any form. BOSH Process Manager's are
    // `runc-bpm-<job>.scope`.
    const ANY_ID: [(&str, Runtime); 5] = [
        ("runc-bpm-", Runtime::Bpm),
        ("runc-", Runtime::Runc),
        ("crun-", Runtime::Crun),
        ("runsc-", Runtime::Gvisor),
        ("bpm-", Runtime::Bpm),
    ];
    for (prefix, runtime) in ANY_ID {
        if let Some(id) = stem.strip_prefix(prefix) {
            return if is_runtime_id(id) { container(runtime, id) } else { Match::NotContainer };
        }
    }
    // Machines registered with systemd-machined.
    if let Some(machine) = stem.strip_prefix("machine-") {
        return match unescape_unit(machine) {
            Some(machine) if is_runtime_id(&machine) => match_machine(machine),
            _ => Match::NotContainer,
        };
    }
    Match::NotContainer
}

/// A systemd-machined machine, by its name: libvirt names its machines
/// `<driver>-<n>-<name>` (virtual machines for every driver but `lxc`), rkt
/// `rkt-<pod uuid>`; everything else is a systemd-nspawn container.
fn match_machine(machine: Cow<'_, str>) -> Match<'_> {
    const VM_DRIVERS: [&str; 8] = ["qemu-", "kvm-", "libxl-", "xen-", "ch-", "bhyve-", "vz-", "vbox-"];
    if VM_DRIVERS.iter().any(|d| machine.starts_with(d)) {
        return Match::NotContainer;
    }
    if machine.starts_with("lxc-") {
        return Match::Container(Runtime::LibvirtLxc, machine);
    }
    if let Some(uuid) = machine.strip_prefix("rkt-") {
        return if is_uuid(uuid) {
            Match::Container(Runtime::Rkt, Cow::Owned(uuid.to_string()))
        } else {
            Match::NotContainer
        };
    }
    Match::Container(Runtime::Nspawn, machine)
}

/// `docker-<id>`, `cri-containerd-<id>`, `crio-<id>`, `libpod-<id>`,
/// `libpod-payload-<id>`, `nerdctl-<id>` with a 64-hex ID (the `.scope`
/// already stripped, or the cgroupfs driver's bare form).
fn match_hex_prefixed(stem: &str) -> Match<'_> {
    const PREFIXES: [(&str, Runtime); 6] = [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("nerdctl-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
        // `podman run --cgroups=split` (Quadlet's default): the payload in a
        // cgroup of its own next to conmon.
        ("libpod-payload-", Runtime::Podman),
        ("libpod-", Runtime::Podman),
    ];
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = stem.strip_prefix(prefix) {
            // `crio-conmon-<id>` and `libpod-conmon-<id>` hold the monitor, not the container.
            return if is_hex_id(id) { container(runtime, id) } else { Match::NotContainer };
        }
    }
    Match::NotContainer
}

fn looks_like_runtime_helper(name: &str) -> bool {
    name.starts_with("crio-conmon-") || name.starts_with("libpod-conmon-")
}

/// Unit types whose names end in a suffix: never a container ID.
const UNIT_SUFFIXES: [&str; 11] = [
    ".service",
    ".scope",
    ".slice",
    ".mount",
    ".automount",
    ".socket",
    ".swap",
    ".device",
    ".target",
    ".timer",
    ".path",
];

/// A name a runtime could have used as a container ID (runc's and
/// containerd's rules: letters, digits, `_`, `-`, `.`), that is not a systemd
/// unit's and not too long.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && !UNIT_SUFFIXES.iter().any(|s| name.ends_with(s))
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A container ID or name as runtimes allow them (runc: `[\w+.-]+`), found
/// after a prefix that already says which runtime made it.
fn is_runtime_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'))
}

/// A systemd unit name's escapes undone (`\x2d` is `-`); `None` when the
/// result is not UTF-8.
fn unescape_unit(escaped: &str) -> Option<Cow<'_, str>> {
    if !escaped.contains('\\') {
        return Some(Cow::Borrowed(escaped));
    }
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 2..i + 4).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], bytes.get(i + 1), hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'\\', Some(b'x'), Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// A Fargate container ID: its task's ID, `-`, a number.
fn is_fargate_id(name: &str, task: &str) -> bool {
    let task_like = task.len() == 32 && task.bytes().all(|b| b.is_ascii_hexdigit());
    task_like
        && name
            .strip_prefix(task)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A full container ID: 64 lowercase hex digits.
pub fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A Garden (Cloud Foundry) container ID: five groups of 8-4-4-4-4 hex digits.
fn is_garden_id(s: &str) -> bool {
    let mut groups = s.split('-');
    [8, 4, 4, 4, 4]
        .iter()
        .all(|&len| groups.next().is_some_and(|g| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit())))
        && groups.next().is_none()
}

/// The pod UID in a pod cgroup's name: `pod<uid>` (cgroupfs driver) or
/// `[<root>-]kubepods[-<qos>]-pod<uid with _>.slice` (systemd driver).
fn pod_uid_of(component: &str) -> Option<String> {
    let raw = if let Some(stem) = component.strip_suffix(".slice") {
        let (head, uid) = stem.rsplit_once("-pod")?;
        // `kubepods-…` and, under kind's `--cgroup-root=/kubelet`, `kubelet-kubepods-…`.
        if !head.contains("kubepods") {
            return None;
        }
        uid
    } else {
        component.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    (is_uuid(&uid) || (uid.len() == 32 && uid.bytes().all(|b| b.is_ascii_hexdigit()))).then_some(uid)
}

fn is_uuid(s: &str) -> bool {
    let mut groups = s.split('-');
    [8, 4, 4, 4, 12]
        .iter()
        .all(|&len| groups.next().is_some_and(|g| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit())))
        && groups.next().is_none()
}

fn join_path(components: &[&str]) -> String {
    let mut path = String::with_capacity(components.iter().map(|c| c.len() + 1).sum());
    for c in components {
        path.push('/');
        path.push_str(c);
    }
    path
}
