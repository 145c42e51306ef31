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
        let in_kubepods = components[..index].iter().any(|c| c.starts_with("kubepods"));
        let found = match match_component(name, parent) {
            Match::Container(runtime, id) => Some((runtime, id.to_string())),
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
    Container(Runtime, &'a str),
    /// Not a container (an ordinary cgroup, or a runtime's helper like conmon).
    NotContainer,
    /// Could be a container: only a runtime's state can tell.
    Ambiguous { hex_id: bool },
}

fn match_component<'a>(name: &'a str, parent: Option<&str>) -> Match<'a> {
    // systemd driver: `<prefix>-<id>.scope`.
    if let Some(stem) = name.strip_suffix(".scope") {
        return match_prefixed(stem);
    }
    // cgroupsPath in systemd's "slice:prefix:id" form used as a plain path.
    if let Some((_, rest)) = name.split_once(':') {
        let Some((prefix, id)) = rest.split_once(':') else {
            return Match::NotContainer;
        };
        let runtime = match prefix {
            "cri-containerd" => Runtime::Containerd,
            "crio" => Runtime::Crio,
            "docker" => Runtime::Docker,
            "libpod" => Runtime::Podman,
            _ => return Match::NotContainer,
        };
        return if is_hex_id(id) { Match::Container(runtime, id) } else { Match::NotContainer };
    }
    if is_hex_id(name) {
        return match parent {
            Some("docker") | Some("actions_job") => Match::Container(Runtime::Docker, name),
            _ => Match::Ambiguous { hex_id: true },
        };
    }
    if is_garden_id(name) {
        return Match::Container(Runtime::Garden, name);
    }
    match match_prefixed(name) {
        Match::Container(runtime, id) => Match::Container(runtime, id),
        Match::NotContainer if looks_like_runtime_helper(name) => Match::NotContainer,
        _ if is_plain_name(name) => Match::Ambiguous { hex_id: false },
        _ => Match::NotContainer,
    }
}

/// `docker-<id>`, `cri-containerd-<id>`, `crio-<id>`, `libpod-<id>` (the
/// `.scope` already stripped, or the cgroupfs driver's bare form).
fn match_prefixed(stem: &str) -> Match<'_> {
    const PREFIXES: [(&str, Runtime); 4] = [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
        ("libpod-", Runtime::Podman),
    ];
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = stem.strip_prefix(prefix) {
            // `crio-conmon-<id>` and `libpod-conmon-<id>` hold the monitor, not the container.
            return if is_hex_id(id) { Match::Container(runtime, id) } else { Match::NotContainer };
        }
    }
    Match::NotContainer
}

fn looks_like_runtime_helper(name: &str) -> bool {
    name.starts_with("crio-conmon-") || name.starts_with("libpod-conmon-")
}

/// A name a runtime could have used as a container ID: no dots (systemd units,
/// slices and scopes all have one), no spaces, not too long.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name != "."
        && name != ".."
        && !name.contains('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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
/// `kubepods[-<qos>]-pod<uid with _>.slice` (systemd driver).
fn pod_uid_of(component: &str) -> Option<String> {
    let raw = if let Some(stem) = component.strip_suffix(".slice") {
        let (head, uid) = stem.rsplit_once("-pod")?;
        if !head.starts_with("kubepods") {
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
