//! What ctwatch knows about one container.

use std::collections::BTreeMap;

use serde::Serialize;

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

/// One container: identity from its cgroup, the rest from enrichment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    /// The container's ID as its runtime knows it.
    pub id: String,
    /// The runtime that made it.
    pub runtime: Runtime,
    /// The ID of its root cgroup in the watched hierarchy (0 if it vanished before it could be read).
    pub cgroup_id: u64,
    /// Its root cgroup's path, relative to the hierarchy root.
    pub cgroup_path: String,
    /// The earliest ctime seen for its root cgroup, in ns since the Unix epoch (0 if unknown).
    pub ctime_ns: u64,
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
    /// Where it is in its life.
    pub state: ContainerState,
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
            ctime_ns: 0,
            image: String::new(),
            image_digest: String::new(),
            name: String::new(),
            pod: PodInfo::default(),
            labels: BTreeMap::new(),
            state: ContainerState::Created,
        }
    }
}
