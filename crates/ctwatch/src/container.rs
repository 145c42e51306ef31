//! What ctwatch knows about one container: the one model every view derives from.
//!
//! [`Container`] is defined here once. The event arguments
//! ([`crate::event`]), the data source's record (`ctwatch-agent`'s
//! `ContainerRecord`, printed by `get` and `ls --format json`), the CLI's
//! tables and the protobuf messages (`ctwatch-api`'s `convert`) are all made
//! from it by destructuring it without `..`: a field added here and not
//! mapped in one of them fails to compile. Add a field here, then follow the
//! compiler.
//!
//! Where "not known (yet)" differs from "known to be empty" a field is an
//! `Option` (the hook's findings: `None` until the runtime hook saw the
//! create, or when it was off).
//!
//! Where the next fields go: start and exit (`started_at`, `finished_at`,
//! `exit_code`, `exit_signal`, `oom_killed`, `oom_kills`, `init_pid`, the
//! start's exe/argv0) in the lifecycle section of [`Container`], each an
//! `Option`; the security posture as one `security: Option<...>` field next
//! to `hook`; an event's sequence number (`seq`) on
//! [`crate::event::ContainerEvent`], not here.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use ctwatch_security::SecurityProfile;

use crate::hook::HookInfo;
use crate::runtime::Runtime;

/// Where a container is in its life, as ctwatch saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Already running when ctwatch started.
    Existing,
    /// Its root cgroup was created while ctwatch watched.
    Created,
    /// Its root cgroup is gone; kept for the grace period so late lookups resolve.
    Removed,
}

/// Kubernetes pod data for a container that belongs to a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PodInfo {
    /// The pod's name.
    pub name: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's UID.
    pub uid: String,
    /// True for the pod's sandbox (pause) container itself.
    pub sandbox: bool,
}

/// One container. Identity comes from its cgroup, names/image/pod/labels from
/// runtime enrichment, `annotations` and `hook` from the runtime hook, and
/// the lifecycle from the kernel source.
///
/// Events about a container carry the record as it was when the event was
/// made (shared, `Arc<Container>`); the store holds the current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    // --- identity ---
    /// The container's ID as its runtime knows it.
    pub id: String,
    /// The runtime that made it.
    pub runtime: Runtime,
    /// The ID of its root cgroup in the watched hierarchy (0 if it vanished before it could be read).
    pub cgroup_id: u64,
    /// Its root cgroup's path, relative to the hierarchy root.
    pub cgroup_path: String,

    // --- what its runtime says (enrichment; empty until it answers) ---
    /// The image as the user named it.
    pub image: String,
    /// The image digest (`sha256:<hex>`).
    pub image_digest: String,
    /// The container's name.
    pub name: String,
    /// Pod data, when the container belongs to a Kubernetes pod.
    pub pod: PodInfo,
    /// The labels its runtime reports (Docker/Podman/containerd/CRI labels), bounded and cleaned.
    pub labels: BTreeMap<String, String>,
    /// The OCI annotations of its bundle's `config.json` (from the runtime
    /// hook), bounded and cleaned; empty when the hook did not read them.
    pub annotations: BTreeMap<String, String>,

    // --- what the runtime hook saw ---
    /// What the runtime hook learned before the container started (bundle,
    /// OCI config, init PID, caller, policy verdict); `None` when the hook
    /// did not see its create (off, not hooked, or the container predates ctwatch).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "serialize_hook")]
    pub hook: Option<Arc<HookInfo>>,
    /// What the container may do (privileges, capabilities, host namespaces
    /// and mounts, seccomp, limits), derived from its OCI config: read by the
    /// runtime hook before it started, or for containers found otherwise from
    /// runc's state → the bundle's `config.json` during enrichment; `None`
    /// when neither could be read.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "serialize_security")]
    pub security: Option<Arc<SecurityProfile>>,

    // --- lifecycle ---
    /// The earliest ctime seen for its root cgroup, in ns since the Unix epoch (0 if unknown).
    pub ctime_ns: u64,
    /// Where it is in its life.
    pub state: ContainerState,
    /// When its own process started (its `container_start`), ns since the Unix epoch.
    pub started_at_ns: Option<u64>,
    /// When its init exited or its root cgroup went away, ns since the Unix epoch.
    pub finished_at_ns: Option<u64>,
    /// Its init's exit code, when it exited normally and a source saw it.
    pub exit_code: Option<i32>,
    /// The signal that killed its init, when one did and a source saw it.
    pub exit_signal: Option<i32>,
    /// Whether its init was killed by the OOM killer, when a source knows.
    pub oom_killed: Option<bool>,
    /// How many OOM kills happened inside it during its life, when a source counted them.
    pub oom_kills: Option<u64>,
    /// Its init's PID (host PID namespace), once known.
    pub init_pid: Option<u32>,
    /// The executable its own process started with (`/proc/<pid>/exe` or the exec's filename).
    pub start_exe: Option<String>,
    /// That process's `argv[0]`.
    pub start_argv0: Option<String>,
}

fn serialize_security<S: serde::Serializer>(
    security: &Option<Arc<SecurityProfile>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    security.as_deref().serialize(serializer)
}

fn serialize_hook<S: serde::Serializer>(hook: &Option<Arc<HookInfo>>, serializer: S) -> Result<S::Ok, S::Error> {
    hook.as_deref().serialize(serializer)
}

impl Container {
    /// A container known so far by its ID and runtime only (no cgroup yet,
    /// nothing enriched), in the `Created` state.
    pub fn new(id: impl Into<String>, runtime: Runtime) -> Container {
        Container {
            id: id.into(),
            runtime,
            cgroup_id: 0,
            cgroup_path: String::new(),
            image: String::new(),
            image_digest: String::new(),
            name: String::new(),
            pod: PodInfo::default(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            hook: None,
            security: None,
            ctime_ns: 0,
            state: ContainerState::Created,
            started_at_ns: None,
            finished_at_ns: None,
            exit_code: None,
            exit_signal: None,
            oom_killed: None,
            oom_kills: None,
            init_pid: None,
            start_exe: None,
            start_argv0: None,
        }
    }

    /// The hook's findings joined onto this container: `hook` kept, the
    /// OCI annotations copied into `annotations` and its security profile
    /// (when it read one) into `security`.
    pub fn set_hook(&mut self, hook: Arc<HookInfo>) {
        if let Some(oci) = &hook.oci {
            self.annotations = oci.annotations.clone();
        }
        if let Some(security) = &hook.security {
            self.security = Some(security.clone());
        }
        self.hook = Some(hook);
    }
}
