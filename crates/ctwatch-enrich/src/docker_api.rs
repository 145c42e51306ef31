//! Docker Engine API enrichment (bollard), also used for Podman through its
//! Docker-compatible API service.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::ContainerState;
use bollard::{Docker, API_DEFAULT_VERSION};
use ctwatch::Runtime;
use tokio::sync::Mutex;

use crate::exit::{parse_runtime_time, ExitCache, ExitInfo};
use crate::health::DaemonHealth;
use crate::metadata::{clean, sha256_digest, Metadata, MAX_IMAGE, MAX_NAME};
use crate::EnrichError;

/// Seconds the event stream may stay open (a year: it is reopened if it ends).
const EVENTS_TIMEOUT_SECS: u64 = 365 * 24 * 3600;

/// Seconds bollard waits for one request.
const REQUEST_TIMEOUT_SECS: u64 = 10;

/// A Docker-API daemon (Docker, or Podman's API service) at one socket.
pub struct DockerApi {
    client: Mutex<Option<Docker>>,
    health: DaemonHealth,
    /// Image ID → digest: many containers share an image.
    digests: std::sync::Mutex<HashMap<String, String>>,
    /// Docker's data root, once known.
    data_root: tokio::sync::OnceCell<Option<PathBuf>>,
    /// Docker's data root as configured (read without the daemon).
    disk_root: Option<PathBuf>,
}

/// The parts of Docker's `config.v2.json` that enrichment reads.
#[derive(serde::Deserialize)]
struct DiskConfig {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Image", default)]
    image: String,
    #[serde(rename = "Config", default)]
    config: DiskContainerConfig,
}

#[derive(serde::Deserialize, Default)]
struct DiskContainerConfig {
    #[serde(rename = "Image", default)]
    image: String,
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

/// What Docker's `<root>/containers/<id>/config.v2.json` says about a
/// container (name, image as named, labels), and the image ID it runs.
/// Docker writes the file at `docker create`, before the container starts.
/// `None` for an ID that is not 64 hex digits, or a missing or bad file.
pub fn docker_record_on_disk(root: &Path, id: &str) -> Option<(Metadata, String)> {
    if !ctwatch::classify::is_hex_id(id) {
        return None;
    }
    let config: DiskConfig = crate::oci_state::read_json(&root.join("containers").join(id).join("config.v2.json"))?;
    let mut m = Metadata { runtime: Some(Runtime::Docker), ..Metadata::default() };
    m.name = clean(config.name.trim_start_matches('/'), MAX_NAME);
    m.image = clean(&config.config.image, MAX_IMAGE);
    if let Some(labels) = &config.config.labels {
        m.add_labels(labels);
    }
    Some((m, config.image))
}

/// Docker's daemon configuration file, where `data-root` may be set.
pub const DOCKER_DAEMON_JSON: &str = "/etc/docker/daemon.json";

/// Docker's data root when nothing says otherwise.
pub const DEFAULT_DOCKER_DATA_ROOT: &str = "/var/lib/docker";

/// Record files (such as `repositories.json`) larger than this are not read.
const MAX_RECORD_BYTES: u64 = ctwatch::untrusted::MAX_RUNTIME_FILE;

/// Docker's data root without asking the daemon: `flag` when given, else
/// `data-root` (or the older `graph`) in `daemon_json`, else
/// [`DEFAULT_DOCKER_DATA_ROOT`].
pub fn docker_data_root(flag: Option<&Path>, daemon_json: &Path) -> PathBuf {
    if let Some(root) = flag {
        return root.to_path_buf();
    }
    #[derive(serde::Deserialize)]
    struct DaemonJson {
        #[serde(rename = "data-root")]
        data_root: Option<String>,
        graph: Option<String>,
    }
    crate::oci_state::read_json_capped::<DaemonJson>(daemon_json, MAX_RECORD_BYTES)
        .and_then(|d| d.data_root.or(d.graph))
        .filter(|root| root.starts_with('/'))
        .map_or_else(|| PathBuf::from(DEFAULT_DOCKER_DATA_ROOT), PathBuf::from)
}

/// The repository digest (`sha256:...`) Docker recorded for an image ID in
/// `<root>/image/<driver>/repositories.json`, if the image was pulled.
pub fn docker_repo_digest_on_disk(root: &Path, image_id: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Repositories {
        #[serde(rename = "Repositories", default)]
        repositories: HashMap<String, HashMap<String, String>>,
    }
    if image_id.is_empty() {
        return None;
    }
    for driver in ["overlay2", "vfs", "btrfs", "zfs", "fuse-overlayfs"] {
        let path = root.join("image").join(driver).join("repositories.json");
        let Some(repos) = crate::oci_state::read_json_capped::<Repositories>(&path, MAX_RECORD_BYTES) else {
            continue;
        };
        return repos.repositories.values().flatten().find_map(|(reference, id)| {
            (id == image_id).then(|| reference.split_once('@').map(|(_, d)| clean(d, 128))).flatten()
        });
    }
    None
}

/// Image digests remembered at most (the cache is cleared when full).
const MAX_CACHED_DIGESTS: usize = 4096;

impl DockerApi {
    /// A daemon of `runtime` answering at `socket` (connected on first use).
    pub fn new(runtime: Runtime, socket: &Path) -> Self {
        DockerApi {
            client: Mutex::new(None),
            health: DaemonHealth::new(runtime, socket),
            digests: std::sync::Mutex::new(HashMap::new()),
            data_root: tokio::sync::OnceCell::new(),
            disk_root: None,
        }
    }

