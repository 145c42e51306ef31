//! `ctwatch serve`: the agent, answering the API on a unix socket.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use ctwatch_api::metrics_endpoint::serve_metrics;
use ctwatch_api::server::{self, ContainersService, StandardServices, UnixSocket};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::cli::ServeArgs;
use crate::host;

/// How long health stays NOT_SERVING while the scan at start is not done.
const SCAN_WAIT: Duration = Duration::from_secs(60);

/// How long a stopping server waits for connected clients to go.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Runs `ctwatch serve` until SIGINT/SIGTERM or a source failure.
pub fn run(args: &ServeArgs) -> Result<()> {
    host::require_root()?;
    let gid = args.socket_group.as_deref().map(group_id).transpose()?;
    // The socket first: a second serve stops here, before touching the kernel.
    let mut socket = UnixSocket::bind(&args.socket, 0o660, gid)?;
    let (journal, journal_failed) = open_journal(args);
    let mut config = host::agent_config(&args.pipeline)?;
    config.journal = journal.clone();
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

/// Opens the journal (unless `--no-journal`). A journal that cannot be opened
/// is one log line (and a metric): the agent serves live events without seq.
/// Also says whether opening failed.
fn open_journal(args: &ServeArgs) -> (Option<std::sync::Arc<ctwatch_journal::Journal>>, bool) {
    if args.no_journal {
        return (None, false);
    }
    let options = ctwatch_journal::Options {
        max_bytes: args.journal_max_bytes,
        max_age: (!args.journal_max_age.is_zero()).then_some(args.journal_max_age),
        ..ctwatch_journal::Options::default()
    };
    match ctwatch_journal::Journal::open(&args.journal, options) {
        Ok(j) => (Some(std::sync::Arc::new(j)), false),
        Err(e) => {
            warn!("no journal: {e}; events go out live without seq (no replay, history or ls --all)");
            (None, true)
        }
    }
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
