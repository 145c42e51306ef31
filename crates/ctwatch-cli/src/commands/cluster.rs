//! `ctwatch cluster`: every node's containers and events, read from NATS
//! JetStream alone (what `ctwatch serve --nats-url` publishes; no agent needed here).

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use ctwatch::{Container, Runtime};
use ctwatch_nats::{
    Cluster, ClusterContainer, ClusterEvent, ClusterFilter, JsonPredicate, NatsOptions, NodeStatus, Since,
};
use futures_util::StreamExt;
use serde_json::Value;

use crate::cli::Format;
use crate::commands::NotFound;
use crate::filter::{event_kind, EventFilter};
use crate::output::cell;

/// Options of `ctwatch cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// How to reach NATS.
    #[command(flatten)]
    pub nats: NatsArgs,

    /// A node whose heartbeat is older than this is stale (its containers are
    /// shown as stale: the node may be gone).
    #[arg(long, global = true, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub stale_after: Duration,

    /// What to show.
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// Where NATS is and how to log in (as the `nats` CLI takes them).
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// A NATS server URL (repeatable, or comma-separated, for a cluster).
    #[arg(long, global = true, value_name = "URL", env = "CTWATCH_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: Vec<String>,

    /// A NATS credentials file (`.creds`: user JWT and nkey seed).
    #[arg(long, global = true, value_name = "FILE", env = "CTWATCH_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// A file holding an nkey seed.
    #[arg(long, global = true, value_name = "FILE", env = "CTWATCH_NATS_NKEY")]
    pub nats_nkey: Option<PathBuf>,

    /// NATS user name (with --nats-password or CTWATCH_NATS_PASSWORD).
    #[arg(long, global = true, value_name = "USER", env = "CTWATCH_NATS_USER")]
    pub nats_user: Option<String>,

    /// NATS password (prefer the CTWATCH_NATS_PASSWORD variable: arguments are visible to other users).
    #[arg(long, global = true, value_name = "PASSWORD", env = "CTWATCH_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,

    /// A CA certificate (PEM) to trust for the servers' TLS.
    #[arg(long, global = true, value_name = "FILE", env = "CTWATCH_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
}

impl NatsArgs {
    /// The library's options.
    pub fn options(&self, name: &str) -> NatsOptions {
        NatsOptions {
            urls: self.nats_url.clone(),
            creds_file: self.nats_creds.clone(),
            nkey_file: self.nats_nkey.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            name: Some(name.to_string()),
        }
    }
}

/// The `cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List every node's live containers (a NODE column; STATE stale when the node's heartbeat is old).
    #[command(visible_alias = "ps")]
    Ls(ClusterLsArgs),
    /// Show the containers with this ID, ID prefix or name, on any node, as JSON.
    Get(ClusterGetArgs),
    /// Stream every node's events from the stream: replayed from --since, then live.
    Watch(ClusterWatchArgs),
    /// List the nodes: last heartbeat, containers, publishing backlog.
    Nodes(ClusterNodesArgs),
}

/// Options of `ctwatch cluster ls`.
#[derive(Debug, Args)]
pub struct ClusterLsArgs {
    /// Only this node's containers.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,

    /// Only containers that match (repeatable), as `ctwatch ls --filter`.
    #[arg(long, short = 'f', value_name = "KEY=VALUE", value_parser = crate::cli::parse_filter)]
    pub filter: Vec<(String, String)>,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Show full container IDs, names and images in the table.
    #[arg(long)]
    pub no_trunc: bool,
}

/// Options of `ctwatch cluster get`.
#[derive(Debug, Args)]
pub struct ClusterGetArgs {
    /// A container ID, unique ID prefix or name.
    #[arg(value_name = "ID|NAME")]
    pub key: String,
}

/// Options of `ctwatch cluster watch`.
#[derive(Debug, Args)]
pub struct ClusterWatchArgs {
    /// Where to start: `all`, a stream sequence (events after it: the
    /// `stream_seq` of the last event seen), an RFC 3339 time or a duration
    /// back from now (`10m`). Default: only new events.
    #[arg(long, value_name = "SEQ|TIME|DURATION", value_parser = Since::parse)]
    pub since: Option<Since>,

    /// Only this node's events.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,

    /// Only events that match (repeatable), as `ctwatch watch --filter` (`event=create`, `name=`, ...).
    #[arg(long, short = 'f', value_name = "KEY=VALUE", value_parser = crate::cli::parse_watch_filter)]
    pub filter: Vec<(String, String)>,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Json)]
    pub format: Format,

    /// Show full container IDs and names in the table.
    #[arg(long)]
    pub no_trunc: bool,
}

