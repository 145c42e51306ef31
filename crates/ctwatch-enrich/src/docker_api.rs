//! Docker Engine API enrichment (bollard), also used for Podman through its
//! Docker-compatible API service.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::{Docker, API_DEFAULT_VERSION};
use ctwatch::Runtime;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::metadata::{clean, sha256_digest, Metadata, MAX_IMAGE, MAX_NAME};
use crate::EnrichError;

/// Seconds bollard waits for one request.
const REQUEST_TIMEOUT_SECS: u64 = 10;

/// A Docker-API daemon (Docker, or Podman's API service) at one socket.
pub struct DockerApi {
    runtime: Runtime,
    socket: PathBuf,
    client: Mutex<Option<Docker>>,
    down: AtomicBool,
    /// Image ID → digest: many containers share an image.
    digests: std::sync::Mutex<HashMap<String, String>>,
}

/// Image digests remembered at most (the cache is cleared when full).
const MAX_CACHED_DIGESTS: usize = 4096;

impl DockerApi {
    /// A daemon of `runtime` answering at `socket` (connected on first use).
    pub fn new(runtime: Runtime, socket: &Path) -> Self {
        DockerApi {
            runtime,
            socket: socket.to_path_buf(),
            client: Mutex::new(None),
            down: AtomicBool::new(false),
            digests: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Which runtime this daemon is.
    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// Where it answers.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What the daemon says of container `id`; `Ok(None)` when it does not know it.
    pub async fn lookup(&self, id: &str) -> Result<Option<Metadata>, EnrichError> {
        let result = self.try_lookup(id).await;
        match &result {
            Err(e) => {
                *self.client.lock().await = None; // reconnect next time
                if !self.down.swap(true, Ordering::Relaxed) {
                    warn!(runtime = %self.runtime, socket = %self.socket.display(), "not answering: {e}; retrying in the background");
                }
            }
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    info!(runtime = %self.runtime, socket = %self.socket.display(), "answering again");
                }
            }
        }
        result
    }

    async fn client(&self) -> Result<Docker, EnrichError> {
        let mut guard = self.client.lock().await;
        if let Some(client) = guard.as_ref() {
            return Ok(client.clone());
        }
        let socket = self.socket.to_string_lossy();
        let client = Docker::connect_with_unix(&socket, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(|e| self.unavailable(e))?
            .negotiate_version()
            .await
            .map_err(|e| self.unavailable(e))?;
        *guard = Some(client.clone());
        Ok(client)
    }

    async fn try_lookup(&self, id: &str) -> Result<Option<Metadata>, EnrichError> {
        let client = self.client().await?;
        let inspect = match client.inspect_container(id, None).await {
            Ok(i) => i,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(self.unavailable(e)),
        };
        let mut m = Metadata {
            runtime: Some(self.runtime),
            ..Metadata::default()
        };
        m.name = clean(
            inspect
                .name
                .as_deref()
                .unwrap_or("")
                .trim_start_matches('/'),
            MAX_NAME,
        );
        let config = inspect.config.unwrap_or_default();
        m.image = clean(config.image.as_deref().unwrap_or(""), MAX_IMAGE);
        if let Some(labels) = &config.labels {
            m.add_kubelet_labels(labels);
        }
        let image_id = inspect.image.unwrap_or_default();
        let cached = self
            .digests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&image_id)
            .cloned();
        m.image_digest = match cached {
            Some(digest) => digest,
            None => {
                let digest = self
                    .image_digest(&client, &image_id, &m.image)
                    .await
                    .unwrap_or_else(|| sha256_digest(&image_id));
                let mut cache = self.digests.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= MAX_CACHED_DIGESTS {
                    cache.clear();
                }
                cache.insert(image_id, digest.clone());
                digest
            }
        };
        Ok(Some(m))
    }

    /// The repo digest of the image (matching the repository the user named
    /// when there are several), or `None` when the image has none.
    async fn image_digest(&self, client: &Docker, image_id: &str, named: &str) -> Option<String> {
        if image_id.is_empty() {
            return None;
        }
        let image = tokio::time::timeout(
            Duration::from_secs(REQUEST_TIMEOUT_SECS),
            client.inspect_image(image_id),
        )
        .await
        .ok()?
        .ok()?;
        let digests = image.repo_digests.unwrap_or_default();
        let repo = named.rsplit_once('@').map_or(named, |(r, _)| r);
        let repo = repo
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .map_or(repo, |(r, _)| r);
        let chosen = digests
            .iter()
            .find(|d| d.starts_with(&format!("{repo}@")))
            .or(digests.first())?;
        Some(sha256_digest(chosen)).filter(|d| !d.is_empty())
    }

    fn unavailable(&self, e: BollardError) -> EnrichError {
        EnrichError::Unavailable {
            runtime: self.runtime,
            socket: self.socket.clone(),
            reason: e.to_string(),
        }
    }
}
