//! What ctwatch needs from the host before it starts: privileges and the
//! cgroup hierarchy to watch.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ctwatch::cgroupfs::{self, CgroupFsError, Hierarchy};
use ctwatch::state_dirs::HostStateDirs;

use ctwatch_enrich::{EnrichConfig, EnrichResult, Enrichment};

use crate::cli::{CgroupArgs, EnrichArgs};

/// The cgroup tree ctwatch will scan and watch.
#[derive(Debug, Clone)]
pub struct WatchedTree {
    /// The hierarchy it is in.
    pub hierarchy: Hierarchy,
    /// The directory to follow (the mount point, or a directory inside it).
    pub start: PathBuf,
}

/// Fails with a clear message unless ctwatch runs as root.
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root: it watches cgroupfs and reads the runtimes' state under /run (try: sudo ctwatch ...)");
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

/// Starts runtime enrichment as the flags say (`None` with `--no-enrich`).
pub fn start_enrichment(
    args: &EnrichArgs,
    cgroups: &CgroupArgs,
    results: crossbeam_channel::Sender<EnrichResult>,
) -> Result<Option<Enrichment>> {
    if args.no_enrich {
        return Ok(None);
    }
    let mut config = EnrichConfig {
        deadline: args.enrich_deadline,
        concurrency_per_daemon: args.enrich_concurrency,
        state_dirs: state_dirs(cgroups),
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
    Ok(Some(Enrichment::start(config, results).context("cannot start the enrichment threads")?))
}
