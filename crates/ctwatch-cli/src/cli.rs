//! Command-line definitions.

use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// ctwatch knows every container on this host from the moment its cgroup is
/// created until it is gone, and says what it is.
///
/// It watches one cgroup hierarchy (the unified one on cgroup v2 hosts, the v1
/// `cpuset` hierarchy on v1 and hybrid hosts), recognises the cgroups that
/// containers live in (Docker, containerd, CRI-O, Podman, Kubernetes pods,
/// Garden, runc), and reports each container exactly once. Run as root.
#[derive(Debug, Parser)]
#[command(name = "ctwatch", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Log level for messages on stderr (error, warn, info, debug, trace),
    /// or a tracing filter such as `ctwatch=debug`.
    #[arg(long, global = true, default_value = "info", env = "CTWATCH_LOG")]
    pub log_level: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Parses the command line, and notes which flags given there only work
/// without an agent (see [`AgentArgs::local_only_flags`]).
pub fn parse() -> Result<Cli, clap::Error> {
    let mut command = Cli::command();
    if no_color() {
        command = command.color(clap::ColorChoice::Never);
    }
    let matches = command.try_get_matches()?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    let Some((_, sub)) = matches.subcommand() else { return Ok(cli) };
    match &mut cli.command {
        Command::Watch(args) => {
            args.agent.local_only_flags = given(sub, PipelineArgs::augment_args(clap::Command::new("x")))
        }
        Command::Ls(args) => {
            let local = EnrichArgs::augment_args(CgroupArgs::augment_args(clap::Command::new("x")));
            args.agent.local_only_flags = given(sub, local);
        }
        Command::Get(GetArgs { from, .. }) | Command::Pid(PidArgs { from, .. }) => {
            let local = EnrichArgs::augment_args(CgroupArgs::augment_args(clap::Command::new("x")));
            from.agent.local_only_flags = given(sub, local);
        }
        Command::Resolve(args) => {
            let local = EnrichArgs::augment_args(CgroupArgs::augment_args(clap::Command::new("x")));
            args.agent.local_only_flags = given(sub, local);
        }
        _ => {}
    }
    Ok(cli)
}