    /// Reads Docker's on-disk records under `root` even while the daemon is
    /// down (see [`DockerApi::on_disk`]).
    pub fn with_data_root(mut self, root: &Path) -> Self {
        self.disk_root = Some(root.to_path_buf());
        self
    }

    /// What Docker's on-disk records say of container `id` (name, image,
    /// labels, and the digest from its image store), read without the
    /// daemon, so containers are described while it is down; `None` for
    /// Podman, without a data root, or with no record.
    pub async fn on_disk(&self, id: &str) -> Option<Metadata> {
        if self.runtime() != Runtime::Docker {
            return None;
        }
        let root = self.disk_root.clone()?;
        let id = id.to_string();
        let (mut m, image_id, digest) = tokio::task::spawn_blocking(move || {
            let (m, image_id) = docker_record_on_disk(&root, &id)?;
            let digest = docker_repo_digest_on_disk(&root, &image_id);
            Some((m, image_id, digest))
        })
        .await
        .ok()??;
        // The daemon's answer, when it gave one for this image, wins (it matches the named repository).
        m.image_digest = self.cached_digest(&image_id).or(digest).unwrap_or_else(|| sha256_digest(&image_id));
        Some(m)
    }

    /// Which runtime this daemon is.
    pub fn runtime(&self) -> Runtime {
        self.health.runtime()
    }

    /// Where it answers.
    pub fn socket(&self) -> &Path {
        self.health.socket()
    }

    /// What the daemon says of container `id`; `Ok(None)` when it does not know it.
    pub async fn lookup(&self, id: &str) -> Result<Option<Metadata>, EnrichError> {
        let result = self.try_lookup(id).await;
        if self.health.record(&result) {
            *self.client.lock().await = None; // reconnect next time
        }
        result
    }

    async fn client(&self) -> Result<Docker, EnrichError> {
        let mut guard = self.client.lock().await;
        if let Some(client) = guard.as_ref() {
            return Ok(client.clone());
        }
        let socket = self.health.socket().to_string_lossy();
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
        if let Some(found) = self.read_config_on_disk(&client, id).await {
            return Ok(Some(found));
        }
        let inspect = match client.inspect_container(id, None).await {
            Ok(i) => i,
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => return Ok(None),
            Err(e) => return Err(self.unavailable(e)),
        };
        let mut m = Metadata { runtime: Some(self.runtime()), ..Metadata::default() };
        m.name = clean(inspect.name.as_deref().unwrap_or("").trim_start_matches('/'), MAX_NAME);
        let config = inspect.config.unwrap_or_default();
        m.image = clean(config.image.as_deref().unwrap_or(""), MAX_IMAGE);
        if let Some(labels) = &config.labels {
            m.add_labels(labels);
        }
        let image_id = inspect.image.unwrap_or_default();
        m.image_digest = self.cached_image_digest(&client, &image_id, &m.image).await;
        Ok(Some(m))
    }

    /// Docker writes `<root>/containers/<id>/config.v2.json` when the container
    /// is created, before it starts; `docker inspect` would wait for the
    /// container's lock, which `start` holds. Reading the file (size-capped,
    /// leniently) gives the same fields without that wait.
    async fn read_config_on_disk(&self, client: &Docker, id: &str) -> Option<Metadata> {
        if self.runtime() != Runtime::Docker {
            return None;
        }
        let root = self.data_root(client).await?;
        let id = id.to_string();
        let (mut m, image_id) = tokio::task::spawn_blocking(move || docker_record_on_disk(&root, &id)).await.ok()??;
        m.image_digest = self.cached_image_digest(client, &image_id, &m.image).await;
        Some(m)
    }

