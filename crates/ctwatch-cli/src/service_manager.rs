//! systemd's notify protocol for `ctwatch serve` (`Type=notify`): `READY=1`
//! once the API socket answers SERVING (after the scan at start), `WATCHDOG=1` while it keeps answering (when `WatchdogSec=` is set),
//! `STOPPING=1` when it stops. Without `NOTIFY_SOCKET` nothing is sent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How often readiness is checked until the socket answers.
const READY_POLL: Duration = Duration::from_millis(50);

/// Tells the service manager about the agent's life, until `stop` turns true.
///
/// Spawn it next to the API server: it asks the agent's own socket through
/// the standard health service (`grpc.health.v1.Health/Check`, overall
/// status), so `READY=1` means the scan at start is done and a client gets
/// answers, not only that the socket file exists.
pub async fn notify_service_manager(socket: PathBuf, mut stop: watch::Receiver<bool>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let ready = async {
        while !answers(&socket, Duration::from_secs(1)).await {
            tokio::time::sleep(READY_POLL).await;
        }
    };
    tokio::select! {
        _ = ready => {}
        _ = stopped(&mut stop) => {
            send(&[NotifyState::Stopping]);
            return;
        }
    }
    if send(&[NotifyState::Ready, NotifyState::Status("serving")]) {
        info!("told the service manager: ready");
    }
    // WatchdogSec=: keep-alives at half the interval, each one only after the
    // socket answered again (a wedged API gets the agent restarted).
    if let Some(every) = sd_notify::watchdog_enabled() {
        let limit = every / 4;
        let mut tick = tokio::time::interval(every / 2);
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = tick.tick() => {
                    if answers(&socket, limit).await {
                        let _ = send(&[NotifyState::Watchdog]);
                    } else {
                        warn!("the API socket did not answer within {limit:?}: no watchdog keep-alive");
                    }
                }
            }
        }
    } else {
        stopped(&mut stop).await;
    }
    send(&[NotifyState::Stopping]);
}

/// Returns once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sends `states`; a failure is logged, never fatal. True when sent.
fn send(states: &[NotifyState]) -> bool {
    match sd_notify::notify(states) {
        Ok(()) => true,
        Err(e) => {
            warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
            false
        }
    }
}

/// Whether the agent on `socket` answers a health check within `limit`.
async fn answers(socket: &Path, limit: Duration) -> bool {
    match tokio::time::timeout(limit, check(socket)).await {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => {
            debug!("health check: {e}");
            false
        }
        Err(_) => false,
    }
}

/// One `grpc.health.v1.Health/Check` of the whole server over the unix socket:
/// true once it says SERVING (the scan at start is done).
async fn check(socket: &Path) -> Result<bool, ctwatch_api::client::HealthError> {
    Ok(ctwatch_api::client::health(socket, "").await? == ctwatch_api::client::ServingStatus::Serving)
}