/// The `--flags` of `local` that were given on the command line.
fn given(matches: &ArgMatches, local: clap::Command) -> Vec<String> {
    local
        .get_arguments()
        .filter(|a| matches.try_get_raw(a.get_id().as_str()).is_ok())
        .filter(|a| matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect()
}

/// True when the `NO_COLOR` convention asks for no colour (set and not empty).
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream container events as they happen: `existing_container` for what
    /// already runs, then `container_create` and `container_remove`.
    ///
    /// Each create carries what the runtimes say of the container (name, image,
    /// digest, pod) and `"enriched": true|false`; `container_update` follows
    /// when a runtime that was down answers later. One JSON object per line by
    /// default (pipe it to `jq`), or a table.
    Watch(WatchArgs),
    /// List the containers on this host now.
    #[command(visible_alias = "ps")]
    Ls(LsArgs),
    /// Run the agent: keep the containers store current and answer the API
    /// (gRPC on a unix socket; see proto/ctwatch/v1/ctwatch.proto).
    Serve(Box<ServeArgs>),
    /// Show one container as JSON: by ID or prefix, cgroup ID, PID or mount namespace.
    #[command(visible_alias = "inspect")]
    Get(GetArgs),
    /// Show the container a process is in (exit status 1 if it is in none).
    Pid(PidArgs),
    /// Every event of one container (ID, ID prefix or name) from the agent's
    /// journal, from its precreate to its remove, long after it is gone.
    History(HistoryArgs),
    /// Resolve a path as a container sees it to the host path that reaches it,
    /// following symlinks and `..` inside the container's root only, with the
    /// file's device and inode (check them after opening the path).
    Resolve(ResolveArgs),
    /// Ask a running agent's standard gRPC health service
    /// (`grpc.health.v1.Health`): exit 0 when it is SERVING (the scan at start
    /// is done), 1 when it answers otherwise, 2 when it cannot be reached.
    /// For readiness and liveness probes.
    Health(HealthArgs),
    /// Evaluate an OCI bundle's config.json offline, as the hook would: print
    /// what the container may do (its `security` profile), the Pod Security
    /// Standards checks it fails, and the policy's verdict. Exit status 0 when
    /// the policy has no verdict (or none is given), 1 when the container
    /// breaks the policy (in audit mode too: `verdict.denied` says whether the
    /// hook would refuse it), 2 on an error.
    Check(CheckArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    /// to stdout, e.g. `ctwatch completions bash > /etc/bash_completion.d/ctwatch`.
    Completions(CompletionsArgs),
    /// Print the man page (roff) to stdout, e.g. `ctwatch man | man -l -`.
    Man,
    /// Every node's containers and events, from NATS JetStream alone (what
    /// `ctwatch serve --nats-url` publishes): `ls`, `get`, `watch`, `nodes`.
    Cluster(crate::commands::cluster::ClusterArgs),
}

/// Options of `ctwatch health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The agent's socket.
    #[arg(long, value_name = "PATH", env = "CTWATCH_SOCKET", default_value = ctwatch_api::DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// The service to ask about: empty for the whole server (default), or
    /// `ctwatch.v1.Containers`.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub service: String,

    /// Give up (exit 2) when no answer comes within this long.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Options of `ctwatch check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The OCI config (a bundle's `config.json`).
    #[arg(value_name = "CONFIG.json")]
    pub config: PathBuf,

    /// The policy file the hook would use (`--policy` of `watch`/`serve`).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// The container ID (default: the bundle directory's name, as runtimes name bundles).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,

    /// The bundle directory as the runtime named it (default: the config's
    /// directory). Its path tells Docker's and containerd's bundles apart, as
    /// in the hook, e.g. `/run/containerd/io.containerd.runtime.v2.task/moby/<ID>`
    /// for a config saved from Docker (then Docker's records give the image).
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,

    /// The runtime, when the config and its bundle path do not say (docker, containerd, podman, crio, runc).
    #[arg(long, value_name = "NAME")]
    pub runtime: Option<String>,

    /// The image as named, when neither the annotations nor the runtime's records say.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,

    /// The pod namespace, when the annotations do not say.
    #[arg(long, value_name = "NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// A container label KEY=VALUE (repeatable), for label exemptions.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
}

/// Options of `ctwatch completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
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

/// How containers are enriched from their runtimes.
#[derive(Debug, Clone, Args)]
pub struct EnrichArgs {
    /// Do not ask the runtimes: events carry only what the cgroup says.
    #[arg(long)]
    pub no_enrich: bool,

    /// How long a container_create waits for the runtimes' answer before it
    /// goes out with what is known (`"enriched": false`).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub enrich_deadline: Duration,

    /// Requests in flight to one runtime daemon at most.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub enrich_concurrency: usize,

    /// Docker API socket (repeatable). Default: /var/run/docker.sock.
    #[arg(long, value_name = "PATH")]
    pub docker_socket: Vec<PathBuf>,

    /// Docker's data root, whose container records are read even while dockerd
    /// is down. Default: "data-root" in /etc/docker/daemon.json, else /var/lib/docker.
    #[arg(long, value_name = "DIR")]
    pub docker_data_root: Option<PathBuf>,

    /// Podman API socket (repeatable). Default: /run/podman/podman.sock.
    #[arg(long, value_name = "PATH")]
    pub podman_socket: Vec<PathBuf>,

    /// containerd API socket (repeatable). Default: those present of
    /// /run/containerd/containerd.sock, k3s's and microk8s's.
    #[arg(long, value_name = "PATH")]
    pub containerd_socket: Vec<PathBuf>,

    /// CRI socket (repeatable; a path with "crio" in it is CRI-O). Default:
    /// those present of containerd's, /run/crio/crio.sock, k3s's, microk8s's.
    #[arg(long, value_name = "PATH")]
    pub cri_socket: Vec<PathBuf>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// Aligned columns for people.
    Table,
}