    /// Docker's data root (`docker info`'s DockerRootDir), asked once.
    async fn data_root(&self, client: &Docker) -> Option<PathBuf> {
        if let Some(root) = self.data_root.get() {
            return root.clone();
        }
        let info = tokio::time::timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS), client.info()).await.ok()?.ok()?;
        let root = info.docker_root_dir.map(PathBuf::from);
        let _ = self.data_root.set(root.clone());
        root
    }

    /// The image's digest if the daemon gave it before.
    fn cached_digest(&self, image_id: &str) -> Option<String> {
        self.digests.lock().unwrap_or_else(|e| e.into_inner()).get(image_id).cloned()
    }

    /// The image's digest, from the cache or the daemon (the one cache of digests).
    async fn cached_image_digest(&self, client: &Docker, image_id: &str, named: &str) -> String {
        if let Some(digest) = self.cached_digest(image_id) {
            return digest;
        }
        let digest = self.image_digest(client, image_id, named).await.unwrap_or_else(|| sha256_digest(image_id));
        let mut cache = self.digests.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED_DIGESTS {
            cache.clear();
        }
        cache.insert(image_id.to_string(), digest.clone());
        digest
    }

    /// The repo digest of the image (matching the repository the user named
    /// when there are several), or `None` when the image has none.
    async fn image_digest(&self, client: &Docker, image_id: &str, named: &str) -> Option<String> {
        if image_id.is_empty() {
            return None;
        }
        let image = tokio::time::timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS), client.inspect_image(image_id))
            .await
            .ok()?
            .ok()?;
        let digests = image.repo_digests.unwrap_or_default();
        let repo = named.rsplit_once('@').map_or(named, |(r, _)| r);
        let repo = repo.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')).map_or(repo, |(r, _)| r);
        let chosen = digests.iter().find(|d| d.starts_with(&format!("{repo}@"))).or(digests.first())?;
        Some(sha256_digest(chosen)).filter(|d| !d.is_empty())
    }

    /// How container `id` ended, from inspect (`State.ExitCode`, `OOMKilled`,
    /// `StartedAt`, `FinishedAt`): ask after its cgroup is removed. `Ok(None)`
    /// when the daemon no longer knows it (`--rm`: see [`DockerApi::follow_exits`]).
    /// A container still running (the daemon has not seen the exit yet) gives
    /// its start time only.
    pub async fn exit_info(&self, id: &str) -> Result<Option<ExitInfo>, EnrichError> {
        let client = self.client().await?;
        match client.inspect_container(id, None).await {
            Ok(inspect) => Ok(Some(exit_from_state(&inspect.state.unwrap_or_default()))),
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// Follows the daemon's events (`die`, `oom`) into `cache` until the
    /// stream ends or fails (call again to resume): the exit of a container
    /// removed at once (`--rm`) is known only from them. A `die` event says
    /// the exit number and when; `oom` says the OOM killer struck.
    pub async fn follow_exits(&self, cache: &ExitCache) -> Result<(), EnrichError> {
        use futures_util::StreamExt;
        // A client of its own: the shared one times requests out, and this one streams for as long as the daemon runs.
        let socket = self.health.socket().to_string_lossy();
        let client = Docker::connect_with_unix(&socket, EVENTS_TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(|e| self.unavailable(e))?;
        let negotiated =
            tokio::time::timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS), client.negotiate_version()).await;
        let client = match negotiated {
            Ok(result) => result.map_err(|e| self.unavailable(e))?,
            Err(_) => return Err(self.health.unavailable(&"no answer to the version request")),
        };
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["die".to_string(), "oom".to_string()]),
        ]);
        let options = bollard::query_parameters::EventsOptions { filters: Some(filters), ..Default::default() };
        let mut events = client.events(Some(options));
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| self.unavailable(e))?;
            let Some(actor) = event.actor else { continue };
            let Some(id) = actor.id.filter(|id| !id.is_empty()) else { continue };
            let attributes = actor.attributes.unwrap_or_default();
            let info = match event.action.as_deref() {
                Some("die") => {
                    let status = attributes.get("exitCode").and_then(|c| c.parse::<i64>().ok());
                    let mut info = status.map(ExitInfo::from_runtime_status).unwrap_or_default();
                    info.finished_at = event.time_nano.and_then(crate::exit::from_unix_nanos);
                    info
                }
                Some("oom") => ExitInfo { oom_killed: Some(true), ..ExitInfo::default() },
                _ => continue,
            };
            cache.record(&clean(&id, 128), info);
        }
        Ok(())
    }

    fn unavailable(&self, e: BollardError) -> EnrichError {
        self.health.unavailable(&e)
    }
}