/// Options of `ctwatch cluster nodes`.
#[derive(Debug, Args)]
pub struct ClusterNodesArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Runs `ctwatch cluster ...`.
pub fn run(args: &ClusterArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    runtime.block_on(async {
        let cluster = Cluster::connect(&args.nats.options("ctwatch cluster"), args.stale_after).await?;
        match &args.command {
            ClusterCommand::Ls(a) => ls(&cluster, a).await,
            ClusterCommand::Get(a) => get(&cluster, a).await,
            ClusterCommand::Watch(a) => watch(&cluster, a).await,
            ClusterCommand::Nodes(a) => nodes(&cluster, a).await,
        }
    })
}

/// A container as the CLI's filters see it, from a bucket record or an event's JSON (`args`).
fn container_from_json(v: &Value) -> Container {
    let o = v.get("args").unwrap_or(v);
    let s = |keys: &[&str]| keys.iter().find_map(|k| o.get(*k).and_then(Value::as_str)).unwrap_or_default().to_string();
    let runtime = Runtime::from_name(&s(&["runtime"])).unwrap_or(Runtime::Unknown);
    let mut c = Container::new(s(&["container_id"]), runtime);
    c.name = s(&["container_name"]);
    c.image = s(&["container_image"]);
    c.pod.name = s(&["k8s_pod_name", "pod_name"]);
    c.pod.namespace = s(&["k8s_pod_namespace", "pod_namespace"]);
    c.pod.uid = s(&["k8s_pod_id", "pod_uid"]);
    if let Some(labels) = o.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            c.labels.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
        }
    }
    c
}

fn container_filter(pairs: &[(String, String)]) -> Result<Option<JsonPredicate>> {
    if pairs.iter().all(|(k, _)| k == "event") {
        return Ok(None);
    }
    let containers: Vec<(String, String)> = pairs.iter().filter(|(k, _)| k != "event").cloned().collect();
    let filter = EventFilter::new(&containers)?;
    Ok(Some(std::sync::Arc::new(move |v: &Value| filter.matches_container(&container_from_json(v)))))
}

async fn ls(cluster: &Cluster, args: &ClusterLsArgs) -> Result<()> {
    let filter = ClusterFilter { node: args.node.clone(), kinds: vec![], predicate: container_filter(&args.filter)? };
    let containers = cluster.ls(&filter).await?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    match args.format {
        Format::Json => {
            for c in &containers {
                serde_json::to_writer(&mut out, &c.to_json())?;
                out.write_all(b"\n")?;
            }
        }
        Format::Table => write_table(&mut out, &containers, args.no_trunc)?,
    }
    out.flush().or_else(closed_output)
}

fn write_table(out: &mut impl Write, containers: &[ClusterContainer], no_trunc: bool) -> io::Result<()> {
    let w = |n: usize| if no_trunc { usize::MAX } else { n };
    let header = ["NODE", "CONTAINER ID", "RUNTIME", "NAME", "IMAGE", "POD", "STATE"];
    let rows: Vec<[String; 7]> = containers
        .iter()
        .map(|c| {
            let k = container_from_json(&c.record);
            let pod = match (k.pod.namespace.is_empty(), k.pod.name.is_empty()) {
                (false, false) => format!("{}/{}", k.pod.namespace, k.pod.name),
                _ => k.pod.name.clone(),
            };
            [
                cell(&c.node, w(24)),
                cell(&k.id, w(12)),
                k.runtime.as_str().to_string(),
                cell(&k.name, w(20)),
                cell(&k.image, w(24)),
                cell(&pod, w(24)),
                if c.stale { "stale" } else { "live" }.to_string(),
            ]
        })
        .collect();
    crate::output::print_rows(out, &header, rows)
}

async fn get(cluster: &Cluster, args: &ClusterGetArgs) -> Result<()> {
    let found = cluster.get(&args.key).await?;
    match found.as_slice() {
        [] => Err(NotFound(format!("no container {:?} on any node", args.key)).into()),
        [one] => {
            let mut out = io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &one.to_json())?;
            out.write_all(b"\n")?;
            Ok(())
        }
        many => {
            let names: Vec<String> = many.iter().map(|c| format!("{} on {}", cell(c.id(), 12), c.node)).collect();
            Err(anyhow!("{:?} matches {} containers: {}", args.key, many.len(), names.join(", ")))
        }
    }
}

