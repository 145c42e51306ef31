//! The enrichment engine: asks the runtimes about each new container off the
//! event path, with a concurrency limit per runtime, and hands the answers
//! back on a channel. A slow or hung daemon only delays its own containers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use ctwatch::state_dirs::HostStateDirs;
use ctwatch::{Container, Runtime};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::docker_api::DockerApi;
use crate::metadata::Metadata;
use crate::oci_state::OciState;

/// Where Docker's API usually answers.
pub const DEFAULT_DOCKER_SOCKETS: &[&str] = &["/var/run/docker.sock"];
/// Where Podman's API service usually answers (root, then the rootless default).
pub const DEFAULT_PODMAN_SOCKETS: &[&str] = &["/run/podman/podman.sock"];

/// How enrichment is set up.
#[derive(Debug, Clone)]
pub struct EnrichConfig {
    /// How long a `container_create` waits for enrichment.
    pub deadline: Duration,
    /// Requests in flight to one daemon at most.
    pub concurrency_per_daemon: usize,
    /// Docker API sockets.
    pub docker_sockets: Vec<PathBuf>,
    /// Podman API sockets.
    pub podman_sockets: Vec<PathBuf>,
    /// The runtimes' state directories (daemon-free enrichment).
    pub state_dirs: HostStateDirs,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig {
            deadline: Duration::from_secs(2),
            concurrency_per_daemon: 8,
            docker_sockets: DEFAULT_DOCKER_SOCKETS.iter().map(PathBuf::from).collect(),
            podman_sockets: DEFAULT_PODMAN_SOCKETS.iter().map(PathBuf::from).collect(),
            state_dirs: HostStateDirs::default(),
        }
    }
}

/// The answer about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrichResult {
    /// The container.
    pub container_id: String,
    /// Its root cgroup ID (tells incarnations of a reused ID apart).
    pub cgroup_id: u64,
    /// What was learned.
    pub metadata: Metadata,
    /// True when every source asked answered (found or not found); false when
    /// one was down or too slow.
    pub complete: bool,
}

struct Daemon {
    api: DockerApi,
    permits: Semaphore,
}

struct Shared {
    daemons: Vec<Daemon>,
    oci: OciState,
    results: Sender<EnrichResult>,
    /// How long one daemon request may take before it counts as failed.
    request_deadline: Duration,
}

/// Runs enrichment on its own small tokio runtime.
pub struct Enrichment {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
}

impl Enrichment {
    /// Starts the engine; answers go to `results`.
    pub fn start(config: EnrichConfig, results: Sender<EnrichResult>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("enrich")
            .enable_all()
            .build()?;
        let mut daemons = Vec::new();
        let sockets = config
            .docker_sockets
            .iter()
            .map(|s| (Runtime::Docker, s))
            .chain(config.podman_sockets.iter().map(|s| (Runtime::Podman, s)));
        for (kind, socket) in sockets {
            if daemons
                .iter()
                .any(|d: &Daemon| same_socket(d.api.socket(), socket))
            {
                continue;
            }
            let present = socket.exists();
            debug!(runtime = %kind, socket = %socket.display(), present, "enrichment from the runtime API");
            daemons.push(Daemon {
                api: DockerApi::new(kind, socket),
                permits: Semaphore::new(config.concurrency_per_daemon.max(1)),
            });
        }
        let shared = Arc::new(Shared {
            daemons,
            oci: OciState::new(config.state_dirs),
            results,
            request_deadline: config.deadline,
        });
        Ok(Enrichment { runtime, shared })
    }

    /// Asks about `container` in the background.
    pub fn submit(&self, container: &Container) {
        let shared = self.shared.clone();
        let (id, runtime, cgroup_id) =
            (container.id.clone(), container.runtime, container.cgroup_id);
        let namespace = containerd_namespace(&container.cgroup_path, &container.id);
        self.runtime.spawn(async move {
            let result = enrich_one(&shared, id, runtime, cgroup_id, namespace).await;
            let _ = shared.results.send(result);
        });
    }
}

async fn enrich_one(
    shared: &Arc<Shared>,
    id: String,
    runtime: Runtime,
    cgroup_id: u64,
    namespace: Option<String>,
) -> EnrichResult {
    let from_bundle = {
        let (oci, id, wait) = (
            shared.oci.clone(),
            id.clone(),
            shared.request_deadline.mul_f32(0.9),
        );
        tokio::task::spawn_blocking(move || oci.lookup(runtime, &id, namespace.as_deref(), wait))
            .await
            .ok()
            .flatten()
    };
    let mut metadata = from_bundle.unwrap_or_default();
    let mut complete = true;
    let asked = shared
        .daemons
        .iter()
        .filter(|d| runtime == Runtime::Unknown || d.api.runtime() == runtime);
    for daemon in asked {
        let Ok(_permit) = daemon.permits.acquire().await else {
            continue;
        };
        match tokio::time::timeout(shared.request_deadline, daemon.api.lookup(&id)).await {
            Ok(Ok(Some(found))) => {
                metadata.merge(found);
                complete = true;
                break;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                debug!(%id, "enrichment failed: {e}");
                complete = false;
            }
            Err(_) => {
                debug!(%id, runtime = %daemon.api.runtime(), "enrichment request timed out");
                complete = false;
            }
        }
    }
    EnrichResult {
        container_id: id,
        cgroup_id,
        metadata,
        complete,
    }
}

/// The containerd namespace in a `/<namespace>/<id>` cgroup path.
fn containerd_namespace(cgroup_path: &str, id: &str) -> Option<String> {
    let parent = cgroup_path.strip_suffix(id)?.trim_end_matches('/');
    let ns = parent.rsplit('/').next()?;
    (!ns.is_empty()).then(|| ns.to_string())
}

fn same_socket(a: &Path, b: &Path) -> bool {
    a == b || (a.canonicalize().ok().is_some() && a.canonicalize().ok() == b.canonicalize().ok())
}
