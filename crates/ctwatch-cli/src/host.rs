//! What ctwatch needs from the host before it starts: privileges, the
//! cgroup hierarchy to watch, and the agent's configuration from the flags.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ctwatch::cgroupfs::{self, CgroupFsError};
use ctwatch::sources::{scan, Origin};
use ctwatch::state_dirs::HostStateDirs;
use ctwatch::{Container, SharedStore, Store, Tracker};
use ctwatch_agent::{
    Agent, AgentConfig, AgentError, DataSource, HostView, Metrics, PinConfig, SourceChoice, WatchedTree,
};
use ctwatch_enrich::{EnrichConfig, Enrichment};

use crate::cli::{CgroupArgs, EnrichArgs, HookMode, PipelineArgs, SourceKind};

/// Fails with a clear message unless ctwatch runs as root.
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "must run as root: it watches cgroupfs and reads the runtimes' state under /run (try: sudo ctwatch ..., \
             or ask a running 'ctwatch serve' through a socket you may use)"
        );
    }
    Ok(())
}

/// Resolves `--cgroup-root` (or the host's default) to a watched tree.
pub fn watched_tree(args: &CgroupArgs) -> Result<WatchedTree> {
    let hierarchies = cgroupfs::mounted_hierarchies()?;
    match &args.cgroup_root {
        Some(dir) => {
            cgroupfs::check_cgroup_dir(dir)?;
            let start = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
            let hierarchy = cgroupfs::hierarchy_containing(&hierarchies, &start)
                .cloned()
                .ok_or_else(|| CgroupFsError::NotCgroupFs(dir.clone()))?;
            Ok(WatchedTree { hierarchy, start })
        }
        None => {
            let hierarchy = cgroupfs::default_hierarchy(&hierarchies).cloned().ok_or(CgroupFsError::NoneMounted)?;
            cgroupfs::check_cgroup_dir(&hierarchy.mount_point)?;
            Ok(WatchedTree { start: hierarchy.mount_point.clone(), hierarchy })
        }
    }
}

/// The runtimes' state directories under `--state-root`.
pub fn state_dirs(args: &CgroupArgs) -> HostStateDirs {
    HostStateDirs::under(&args.state_root)
}

/// The enrichment the flags ask for (`None` with `--no-enrich`).
pub fn enrich_config(args: &EnrichArgs, cgroups: &CgroupArgs) -> Option<EnrichConfig> {
    if args.no_enrich {
        return None;
    }
    let mut config = EnrichConfig {
        deadline: args.enrich_deadline,
        concurrency_per_daemon: args.enrich_concurrency,
        state_dirs: state_dirs(cgroups),
        docker_data_root: docker_data_root(args),
        ..EnrichConfig::default()
    };
    if !args.docker_socket.is_empty() {
        config.docker_sockets = args.docker_socket.clone();
    }
    if !args.podman_socket.is_empty() {
        config.podman_sockets = args.podman_socket.clone();
    }
    if !args.containerd_socket.is_empty() {
        config.containerd_sockets = args.containerd_socket.clone();
    }
    if !args.cri_socket.is_empty() {
        config.cri_sockets = args.cri_socket.clone();
    }
    Some(config)
}

/// Docker's data root: `--docker-data-root`, else daemon.json's, else the default.
pub fn docker_data_root(args: &EnrichArgs) -> std::path::PathBuf {
    let daemon_json = std::path::Path::new(ctwatch_enrich::docker_api::DOCKER_DAEMON_JSON);
    ctwatch_enrich::docker_api::docker_data_root(args.docker_data_root.as_deref(), daemon_json)
}