async fn watch(cluster: &Cluster, args: &ClusterWatchArgs) -> Result<()> {
    let kinds = args
        .filter
        .iter()
        .filter(|(k, _)| k == "event")
        .map(|(_, v)| event_kind(v).map(|k| k.as_str().to_string()).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let filter = ClusterFilter { node: args.node.clone(), kinds, predicate: container_filter(&args.filter)? };
    let mut events = cluster.watch(args.since.unwrap_or(Since::New), filter).await?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut header_done = false;
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(event) = next else { break };
        let event = event?;
        let written = match args.format {
            Format::Json => serde_json::to_writer(&mut out, &event.to_json())
                .map_err(io::Error::from)
                .and_then(|()| out.write_all(b"\n")),
            Format::Table => write_event_row(&mut out, &event, &mut header_done, args.no_trunc),
        };
        let flushed = written.and_then(|()| out.flush());
        if let Err(e) = flushed {
            return closed_output(e);
        }
    }
    Ok(())
}

fn write_event_row(out: &mut impl Write, e: &ClusterEvent, header_done: &mut bool, no_trunc: bool) -> io::Result<()> {
    let (id_w, name_w) = if no_trunc { (64, usize::MAX) } else { (12, 20) };
    if !*header_done {
        *header_done = true;
        writeln!(
            out,
            "{:<10}  {:<24}  {:<26}  {:<18}  {:<id_w$}  NAME",
            "STREAM SEQ", "TIME", "NODE", "EVENT", "CONTAINER ID"
        )?;
    }
    let c = container_from_json(&e.payload);
    let time = chrono::DateTime::<chrono::Utc>::from(e.stored).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    writeln!(
        out,
        "{:<10}  {:<24}  {:<26}  {:<18}  {:<id_w$}  {}",
        e.stream_seq,
        time,
        cell(&e.node, 26),
        cell(&e.kind, 26),
        cell(&c.id, id_w),
        cell(&c.name, name_w)
    )
}

async fn nodes(cluster: &Cluster, args: &ClusterNodesArgs) -> Result<()> {
    let nodes = cluster.nodes().await?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    match args.format {
        Format::Json => {
            for n in &nodes {
                serde_json::to_writer(&mut out, &node_json(n))?;
                out.write_all(b"\n")?;
            }
        }
        Format::Table => {
            let header = ["NODE", "STATE", "LAST SEEN", "CONTAINERS", "ACKED SEQ", "BACKLOG", "VERSION"];
            let rows = nodes
                .iter()
                .map(|n| {
                    let hb = n.heartbeat.as_ref();
                    [
                        cell(&n.node, 40),
                        if n.stale { "stale" } else { "live" }.to_string(),
                        if n.age == Duration::MAX { "never".into() } else { format!("{}s ago", n.age.as_secs()) },
                        n.containers.to_string(),
                        hb.map_or("-".into(), |h| h.acked_seq.to_string()),
                        hb.map_or("-".into(), |h| h.last_seq.saturating_sub(h.acked_seq).to_string()),
                        hb.map_or("-".into(), |h| cell(&h.agent_version, 20)),
                    ]
                })
                .collect();
            crate::output::print_rows(&mut out, &header, rows)?;
        }
    }
    out.flush().or_else(closed_output)
}

fn node_json(n: &NodeStatus) -> Value {
    let mut v = serde_json::json!({
        "node": n.node,
        "stale": n.stale,
        "containers": n.containers,
        "age_ms": if n.age == Duration::MAX { Value::Null } else { (n.age.as_millis() as u64).into() },
    });
    if let Some(hb) = &n.heartbeat {
        v["heartbeat"] = serde_json::to_value(hb).unwrap_or(Value::Null);
    }
    v
}

fn closed_output(e: io::Error) -> Result<()> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e).context("cannot write to stdout")
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 1m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_events_filter_alike() {
        let record = serde_json::json!({"container_id": "abc", "container_name": "web-1", "runtime": "docker",
            "k8s_pod_namespace": "shop", "labels": {"tier": "web"}});
        let event = serde_json::json!({"event": "container_create", "args": {"container_id": "abc",
            "container_name": "web-1", "runtime": "docker", "pod_namespace": "shop", "labels": {"tier": "web"}}});
        let pairs = |l: &[(&str, &str)]| l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let yes = container_filter(&pairs(&[("name", "web"), ("label", "tier=web"), ("namespace", "shop")]))
            .unwrap()
            .unwrap();
        let no = container_filter(&pairs(&[("runtime", "podman")])).unwrap().unwrap();
        assert!(yes(&record) && yes(&event));
        assert!(!no(&record) && !no(&event));
        assert!(container_filter(&pairs(&[("event", "container_create")])).unwrap().is_none());
    }
}
