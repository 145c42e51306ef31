//! How the agent is set up: what to watch, which sources, which stages.

use std::path::PathBuf;
use std::time::Duration;

use ctwatch::cgroupfs::{self, Hierarchy};
use ctwatch::state_dirs::HostStateDirs;
use ctwatch_ebpf::DEFAULT_RING_BUFFER_BYTES;
use ctwatch_enrich::EnrichConfig;
use ctwatch_hook::HookConfig;

use crate::agent::AgentError;

/// Which kernel source to read cgroup changes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceChoice {
    /// eBPF when the kernel and privileges allow it, else inotify.
    #[default]
    Auto,
    /// eBPF only (fail if it cannot load).
    Ebpf,
    /// inotify only.
    Inotify,
    /// No kernel source: the runtime hook alone (a scan at start, then what
    /// the hook sees; containers made without a hooked runtime are missed).
    HookOnly,
}

/// The cgroup tree the agent scans and follows.
#[derive(Debug, Clone)]
pub struct WatchedTree {
    /// The hierarchy it is in.
    pub hierarchy: Hierarchy,
    /// The directory to follow (the mount point, or a directory inside it).
    pub start: PathBuf,
}

/// The pinned map of container cgroups for other eBPF programs.
#[derive(Debug, Clone)]
pub struct PinConfig {
    /// Directory on bpffs.
    pub path: PathBuf,
    /// Entries at most.
    pub max_entries: u32,
    /// Leave it pinned when the agent stops.
    pub keep_on_exit: bool,
}

/// How the agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// What to watch.
    pub tree: WatchedTree,
    /// Which kernel source.
    pub source: SourceChoice,
    /// eBPF ring buffer size in bytes.
    pub ring_buffer_bytes: u32,
    /// The pinned map, or `None` for none.
    pub pin: Option<PinConfig>,
    /// How long removed containers stay readable.
    pub grace: Duration,
    /// Runtime enrichment, or `None` for none.
    pub enrich: Option<EnrichConfig>,
    /// The runtimes' state directories (confirm ambiguous cgroup names).
    pub state_dirs: HostStateDirs,
    /// The proc mount (normally `/proc`).
    pub proc_root: PathBuf,
    /// The runtime hook, or `None` for none.
    pub hook: Option<HookConfig>,
    /// Fail when the hook cannot start (else it is used when allowed, and a
    /// warning says why not). Always true with [`SourceChoice::HookOnly`].
    pub hook_required: bool,
    /// The journal every event is appended to (and numbered by) before any
    /// other sink sees it, or `None` for none (events go out with `seq` 0).
    pub journal: Option<std::sync::Arc<ctwatch_journal::Journal>>,
    /// Publish the journal to NATS JetStream (needs `journal`), or `None`.
    /// Its container count for the heartbeat is filled in by the agent.
    pub nats: Option<ctwatch_nats::SinkConfig>,
}

impl AgentConfig {
    /// Defaults for following `tree`: auto source, no pinned map, 5 s grace, no enrichment.
    pub fn new(tree: WatchedTree) -> Self {
        AgentConfig {
            tree,
            source: SourceChoice::Auto,
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            pin: None,
            grace: ctwatch::store::DEFAULT_GRACE,
            enrich: None,
            state_dirs: HostStateDirs::default(),
            proc_root: PathBuf::from("/proc"),
            hook: None,
            hook_required: false,
            journal: None,
            nats: None,
        }
    }

    /// The host's default hierarchy, whole.
    pub fn for_host() -> Result<Self, AgentError> {
        let hierarchies = cgroupfs::mounted_hierarchies().map_err(|e| AgentError::Cgroups(e.to_string()))?;
        let hierarchy = cgroupfs::default_hierarchy(&hierarchies)
            .cloned()
            .ok_or_else(|| AgentError::Cgroups("no cgroup hierarchy is mounted".into()))?;
        Ok(AgentConfig::new(WatchedTree { start: hierarchy.mount_point.clone(), hierarchy }))
    }
}
