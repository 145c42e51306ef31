//! The derived events ctwatch emits, and their JSON form.

use std::sync::Arc;
use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::container::{Container, PodInfo};
use crate::hook::HookInfo;

/// Which derived event this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A container's root cgroup was created.
    ContainerCreate,
    /// A container's root cgroup was removed.
    ContainerRemove,
    /// A container that was already running when ctwatch started.
    ExistingContainer,
    /// What is known about a container changed after its create went out
    /// (a runtime that was down answered later). Same arguments as a create.
    ContainerUpdate,
    /// A runtime is about to create the container (the runtime hook saw its
    /// exec, before the container's first instruction). Same arguments as a create.
    ContainerPrecreate,
    /// A container broke the policy (`--policy`): reported in audit mode,
    /// refused in enforce mode. Same arguments as a create; `hook.verdict` says why.
    ContainerPolicyViolation,
    /// The container's own process started (its entrypoint's first exec;
    /// `runc start` for `runc create` + `runc start`): once per container,
    /// after its create. Same arguments as a create plus `init_pid`, `exe`,
    /// `argv0` and `started_at`.
    ContainerStart,
}

impl EventKind {
    /// The event's name as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ContainerCreate => "container_create",
            EventKind::ContainerRemove => "container_remove",
            EventKind::ExistingContainer => "existing_container",
            EventKind::ContainerUpdate => "container_update",
            EventKind::ContainerPrecreate => "container_precreate",
            EventKind::ContainerPolicyViolation => "container_policy_violation",
            EventKind::ContainerStart => "container_start",
        }
    }
}

/// One derived event about one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerEvent {
    /// When ctwatch observed it.
    pub time: SystemTime,
    /// What happened.
    pub kind: EventKind,
    /// The container's root cgroup ID (0 if the cgroup vanished before it could be read).
    pub cgroup_id: u64,
    /// The container, as known when the event was made.
    pub container: Arc<Container>,
    /// When the kernel made the cgroup change, if the source knows (eBPF).
    pub kernel_time: Option<SystemTime>,
    /// Whether runtime enrichment finished before the event went out
    /// (`None` when enrichment is off, or for removals).
    pub enriched: Option<bool>,
    /// The event's number in the agent's journal (strictly increasing for the
    /// journal's life, across restarts); 0 when it was not journaled
    /// (`--no-journal`, or the journal refused it).
    pub seq: u64,
    /// A `container_remove` made at the agent's start for a container the
    /// journal last saw alive and the scan no longer finds: it went while the
    /// agent was down (its `time` is the restart's, not the removal's).
    pub late: bool,
}

impl ContainerEvent {
    /// What the runtime hook learned (bundle, OCI config, init PID, policy
    /// verdict), when it saw this container being created: the container's
    /// own [`Container::hook`], printed as the event's `hook`.
    pub fn hook(&self) -> Option<&Arc<HookInfo>> {
        self.container.hook.as_ref()
    }
}

/// A time in ns since the Unix epoch as a `SystemTime`.
pub fn ns_to_time(ns: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(ns)
}

/// Formats a time as RFC 3339 with nanoseconds, in UTC.
pub fn rfc3339_nanos(time: SystemTime) -> String {
    DateTime::<Utc>::from(time).to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The `args` object: the creation arguments, then what is known of the
/// container's start and end (each only when known).
struct Args<'a>(&'a ContainerEvent);

impl Serialize for Args<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Every field named: one added to the model fails to compile here
        // until it is printed or deliberately left out.
        let Container {
            id,
            runtime,
            cgroup_id: _,   // the event's own `cgroup_id`
            cgroup_path: _, // not an argument of the reference's events
            image,
            image_digest,
            name,
            pod: PodInfo { name: pod_name, namespace: pod_namespace, uid: pod_uid, sandbox: pod_sandbox },
            labels,
            annotations: _, // inside `hook.oci.annotations`
            hook: _,        // the event's own `hook`
            ctime_ns,
            state: _, // the event's kind says it
            security,
            started_at_ns,
            finished_at_ns,
            exit_code,
            exit_signal,
            oom_killed,
            oom_kills,
            init_pid,
            start_exe,
            start_argv0,
        } = &*self.0.container;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("runtime", runtime)?;
        map.serialize_entry("container_id", id)?;
        map.serialize_entry("ctime", ctime_ns)?;
        map.serialize_entry("container_image", image)?;
        map.serialize_entry("container_image_digest", image_digest)?;
        map.serialize_entry("container_name", name)?;
        map.serialize_entry("pod_name", pod_name)?;
        map.serialize_entry("pod_namespace", pod_namespace)?;
        map.serialize_entry("pod_uid", pod_uid)?;
        map.serialize_entry("pod_sandbox", pod_sandbox)?;
        map.serialize_entry("labels", labels)?;
        if let Some(pid) = init_pid {
            map.serialize_entry("init_pid", pid)?;
        }
        if let Some(exe) = start_exe {
            map.serialize_entry("exe", exe)?;
        }
        if let Some(argv0) = start_argv0 {
            map.serialize_entry("argv0", argv0)?;
        }
        if let Some(ns) = started_at_ns {
            map.serialize_entry("started_at", &rfc3339_nanos(ns_to_time(*ns)))?;
        }
        if let Some(ns) = finished_at_ns {
            map.serialize_entry("finished_at", &rfc3339_nanos(ns_to_time(*ns)))?;
        }
        if let Some(code) = exit_code {
            map.serialize_entry("exit_code", code)?;
        }
        if let Some(signal) = exit_signal {
            map.serialize_entry("exit_signal", signal)?;
        }
        if let Some(killed) = oom_killed {
            map.serialize_entry("oom_killed", killed)?;
        }
        if let Some(kills) = oom_kills {
            map.serialize_entry("oom_kills", kills)?;
        }
        if let Some(security) = security {
            map.serialize_entry("security", security.as_ref())?;
        }
        map.end()
    }
}

impl Serialize for ContainerEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if self.seq != 0 {
            map.serialize_entry("seq", &self.seq)?;
        }
        map.serialize_entry("time", &rfc3339_nanos(self.time))?;
        // When the line goes out: `emitted - time` is how long ctwatch held it
        // (enrichment), `emitted - kernel_time` the whole delay.
        map.serialize_entry("emitted", &rfc3339_nanos(SystemTime::now()))?;
        if let Some(kernel_time) = self.kernel_time {
            map.serialize_entry("kernel_time", &rfc3339_nanos(kernel_time))?;
        }
        map.serialize_entry("event", self.kind.as_str())?;
        map.serialize_entry("cgroup_id", &self.cgroup_id)?;
        if let Some(enriched) = self.enriched {
            map.serialize_entry("enriched", &enriched)?;
        }
        if self.late {
            map.serialize_entry("late", &true)?;
        }
        map.serialize_entry("args", &Args(self))?;
        if let Some(hook) = self.hook() {
            map.serialize_entry("hook", hook.as_ref())?;
        }
        map.end()
    }
}