/// How a container ended, from Docker's (or Podman's) inspect `State`:
/// exit fields only once it is no longer running.
pub fn exit_from_state(state: &ContainerState) -> ExitInfo {
    use bollard::models::ContainerStateStatusEnum as S;
    let ended = matches!(state.status, Some(S::EXITED | S::DEAD));
    let time = |t: &Option<String>| t.as_deref().and_then(parse_runtime_time);
    let mut info = ExitInfo { started_at: time(&state.started_at), ..ExitInfo::default() };
    if ended {
        info = ExitInfo {
            started_at: info.started_at,
            ..state.exit_code.map(ExitInfo::from_runtime_status).unwrap_or_default()
        };
        info.oom_killed = state.oom_killed;
        info.finished_at = time(&state.finished_at);
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_root_comes_from_the_flag_then_daemon_json_then_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("daemon.json");
        assert_eq!(docker_data_root(None, &json), Path::new(DEFAULT_DOCKER_DATA_ROOT), "no file");
        std::fs::write(&json, r#"{"live-restore": true, "data-root": "/srv/docker"}"#).unwrap();
        assert_eq!(docker_data_root(None, &json), Path::new("/srv/docker"));
        assert_eq!(docker_data_root(Some(Path::new("/flag")), &json), Path::new("/flag"));
        std::fs::write(&json, r#"{"graph": "/old/docker"}"#).unwrap();
        assert_eq!(docker_data_root(None, &json), Path::new("/old/docker"), "the older key");
        for bad in ["{", r#"{"data-root": "relative"}"#, r#"{"data-root": 7}"#] {
            std::fs::write(&json, bad).unwrap();
            assert_eq!(docker_data_root(None, &json), Path::new(DEFAULT_DOCKER_DATA_ROOT), "{bad}");
        }
    }

    #[test]
    fn exit_fields_come_only_from_an_ended_container() {
        use bollard::models::ContainerStateStatusEnum as S;
        let state = ContainerState {
            status: Some(S::EXITED),
            exit_code: Some(137),
            oom_killed: Some(true),
            started_at: Some("2026-12-01T00:00:00.5Z".into()),
            finished_at: Some("2026-12-01T00:00:01Z".into()),
            ..ContainerState::default()
        };
        let info = exit_from_state(&state);
        assert_eq!((info.exit_code, info.exit_signal, info.oom_killed), (None, Some(9), Some(true)));
        assert!(info.started_at.unwrap() < info.finished_at.unwrap());
        let running = ContainerState { status: Some(S::RUNNING), exit_code: Some(0), ..state.clone() };
        let info = exit_from_state(&running);
        assert_eq!((info.exit_code, info.oom_killed, info.finished_at), (None, None, None), "nothing invented");
        assert!(info.started_at.is_some());
        let never_started = ContainerState {
            status: Some(S::EXITED),
            exit_code: Some(0),
            started_at: Some("0001-01-01T00:00:00Z".into()),
            ..ContainerState::default()
        };
        assert_eq!(exit_from_state(&never_started).started_at, None);
    }

    #[test]
    fn repo_digests_come_from_repositories_json() {
        let dir = tempfile::tempdir().unwrap();
        let repos = dir.path().join("image/overlay2");
        std::fs::create_dir_all(&repos).unwrap();
        let digest = format!("sha256:{}", "b".repeat(64));
        let json =
            format!(r#"{{"Repositories":{{"nginx":{{"nginx:1":"sha256:aaa","nginx@{digest}":"sha256:aaa"}}}}}}"#);
        std::fs::write(repos.join("repositories.json"), json).unwrap();
        assert_eq!(docker_repo_digest_on_disk(dir.path(), "sha256:aaa"), Some(digest));
        assert_eq!(docker_repo_digest_on_disk(dir.path(), "sha256:ccc"), None);
        assert_eq!(docker_repo_digest_on_disk(dir.path(), ""), None);
    }
}
