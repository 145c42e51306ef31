//! Command-line definitions.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// ctwatch knows every container on this host from the moment its cgroup is
/// created until it is gone, and says what it is.
///
/// It watches one cgroup hierarchy (the unified one on cgroup v2 hosts, the v1
/// `cpuset` hierarchy on v1 and hybrid hosts), recognises the cgroups that
/// containers live in (Docker, containerd, CRI-O, Podman, Kubernetes pods,
/// Garden, runc), and reports each container exactly once. Run as root.
#[derive(Debug, Parser)]
#[command(
    name = "ctwatch",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Log level for messages on stderr (error, warn, info, debug, trace),
    /// or a tracing filter such as `ctwatch=debug`.
    #[arg(long, global = true, default_value = "info", env = "CTWATCH_LOG")]
    pub log_level: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream container events as they happen: `existing_container` for what
    /// already runs, then `container_create` and `container_remove`.
    ///
    /// One JSON object per line by default (pipe it to `jq`), or a table.
    Watch(WatchArgs),
    /// List the containers on this host now.
    #[command(visible_alias = "ps")]
    Ls(LsArgs),
}

/// Where to look for cgroups.
#[derive(Debug, Clone, Args)]
pub struct CgroupArgs {
    /// The cgroup directory to watch: a hierarchy's mount point (for example
    /// /sys/fs/cgroup/unified) or a directory inside one, to follow only that
    /// subtree. Default: the hierarchy ctwatch picks for this host.
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,

    /// Directory that holds the runtimes' state (`run/runc`,
    /// `run/containerd/runc`, ...), used to confirm containers whose cgroup
    /// name alone is ambiguous.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub state_root: PathBuf,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// Aligned columns for people.
    Table,
}

/// Options of `ctwatch watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Where to look for cgroups.
    #[command(flatten)]
    pub cgroups: CgroupArgs,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Json)]
    pub format: Format,

    /// How long a removed container stays in the store for late lookups
    /// (for example `5s`, `500ms`, `1m`).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Do not print `existing_container` events for what runs at start.
    #[arg(long)]
    pub no_existing: bool,

    /// Show full container IDs in the table.
    #[arg(long)]
    pub no_trunc: bool,
}

/// Options of `ctwatch ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Where to look for cgroups.
    #[command(flatten)]
    pub cgroups: CgroupArgs,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Show full container IDs in the table.
    #[arg(long)]
    pub no_trunc: bool,

    /// Print only container IDs.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 5s, 500ms, 1m)"))
}