/// The agent's configuration from the flags.
pub fn agent_config(args: &PipelineArgs) -> Result<AgentConfig> {
    let PipelineArgs { cgroups, enrich, source, hook } = args;
    let mut config = AgentConfig::new(watched_tree(cgroups)?);
    config.source = match source.source {
        SourceKind::Auto => SourceChoice::Auto,
        SourceKind::Ebpf => SourceChoice::Ebpf,
        SourceKind::Inotify => SourceChoice::Inotify,
        SourceKind::Hook => SourceChoice::HookOnly,
    };
    let hook_only = source.source == SourceKind::Hook;
    if hook_only && hook.hook == HookMode::Off {
        anyhow::bail!("--source hook needs the hook: drop --hook off");
    }
    if hook.hook != HookMode::Off || hook_only {
        let policy = match &hook.policy {
            Some(path) => Some(ctwatch_hook::Policy::load(path)?),
            None => None,
        };
        config.hook = Some(ctwatch_hook::HookConfig {
            runtime_paths: hook.runtime_paths.clone(),
            replace_default_paths: hook.only_runtime_paths,
            deadline: hook.hook_deadline,
            fail_closed: hook.fail_closed,
            policy,
            identity: ctwatch_hook::identity::IdentitySources {
                docker_root: docker_data_root(enrich),
                ..Default::default()
            },
            ..ctwatch_hook::HookConfig::default()
        });
        // A policy or an explicit path is a request, not a nicety: fail if it cannot be honoured.
        config.hook_required = hook.hook == HookMode::On || hook.policy.is_some() || !hook.runtime_paths.is_empty();
    } else if hook.policy.is_some() || hook.fail_closed {
        anyhow::bail!("--policy and --fail-closed need the runtime hook: drop --hook off");
    }
    config.ring_buffer_bytes = source.ring_buffer_size;
    config.pin = (!source.no_pin).then(|| PinConfig {
        path: source.pin_path.clone(),
        max_entries: source.map_max_entries,
        keep_on_exit: source.keep_pinned,
    });
    config.grace = source.grace;
    config.enrich = enrich_config(enrich, cgroups);
    config.state_dirs = state_dirs(cgroups);
    Ok(config)
}

/// Starts the agent; errors name the flag that asked for what failed.
pub fn start_agent(config: AgentConfig) -> Result<Agent> {
    Agent::start(config).map_err(|e| match e {
        AgentError::Ebpf(why) => anyhow::anyhow!("--source ebpf: {why}"),
        AgentError::Hook(why) => anyhow::anyhow!("--hook: {why}"),
        other => other.into(),
    })
}

/// A data source from one scan of cgroupfs (what `ls`, `get`, `pid` and
/// `resolve` use when no agent runs); see [`enrich_now`].
pub fn snapshot(cgroups: &CgroupArgs) -> Result<DataSource> {
    require_root()?;
    let tree = watched_tree(cgroups)?;
    let store = SharedStore::new(Store::default());
    let mut tracker = Tracker::new(store.clone(), Box::new(state_dirs(cgroups)));
    let mut found = Vec::new();
    tracker.apply(&scan::scan(&tree.hierarchy.mount_point, &tree.start, Origin::Existing), &mut found);
    let host = HostView { hierarchy: tree.hierarchy, proc_root: PathBuf::from("/proc") };
    let ds = DataSource::new(store, host, Arc::new(Metrics::new()));
    ds.set_scanned();
    Ok(ds)
}

/// Asks the runtimes about `containers` (within the deadline) and records
/// the answers in the snapshot's store.
pub fn enrich_now(
    ds: &DataSource,
    args: &EnrichArgs,
    cgroups: &CgroupArgs,
    containers: &[Arc<Container>],
) -> Result<()> {
    let Some(config) = enrich_config(args, cgroups) else {
        return Ok(());
    };
    if containers.is_empty() {
        return Ok(());
    }
    let (results_tx, results) = crossbeam_channel::unbounded();
    let deadline = std::time::Instant::now() + config.deadline;
    let enrichment = Enrichment::start(config, results_tx).context("cannot start the enrichment threads")?;
    for c in containers {
        enrichment.submit(c);
    }
    let mut tracker = Tracker::new(ds.store().clone(), Box::new(state_dirs(cgroups)));
    for _ in 0..containers.len() {
        let Ok(result) = results.recv_deadline(deadline) else {
            break;
        };
        tracker.update_container(&result.container_id, result.cgroup_id, |c| result.metadata.apply_to(c));
    }
    Ok(())
}
