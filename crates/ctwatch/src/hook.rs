//! What the runtime hook (fanotify on runc/crun/conmon) learns about a
//! container before it starts, and the messages it sends the tracker.
//!
//! The hook itself lives in the `ctwatch-hook` crate; these types are here so
//! that events, the tracker loop and the API can carry them without depending
//! on it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::container::Container;
use crate::sources::CgroupEvent;

/// A summary of the bundle's OCI `config.json`, read before the container's
/// first instruction runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OciSummary {
    /// `ociVersion`.
    pub oci_version: String,
    /// `process.args` (at most 64, each at most 512 bytes).
    pub args: Vec<String>,
    /// `process.cwd`.
    pub cwd: String,
    /// `process.user.uid`.
    pub uid: u32,
    /// `process.user.gid`.
    pub gid: u32,
    /// `hostname`.
    pub hostname: String,
    /// `root.path`.
    pub root_path: String,
    /// `root.readonly`.
    pub root_readonly: bool,
    /// `linux.cgroupsPath`.
    pub cgroups_path: String,
    /// The namespace types the container gets a new one of (`pid`, `mount`, ...).
    pub namespaces: Vec<String>,
    /// How many mounts the spec has.
    pub mounts: usize,
    /// The bounding capabilities.
    pub capabilities: Vec<String>,
    /// `annotations` (at most 128, cleaned).
    pub annotations: BTreeMap<String, String>,
}

/// What the policy said about a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyVerdict {
    /// `audit` (reported only) or `enforce` (the create was refused).
    pub mode: String,
    /// Whether the runtime's exec was refused (`FAN_DENY`).
    pub denied: bool,
    /// The name of the rule that matched.
    pub rule: String,
    /// Why, in words.
    pub reason: String,
}

/// Everything the hook learned about one container create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookInfo {
    /// The runtime binary that was executed (as marked).
    pub runtime_binary: String,
    /// The PID of that runtime process (host PID namespace).
    pub runtime_pid: u32,
    /// The runtime's subcommand (`create`, `run`; `conmon` for conmon).
    pub command: String,
    /// The bundle directory.
    pub bundle: String,
    /// The pid file the runtime was told to write, if any.
    pub pid_file: String,
    /// The runtime's state root (`--root`), if given.
    pub state_root: String,
    /// The OCI config summary, when `config.json` could be read.
    pub oci: Option<OciSummary>,
    /// Why the config could not be read, when it could not.
    pub oci_error: Option<String>,
    /// The policy's verdict, when a policy is loaded and a rule matched.
    pub verdict: Option<PolicyVerdict>,
    /// How long the permission event waited for ctwatch's answer, in µs.
    pub answer_us: u64,
    /// Whether the answer was the deadline's default rather than ctwatch's own.
    pub answered_by_deadline: bool,
    /// The container's init PID, once the runtime wrote it.
    pub init_pid: Option<u32>,
    /// Whether the caller could create this container (euid 0 with
    /// `CAP_SYS_ADMIN` in the initial user namespace). An untrusted caller's
    /// exec is reported as it is and nothing more: its files are not read,
    /// no runtime record is looked up, no policy applies, and its findings
    /// are never attached to any container's events.
    pub trusted: bool,
    /// The caller's effective UID when it executed the runtime.
    pub caller_uid: u32,
    /// The security profile derived from the same parse of `config.json`
    /// (copied to [`Container::security`] by [`Container::set_hook`], and
    /// shown there, not here).
    #[serde(skip)]
    pub security: Option<Arc<ctwatch_security::SecurityProfile>>,
}

/// What the hook sends the tracker loop.
// A precreate is sent once per container create, itself boxed into the
// source message: its size is not worth another allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookMessage {
    /// A runtime is about to create a container (the exec is being answered).
    Precreate {
        /// The container as far as the hook knows it (ID, runtime, name, image, pod; boxed: it is large).
        container: Box<Container>,
        /// The rest of what the hook learned (boxed: it is most of the message).
        info: Box<HookInfo>,
        /// When the permission event was read.
        time: SystemTime,
    },
    /// The container's init process exists (its PID was in the pid file or
    /// the runtime's state).
    Started {
        /// The container ID.
        id: String,
        /// The init PID (host PID namespace).
        init_pid: u32,
        /// The container's cgroup in the watched hierarchy, as a `Mkdir`, for
        /// when the hook is the only source.
        cgroup: Option<CgroupEvent>,
    },
    /// The container's init process exited (seen with a pidfd, or /proc polling).
    Exited {
        /// The container ID.
        id: String,
        /// The init PID that exited.
        init_pid: u32,
        /// The container's cgroup as an `Rmdir`, for when the hook is the only source.
        cgroup: Option<CgroupEvent>,
    },
    /// The runtime exited without starting the container (the create failed or was refused).
    Failed {
        /// The container ID.
        id: String,
    },
}

impl HookMessage {
    /// The container ID the message is about.
    pub fn container_id(&self) -> &str {
        match self {
            HookMessage::Precreate { container, .. } => &container.id,
            HookMessage::Started { id, .. } | HookMessage::Exited { id, .. } | HookMessage::Failed { id } => id,
        }
    }
}