/// How the agent reads the kernel (`watch` without an agent, and `serve`).
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// How long a removed container stays in the store for late lookups
    /// (for example `5s`, `500ms`, `1m`).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Where cgroup changes come from: `ebpf` (kernel tracepoints), `inotify`
    /// (cgroupfs watches), or `auto` (eBPF when the kernel and privileges
    /// allow it, else inotify; the log says which and why).
    #[arg(long, value_enum, default_value_t = SourceKind::Auto)]
    pub source: SourceKind,

    /// eBPF ring buffer size in bytes (a power of two, at least 4096; K and M
    /// suffixes allowed). Overflows are repaired by a rescan, and counted.
    #[arg(long, value_name = "BYTES", default_value = "4M", value_parser = parse_ring_size)]
    pub ring_buffer_size: u32,

    /// Directory on bpffs where the map of container cgroups is pinned for
    /// other eBPF programs (see the README for its layout).
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/ctwatch")]
    pub pin_path: PathBuf,

    /// Do not keep the pinned map of container cgroups.
    #[arg(long)]
    pub no_pin: bool,

    /// Leave the map pinned when ctwatch exits (a restart reuses it).
    #[arg(long)]
    pub keep_pinned: bool,

    /// How many cgroups the pinned map holds at most.
    #[arg(long, value_name = "N", default_value_t = 65536)]
    pub map_max_entries: u32,
}

/// Whether to ask a running `ctwatch serve`.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The agent's socket. When an agent answers there, the command shows the
    /// agent's view (and needs no root, only access to the socket).
    /// Default: /run/ctwatch/ctwatch.sock.
    #[arg(long, value_name = "PATH", env = "CTWATCH_SOCKET")]
    pub socket: Option<PathBuf>,

    /// Do the work in this process even if an agent is running.
    #[arg(long)]
    pub standalone: bool,

    /// The flags given on the command line that only work in this process
    /// (`--source`, `--no-enrich`, ...): a running agent ignores them, and
    /// says so. Filled in after parsing.
    #[arg(skip)]
    pub local_only_flags: Vec<String>,
}

/// How an agent's pipeline is set up (`watch` without an agent, and `serve`).
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Where to look for cgroups.
    #[command(flatten)]
    pub cgroups: CgroupArgs,

    /// Runtime enrichment.
    #[command(flatten)]
    pub enrich: EnrichArgs,

    /// The kernel source.
    #[command(flatten)]
    pub source: SourceArgs,

    /// The runtime hook.
    #[command(flatten)]
    pub hook: HookArgs,
}

/// The runtime hook: fanotify on runc/crun/conmon (`watch` without an agent, and `serve`).
#[derive(Debug, Clone, Args)]
pub struct HookArgs {
    /// Hold each exec of a runtime binary (runc, crun, conmon) until its OCI
    /// config is read, and report `container_precreate`: `auto` (when
    /// fanotify and a runtime binary are available; the log says why not),
    /// `on` (fail if it cannot start), `off`. `--source hook` implies `on`.
    #[arg(long, value_enum, default_value_t = HookMode::Auto)]
    pub hook: HookMode,

    /// A runtime binary to hook besides the usual install paths (repeatable).
    #[arg(long = "runtime-path", value_name = "PATH")]
    pub runtime_paths: Vec<PathBuf>,

    /// Hook only the --runtime-path binaries, not the usual install paths.
    #[arg(long, requires = "runtime_paths")]
    pub only_runtime_paths: bool,

    /// How long a runtime may wait for ctwatch's answer; then the default
    /// answer is given (allow, or deny with --fail-closed).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_hook_deadline)]
    pub hook_deadline: Duration,

    /// Refuse the exec when ctwatch cannot answer in time (for enforcing
    /// deployments; the default fails open).
    #[arg(long)]
    pub fail_closed: bool,

    /// An admission policy (TOML; see the README): rules on image, digest,
    /// runtime, pod namespace and annotations. `mode = "audit"` reports
    /// `container_policy_violation`; `mode = "enforce"` also refuses the create.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

/// Whether the runtime hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HookMode {
    /// When allowed.
    Auto,
    /// Always (fail if it cannot start).
    On,
    /// Never.
    Off,
}

