//! `ctwatch serve`: the agent, answering the API on a unix socket.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use ctwatch_api::metrics_endpoint::serve_metrics;
use ctwatch_api::server::{self, ContainersService, StandardServices, UnixSocket};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::cli::{ServeArgs, ServeNatsArgs};
use crate::host;

/// How long health stays NOT_SERVING while the scan at start is not done.
const SCAN_WAIT: Duration = Duration::from_secs(60);

/// How long a stopping server waits for connected clients to go.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Runs `ctwatch serve` until SIGINT/SIGTERM or a source failure.
pub fn run(args: &ServeArgs) -> Result<()> {
    let nats = nats_config(&args.nats)?;
    if nats.is_some() && args.no_journal {
        bail!("--nats-url needs the journal (it is the outbox: nothing is lost while NATS is down): drop --no-journal");
    }
    host::require_root()?;
    let gid = args.socket_group.as_deref().map(group_id).transpose()?;
    // The socket first: a second serve stops here, before touching the kernel.
    let mut socket = UnixSocket::bind(&args.socket, 0o660, gid)?;
    let mut journal_failed = false;
    let journal = match open_journal(args) {
        Ok(j) => j,
        Err(e) if nats.is_some() => bail!("--nats-url needs the journal, which cannot be opened: {e}"),
        Err(e) => {
            warn!("no journal: {e}; events go out live without seq (no replay, history or ls --all)");
            journal_failed = true;
            None
        }
    };
    let mut config = host::agent_config(&args.pipeline)?;
    config.journal = journal.clone();
    if let Some(nats) = &nats {
        info!(node = nats.node, urls = nats.nats.urls.join(","), "publishing the journal to NATS JetStream");
    }
    config.nats = nats;
    let agent = host::start_agent(config)?;
    let data_source = agent.data_source();
    if journal_failed {
        data_source.metrics().journal_open_failed();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("api")
        .enable_all()
        .build()
        .context("cannot start the API runtime")?;
    let stop_flag = agent.stop_flag();
    let served = runtime.block_on(async {
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let agent_stopped = stop_flag.clone();
        let shutdown = async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = sigterm.recv() => { info!("SIGTERM: stopping"); break }
                    _ = sigint.recv() => { info!("SIGINT: stopping"); break }
                    _ = tick.tick() => if agent_stopped.load(std::sync::atomic::Ordering::Relaxed) { break },
                }
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let agent_stop = stop_flag.clone();
        let shutdown = async move {
            shutdown.await;
            // Stop the agent first: its hub closes, so every Watch stream ends
            // and the server's graceful shutdown has nothing to wait for.
            agent_stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = stop_tx.send(true);
        };
        let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Some(addr) = args.metrics_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-addr {addr}: cannot listen"))?;
            tokio::spawn(serve_metrics(listener, data_source.metrics().clone(), wait_stop(stop_rx.clone())));
        }
        let tcp = match args.listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--listen {addr}: cannot listen"))?,
            ),
            None => None,
        };
        tokio::spawn(shutdown);
        // systemd (Type=notify): READY=1 once the socket answers SERVING.
        tokio::spawn(crate::service_manager::notify_service_manager(args.socket.clone(), stop_rx.clone()));
        let service =
            ContainersService::new(data_source.clone(), args.client_buffer).with_client_bytes(args.client_buffer_bytes);
        let standard = StandardServices::new().await?;
        // Health says NOT_SERVING until the scan at start is done; requests
        // made before then wait for it.
        let readiness = standard.readiness();
        let scanned = data_source.clone();
        tokio::spawn(async move {
            let done = tokio::task::spawn_blocking(move || scanned.wait_scanned(SCAN_WAIT)).await.unwrap_or(false);
            if !done {
                warn!("the scan at start is not done after {SCAN_WAIT:?}; answering anyway");
            }
            readiness.set_serving().await;
            info!("ready: the scan at start is done");
        });
        let stopping = wait_stop(stop_rx.clone());
        tokio::select! {
            served = server::serve(service, standard, &mut socket, tcp, wait_stop(stop_rx)) => served?,
            // Clients that keep idle connections open do not hold the shutdown up.
            _ = async { stopping.await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                warn!("clients still connected after {SHUTDOWN_GRACE:?}; closing anyway");
            }
        }
        anyhow::Ok(())
    });
    agent.stop();
    let stopped = agent.join();
    if let Some(journal) = &journal {
        journal.close(); // writes and syncs what is pending
    }
    drop(socket); // removes the socket and its lock file
    runtime.shutdown_timeout(Duration::from_secs(1));
    served?;
    stopped?;
    info!("stopped");
    Ok(())
}

