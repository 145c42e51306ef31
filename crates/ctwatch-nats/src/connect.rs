//! Connecting to NATS: URLs, credentials and TLS as NATS users expect them.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, ServerAddr};

use crate::error::{one_line, NatsError};

/// How to reach NATS.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Server URLs (`nats://host:4222`, `tls://host:4222`; several for a cluster).
    pub urls: Vec<String>,
    /// A `.creds` file (user JWT and nkey seed), as `nats` and `nsc` make them.
    pub creds_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU...`).
    pub nkey_file: Option<PathBuf>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`).
    pub password: Option<String>,
    /// A CA certificate (PEM) to trust for the servers' TLS; implies TLS.
    pub tls_ca: Option<PathBuf>,
    /// The connection's name as the server shows it.
    pub name: Option<String>,
}

impl NatsOptions {
    /// Options for `urls` with no credentials.
    pub fn new(urls: impl IntoIterator<Item = impl Into<String>>) -> NatsOptions {
        NatsOptions { urls: urls.into_iter().map(Into::into).collect(), ..NatsOptions::default() }
    }

    /// Checks the URLs parse (no connection is made).
    pub fn check_urls(&self) -> Result<(), NatsError> {
        self.addrs().map(|_| ())
    }

    fn addrs(&self) -> Result<Vec<ServerAddr>, NatsError> {
        if self.urls.is_empty() {
            return Err(NatsError::Options("no NATS URL given (--nats-url nats://HOST:4222)".into()));
        }
        self.urls
            .iter()
            .flat_map(|u| u.split(','))
            .map(|u| u.trim().parse::<ServerAddr>().map_err(|e| NatsError::Options(format!("bad NATS URL {u:?}: {e}"))))
            .collect()
    }

    async fn options(&self) -> Result<ConnectOptions, NatsError> {
        let mut o = match &self.creds_file {
            Some(path) => ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|e| NatsError::Options(format!("creds file {}: {e}", path.display())))?,
            None => ConnectOptions::new(),
        };
        if let Some(path) = &self.nkey_file {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| NatsError::Options(format!("nkey file {}: {e}", path.display())))?;
            let seed = seed.lines().map(str::trim).find(|l| l.starts_with('S')).ok_or_else(|| {
                NatsError::Options(format!("nkey file {}: no seed (a line starting with S)", path.display()))
            })?;
            o = o.nkey(seed.to_string());
        }
        match (&self.user, &self.password) {
            (Some(u), Some(p)) => o = o.user_and_password(u.clone(), p.clone()),
            (None, None) => {}
            _ => return Err(NatsError::Options("--nats-user and --nats-password go together".into())),
        }
        if let Some(ca) = &self.tls_ca {
            if !ca.is_file() {
                return Err(NatsError::Options(format!("TLS CA {}: no such file", ca.display())));
            }
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some(name) = &self.name {
            o = o.name(name);
        }
        Ok(o.connection_timeout(Duration::from_secs(5)))
    }

    /// A client for reading (the cluster view): it reconnects by itself.
    pub async fn connect(&self) -> Result<Client, NatsError> {
        let addrs = self.addrs()?;
        let options = self.options().await?;
        options.connect(addrs).await.map_err(|e| self.connect_error(e))
    }

    /// A client for the sink: one session of connections. It tries each
    /// server once when the connection breaks and then gives up, so that
    /// messages queued in a broken session are never sent after the sink has
    /// started re-sending from its acked cursor (that could reorder them).
    pub(crate) async fn connect_session(&self, events: tokio::sync::mpsc::Sender<()>) -> Result<Client, NatsError> {
        let addrs = self.addrs()?;
        let n = addrs.len();
        let options =
            self.options().await?.max_reconnects(Some(n)).reconnect_delay_callback(|_| Duration::ZERO).event_callback(
                move |event| {
                    let events = events.clone();
                    async move {
                        if matches!(event, async_nats::Event::Disconnected | async_nats::Event::ClientError(_)) {
                            let _ = events.try_send(());
                        }
                    }
                },
            );
        options.connect(addrs).await.map_err(|e| self.connect_error(e))
    }

    fn connect_error(&self, e: async_nats::ConnectError) -> NatsError {
        use std::error::Error;
        let mut message = e.to_string();
        if let Some(source) = e.source().map(|s| s.to_string()).filter(|s| !message.contains(s.as_str())) {
            message = format!("{message}: {source}");
        }
        NatsError::Connect { urls: self.urls.join(","), message: one_line(&message) }
    }
}