/// Options of `ctwatch watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The agent run in this process when none answers on the socket.
    #[command(flatten)]
    pub pipeline: PipelineArgs,

    /// A running agent.
    #[command(flatten)]
    pub agent: AgentArgs,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Json)]
    pub format: Format,

    /// Do not print `existing_container` events for what runs at start.
    #[arg(long)]
    pub no_existing: bool,

    /// Show full container IDs, names and images in the table.
    #[arg(long)]
    pub no_trunc: bool,

    /// Only events that match (repeatable), like `docker events --filter`:
    /// the keys of `ls --filter` (`name=` a substring of the name, `image=`,
    /// `runtime=`, `pod=`, `namespace=`, `label=KEY[=VALUE]`) plus
    /// `event=container_create` (or `create`, ...). Filters with the same key
    /// are ORed, different keys ANDed, every `label=` required (as docker's).
    #[arg(long, short = 'f', value_name = "KEY=VALUE", value_parser = parse_watch_filter)]
    pub filter: Vec<(String, String)>,

    /// Replay from the agent's journal first (then go on live): the events after seq SEQ, or
    /// from a time (RFC 3339, e.g. 2026-12-01T10:00:00Z) or from DURATION ago (e.g. 10m).
    #[arg(long, value_name = "SEQ|RFC3339|DURATION", value_parser = parse_position)]
    pub since: Option<Position>,

    /// With --since: stop after the event with seq SEQ, or at the first event after the time.
    #[arg(long, value_name = "SEQ|RFC3339|DURATION", value_parser = parse_position, requires = "since")]
    pub until: Option<Position>,
}

/// A place in the journal: a seq or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A seq.
    Seq(u64),
    /// A time, ns since the Unix epoch.
    Time(i64),
}

/// `SEQ`, an RFC 3339 time, or a duration before now.
fn parse_position(s: &str) -> Result<Position, String> {
    if let Ok(seq) = s.parse::<u64>() {
        return Ok(Position::Seq(seq));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return t.timestamp_nanos_opt().map(Position::Time).ok_or_else(|| format!("{s}: out of range"));
    }
    match humantime::parse_duration(s) {
        Ok(d) => {
            let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
            Ok(Position::Time(now.saturating_sub(d.as_nanos().min(i64::MAX as u128) as i64)))
        }
        Err(_) => Err(format!("{s}: give a seq (1234), an RFC 3339 time (2026-12-01T10:00:00Z) or a duration (10m)")),
    }
}

/// Options of `ctwatch history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// A container ID, unique ID prefix or exact name (removed containers too).
    #[arg(value_name = "ID|NAME")]
    pub key: String,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Json)]
    pub format: Format,

    /// Show full container IDs, names and images in the table.
    #[arg(long)]
    pub no_trunc: bool,

    /// The agent's socket. Default: /run/ctwatch/ctwatch.sock.
    #[arg(long, value_name = "PATH", env = "CTWATCH_SOCKET")]
    pub socket: Option<PathBuf>,
}

/// Options of `ctwatch serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// What the agent watches and how.
    #[command(flatten)]
    pub pipeline: PipelineArgs,

    /// The unix socket to serve the API on (mode 0660).
    #[arg(long, value_name = "PATH", env = "CTWATCH_SOCKET", default_value = ctwatch_api::DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// The group that may use the socket (name or GID). Default: root's group only.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,

    /// Also serve the API on TCP at this address (for example 127.0.0.1:7850).
    /// It has no authentication: anyone who can reach it can list the host's
    /// containers, their images, labels and PIDs.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// Serve Prometheus metrics at http://ADDR/metrics (for example 127.0.0.1:9750).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Events a Watch client may fall behind before it is dropped (a client may ask for up to 65536).
    #[arg(long, value_name = "N", default_value_t = ctwatch_agent::DEFAULT_SUBSCRIBER_BUFFER)]
    pub client_buffer: usize,

    /// Bytes of queued events a Watch client may fall behind before it is dropped, whatever its buffer.
    #[arg(long, value_name = "BYTES", default_value_t = ctwatch_agent::MAX_SUBSCRIBER_BYTES)]
    pub client_buffer_bytes: usize,

    /// The journal's directory: every event is numbered (`seq`) and kept there, for
    /// `watch --since`, `history` and `ls --all`.
    #[arg(long, value_name = "DIR", env = "CTWATCH_JOURNAL", default_value = "/var/lib/ctwatch/journal")]
    pub journal: PathBuf,

    /// Keep no journal (events go out with no `seq`; no replay, history or `ls --all`).
    #[arg(long, conflicts_with = "journal")]
    pub no_journal: bool,

    /// Retention by size: the oldest events are dropped while the journal is larger.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    pub journal_max_bytes: u64,

    /// Retention by age: events older than this are dropped (0s: keep whatever their age).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    pub journal_max_age: Duration,

    /// Publishing to NATS JetStream (the cluster view).
    #[command(flatten)]
    pub nats: ServeNatsArgs,
}