/// Opens the journal (unless `--no-journal`: then `None`). A journal that
/// cannot be opened is an error the caller reports (one log line and a
/// metric; the agent then serves live events without seq).
fn open_journal(args: &ServeArgs) -> Result<Option<std::sync::Arc<ctwatch_journal::Journal>>, String> {
    if args.no_journal {
        return Ok(None);
    }
    let options = ctwatch_journal::Options {
        max_bytes: args.journal_max_bytes,
        max_age: (!args.journal_max_age.is_zero()).then_some(args.journal_max_age),
        ..ctwatch_journal::Options::default()
    };
    match ctwatch_journal::Journal::open(&args.journal, options) {
        Ok(j) => Ok(Some(std::sync::Arc::new(j))),
        Err(e) => Err(e.to_string()),
    }
}

/// The NATS sink's configuration from the flags (`None` without `--nats-url`).
/// Files named are checked now, so a typo is an error at start rather than a
/// sink that retries for ever.
fn nats_config(args: &ServeNatsArgs) -> Result<Option<ctwatch_nats::SinkConfig>> {
    let urls: Vec<String> = args.nats_url.iter().map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect();
    if urls.is_empty() {
        let given = [
            ("--nats-creds", args.nats_creds.is_some()),
            ("--nats-nkey", args.nats_nkey.is_some()),
            ("--nats-user", args.nats_user.is_some()),
            ("--nats-password-file", args.nats_password_file.is_some()),
            ("--nats-tls-ca", args.nats_tls_ca.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            bail!("{flag} is for the NATS sink: give --nats-url too");
        }
        return Ok(None);
    }
    for (flag, path) in [
        ("--nats-creds", &args.nats_creds),
        ("--nats-nkey", &args.nats_nkey),
        ("--nats-password-file", &args.nats_password_file),
        ("--nats-tls-ca", &args.nats_tls_ca),
    ] {
        if let Some(path) = path {
            std::fs::File::open(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))?;
        }
    }
    let password = match &args.nats_password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--nats-password-file {}: cannot read it", path.display()))?;
            Some(text.lines().next().unwrap_or_default().to_string())
        }
        None => std::env::var("CTWATCH_NATS_PASSWORD").ok().filter(|p| !p.is_empty()),
    };
    if password.is_some() != args.nats_user.is_some() {
        bail!("--nats-user and a password (--nats-password-file or CTWATCH_NATS_PASSWORD) go together");
    }
    let node = match &args.node_name {
        Some(n) => n.clone(),
        None => host_name().context("cannot read the host name: give --node-name")?,
    };
    if node.is_empty() {
        bail!("--node-name: empty");
    }
    ctwatch_nats::names::node_token(&node).map_err(|e| anyhow::anyhow!("--node-name: {e}"))?;
    let options = ctwatch_nats::NatsOptions {
        urls,
        creds_file: args.nats_creds.clone(),
        nkey_file: args.nats_nkey.clone(),
        user: args.nats_user.clone(),
        password,
        tls_ca: args.nats_tls_ca.clone(),
        name: Some(format!("ctwatch serve on {node}")),
    };
    options.check_urls().map_err(|e| anyhow::anyhow!("--nats-url: {e}"))?;
    let mut config = ctwatch_nats::SinkConfig::new(node, options);
    config.heartbeat_interval = args.nats_heartbeat_interval.max(Duration::from_millis(100));
    config.limits.max_age = args.nats_stream_max_age;
    config.limits.max_bytes = args.nats_stream_max_bytes.min(i64::MAX as u64) as i64;
    config.limits.replicas = usize::from(args.nats_replicas);
    config.agent_version = env!("CARGO_PKG_VERSION").to_string();
    Ok(Some(config))
}

/// The host name, as the kernel has it.
fn host_name() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(name.trim().to_string())
}

/// A group name or number as a GID.
fn group_id(group: &str) -> Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => bail!("--socket-group {group:?}: no such group (create it with: groupadd {group})"),
        Err(e) => bail!("--socket-group {group:?}: cannot read the group database: {e}"),
    }
}