/// Where `ctwatch serve` publishes its journal for the cluster view (NATS JetStream).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cluster (NATS JetStream)")]
pub struct ServeNatsArgs {
    /// Publish every journal event to NATS JetStream (stream CTWATCH_EVENTS) and
    /// keep the live containers in its key-value bucket ctwatch_containers, for
    /// `ctwatch cluster`. Repeatable, or comma-separated, for a NATS cluster.
    /// Needs the journal (it is the outbox: nothing is lost while NATS is down).
    #[arg(long, value_name = "URL", env = "CTWATCH_NATS_URL", value_delimiter = ',')]
    pub nats_url: Vec<String>,

    /// A NATS credentials file (`.creds`: user JWT and nkey seed, as `nsc` makes them).
    #[arg(long, value_name = "FILE", env = "CTWATCH_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// A file holding an nkey seed (`SU...`).
    #[arg(long, value_name = "FILE", env = "CTWATCH_NATS_NKEY")]
    pub nats_nkey: Option<PathBuf>,

    /// NATS user name; the password comes from --nats-password-file or the
    /// CTWATCH_NATS_PASSWORD variable (never the command line: other users see it).
    #[arg(long, value_name = "USER", env = "CTWATCH_NATS_USER")]
    pub nats_user: Option<String>,

    /// A file holding the NATS password (its first line).
    #[arg(long, value_name = "FILE", env = "CTWATCH_NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<PathBuf>,

    /// A CA certificate (PEM) to trust for the servers' TLS (implies TLS).
    #[arg(long, value_name = "FILE", env = "CTWATCH_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,

    /// This node's name in subjects, keys and `cluster ls`. Default: the host name.
    #[arg(long, value_name = "NAME", env = "CTWATCH_NODE_NAME")]
    pub node_name: Option<String>,

    /// How often the node's heartbeat is written; `cluster` shows a node as
    /// stale when its heartbeat is older than its --stale-after.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub nats_heartbeat_interval: Duration,

    /// The stream's retention by age (set when the agent creates or updates the stream).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    pub nats_stream_max_age: Duration,

    /// The stream's retention by size, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 10 << 30)]
    pub nats_stream_max_bytes: u64,

    /// Replicas of the stream and the bucket (3 in a NATS cluster of 3 or more).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,
}

/// Where `get` and `pid` find their answer: a running agent, else a scan here.
#[derive(Debug, Args)]
pub struct LookupArgs {
    /// Where to look for cgroups (without an agent).
    #[command(flatten)]
    pub cgroups: CgroupArgs,

    /// Runtime enrichment (without an agent).
    #[command(flatten)]
    pub enrich: EnrichArgs,

    /// A running agent.
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// Options of `ctwatch get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// A container ID, unique ID prefix or name; or `cgroup:<ID>`, `pid:<PID>`, `mntns:<inode>`.
    #[arg(value_name = "KEY")]
    pub key: String,

    /// Where the answer comes from.
    #[command(flatten)]
    pub from: LookupArgs,
}

/// Options of `ctwatch pid`.
#[derive(Debug, Args)]
pub struct PidArgs {
    /// A process ID, as the host sees it.
    #[arg(value_name = "PID")]
    pub pid: u32,

    /// Where the answer comes from.
    #[command(flatten)]
    pub from: LookupArgs,
}

/// Options of `ctwatch resolve`.
#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// The container: ID, unique prefix or name.
    #[arg(value_name = "CONTAINER")]
    pub container: String,

    /// The path as the container sees it.
    #[arg(value_name = "PATH")]
    pub path: String,

    /// Output format: the host path, a tab, then the file's device and inode
    /// (`<dev> <ino>`: what fstat of the path must give), or JSON with both
    /// paths, `dev` and `ino`.
    #[arg(long, short = 'o', value_enum)]
    pub format: Option<Format>,

    /// Where to look for cgroups (without an agent).
    #[command(flatten)]
    pub cgroups: CgroupArgs,

    /// Runtime enrichment (without an agent: to find a container by name).
    #[command(flatten)]
    pub enrich: EnrichArgs,

    /// A running agent.
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// Kernel sources `ctwatch watch` can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// eBPF when possible, else inotify.
    Auto,
    /// eBPF programs on the cgroup_mkdir/cgroup_rmdir tracepoints.
    Ebpf,
    /// inotify watches on cgroupfs.
    Inotify,
    /// No kernel source: the runtime hook alone, after a scan at start.
    Hook,
}

/// Options of `ctwatch ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Where to look for cgroups.
    #[command(flatten)]
    pub cgroups: CgroupArgs,

    /// Runtime enrichment.
    #[command(flatten)]
    pub enrich: EnrichArgs,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Show full container IDs, names and images in the table.
    #[arg(long)]
    pub no_trunc: bool,

    /// Print only container IDs.
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Also the removed containers the agent's journal still holds (state `removed`).
    #[arg(long, short = 'a')]
    pub all: bool,

    /// Only containers that match (repeatable): `name=` (a substring of the
    /// name, like docker), `image=`, `runtime=`, `pod=`, `namespace=`,
    /// `label=KEY` or `label=KEY=VALUE`; and by what the container may do
    /// (its `security` profile; a container without one matches none):
    /// `privileged=true|false`, `host_ns=pid` (any namespace type), `cap=SYS_ADMIN`,
    /// `run_as_root=true|false`, `seccomp=unconfined|runtime_default|custom`,
    /// `class=privileged|elevated|baseline|restricted`, `host_mount=PATH|sensitive`.
    /// Values of one key are ORed, different keys ANDed, every `label=`
    /// required (as docker's).
    #[arg(long, short = 'f', value_name = "KEY=VALUE", value_parser = parse_filter)]
    pub filter: Vec<(String, String)>,

    /// A running agent.
    #[command(flatten)]
    pub agent: AgentArgs,
}

pub(crate) fn parse_filter(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected KEY=VALUE (for example name=web)"))?;
    match k {
        "name" | "image" | "runtime" | "pod" | "namespace" | "label" => Ok((k.to_string(), v.to_string())),
        k if crate::filter::SECURITY_KEYS.contains(&k) => {
            crate::filter::check_security(k, v).map(|()| (k.to_string(), v.to_string()))
        }
        _ => Err(format!(
            "unknown filter {k:?} (name, image, runtime, pod, namespace, {}, label)",
            crate::filter::SECURITY_KEYS.join(", ")
        )),
    }
}

pub(crate) fn parse_watch_filter(s: &str) -> Result<(String, String), String> {
    if let Some(kind) = s.strip_prefix("event=") {
        return crate::filter::event_kind(kind).map(|k| ("event".to_string(), k.as_str().to_string()));
    }
    parse_filter(s).map_err(|e| e.replace("label)", "label, event)"))
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size (examples: 4M, 262144)"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        other => return Err(format!("unknown size unit {other:?} (use K or M)")),
    };
    let bytes = n.checked_mul(factor).filter(|b| *b <= 1 << 30).ok_or("at most 1G")?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err(format!("{bytes} bytes: must be a power of two of at least 4096"));
    }
    Ok(bytes as u32)
}

fn parse_hook_deadline(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(60) {
        return Err("the hook deadline must be between 10ms and 60s (a runtime waits this long at most)".into());
    }
    Ok(d)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 5s, 500ms, 1m)"))
}
