//! The enrichment engine: asks the runtimes about each new container off the
//! event path, with a concurrency limit per runtime, and hands the answers
//! back on a channel. A slow or hung daemon only delays its own containers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use ctwatch::state_dirs::HostStateDirs;
use ctwatch::{Container, Runtime};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::containerd_api::ContainerdApi;
use crate::cri_api::CriApi;
use crate::docker_api::{docker_data_root, DockerApi, DOCKER_DAEMON_JSON};
use crate::exit::{ExitCache, ExitInfo};
use crate::metadata::Metadata;
use crate::oci_state::OciState;
use crate::EnrichError;

/// First wait before asking a daemon that did not answer again.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest wait between two asks.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How long to keep asking about one container.
const RETRY_FOR: Duration = Duration::from_secs(300);

/// Where Docker's API usually answers.
pub const DEFAULT_DOCKER_SOCKETS: &[&str] = &["/var/run/docker.sock"];
/// Where containerd usually answers (plain, k3s, microk8s); its CRI plugin answers there too.
pub const DEFAULT_CONTAINERD_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/k3s/containerd/containerd.sock",
    "/var/snap/microk8s/common/run/containerd.sock",
];
/// Where CRI services usually answer: containerd's (above) and CRI-O's.
pub const DEFAULT_CRI_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/run/k3s/containerd/containerd.sock",
    "/var/snap/microk8s/common/run/containerd.sock",
];
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
    /// containerd API sockets.
    pub containerd_sockets: Vec<PathBuf>,
    /// CRI sockets.
    pub cri_sockets: Vec<PathBuf>,
    /// The runtimes' state directories (daemon-free enrichment).
    pub state_dirs: HostStateDirs,
    /// Docker's data root, whose records are read even while dockerd is down.
    pub docker_data_root: PathBuf,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig {
            deadline: Duration::from_secs(2),
            concurrency_per_daemon: 8,
            docker_sockets: DEFAULT_DOCKER_SOCKETS.iter().map(PathBuf::from).collect(),
            podman_sockets: DEFAULT_PODMAN_SOCKETS.iter().map(PathBuf::from).collect(),
            containerd_sockets: existing(DEFAULT_CONTAINERD_SOCKETS),
            cri_sockets: existing(DEFAULT_CRI_SOCKETS),
            state_dirs: HostStateDirs::default(),
            docker_data_root: docker_data_root(None, Path::new(DOCKER_DAEMON_JSON)),
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

/// One runtime API ctwatch can ask.
enum Api {
    Containerd(ContainerdApi),
    Cri(CriApi),
    Docker(DockerApi),
}

impl Api {
    fn runtime(&self) -> Runtime {
        match self {
            Api::Containerd(_) => Runtime::Containerd,
            Api::Cri(a) => a.runtime(),
            Api::Docker(a) => a.runtime(),
        }
    }

    fn socket(&self) -> &Path {
        match self {
            Api::Containerd(a) => a.socket(),
            Api::Cri(a) => a.socket(),
            Api::Docker(a) => a.socket(),
        }
    }

    async fn lookup(&self, id: &str, namespace: Option<&str>) -> Result<Option<Metadata>, EnrichError> {
        match self {
            Api::Containerd(a) => a.lookup(id, namespace).await,
            Api::Cri(a) => a.lookup(id).await,
            Api::Docker(a) => a.lookup(id).await,
        }
    }
}

struct Daemon {
    api: Api,
    permits: Semaphore,
}

struct Shared {
    daemons: Vec<Daemon>,
    /// Exits heard in the daemons' event streams (Docker/Podman `die`/`oom`, containerd `/tasks/*`).
    exits: ExitCache,
    oci: OciState,
    results: Sender<EnrichResult>,
    /// How long one daemon request may take before it counts as failed.
    request_deadline: Duration,
    /// The cancel flag of each container being asked about (removed when its
    /// task ends or it is cancelled, so it holds at most the tasks running).
    running: Mutex<HashMap<(String, u64), Arc<AtomicBool>>>,
}

impl Shared {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Arc<AtomicBool>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs enrichment on its own small tokio runtime.
pub struct Enrichment {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
}

impl Enrichment {
    /// Starts the engine; answers go to `results`.
    pub fn start(config: EnrichConfig, results: Sender<EnrichResult>) -> std::io::Result<Self> {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("enrich").enable_all().build()?;
        // Asked in this order; later answers win field by field (CRI's names
        // and pod data over containerd's labels).
        let mut apis: Vec<Api> = Vec::new();
        let mut add = |api: Api| {
            let duplicate = apis.iter().any(|a| {
                same_socket(a.socket(), api.socket()) && std::mem::discriminant(a) == std::mem::discriminant(&api)
            });
            if !duplicate {
                debug!(runtime = %api.runtime(), socket = %api.socket().display(), present = api.socket().exists(), "enrichment from the runtime API");
                apis.push(api);
            }
        };
        config.containerd_sockets.iter().for_each(|s| add(Api::Containerd(ContainerdApi::new(s))));
        config.cri_sockets.iter().for_each(|s| add(Api::Cri(CriApi::new(cri_runtime(s), s))));
        let docker_root = &config.docker_data_root;
        config
            .docker_sockets
            .iter()
            .for_each(|s| add(Api::Docker(DockerApi::new(Runtime::Docker, s).with_data_root(docker_root))));
        config.podman_sockets.iter().for_each(|s| add(Api::Docker(DockerApi::new(Runtime::Podman, s))));
        let permits = config.concurrency_per_daemon.max(1);
        let daemons = apis.into_iter().map(|api| Daemon { api, permits: Semaphore::new(permits) }).collect();
        let shared = Arc::new(Shared {
            daemons,
            exits: ExitCache::new(MAX_CACHED_EXITS),
            oci: OciState::new(config.state_dirs),
            results,
            request_deadline: config.deadline,
            running: Mutex::new(HashMap::new()),
        });
        for index in 0..shared.daemons.len() {
            let shared = shared.clone();
            runtime.spawn(async move { follow_exits(&shared, index).await });
        }
        Ok(Enrichment { runtime, shared })
    }

    /// Asks how container `id` ended, in the background, once its cgroup is
    /// gone (its `container_remove`), and calls `reply` with what is known
    /// (never invented; empty when no runtime says): the exit heard in the
    /// runtime's event stream (the only source after `--rm`), else the
    /// runtime's record (Docker/Podman inspect, the CRI's container status for
    /// a pod's container, containerd's stopped task). The runtime may record
    /// the exit a little after the cgroup goes: it is asked again for up to
    /// `wait`. `oom_kills` is not filled here (see [`crate::oom::OomWatcher`]).
    pub fn submit_exit<F>(&self, id: &str, runtime: Runtime, cgroup_path: &str, in_pod: bool, wait: Duration, reply: F)
    where
        F: FnOnce(ExitInfo) + Send + 'static,
    {
        let shared = self.shared.clone();
        let namespace = containerd_namespace(cgroup_path, id);
        let id = id.to_string();
        self.runtime.spawn(async move {
            let give_up = tokio::time::Instant::now() + wait;
            let mut info = ExitInfo::default();
            loop {
                if let Some(heard) = shared.exits.take(&id) {
                    info.merge(heard);
                }
                if info.exit_code.is_none() && info.exit_signal.is_none() {
                    info.merge(ask_exit(&shared, &id, runtime, namespace.as_deref(), in_pod).await);
                }
                let ended = info.exit_code.is_some() || info.exit_signal.is_some();
                if ended || tokio::time::Instant::now() >= give_up {
                    break;
                }
                tokio::time::sleep(EXIT_RETRY).await;
            }
            reply(info);
        });
    }

    /// Exits dropped from the event cache because it was full.
    pub fn exits_evicted(&self) -> u64 {
        self.shared.exits.evicted()
    }

    /// Asks about `container` in the background.
    pub fn submit(&self, container: &Container) {
        let shared = self.shared.clone();
        let (id, runtime, cgroup_id) = (container.id.clone(), container.runtime, container.cgroup_id);
        let in_pod = !container.pod.uid.is_empty();
        let namespace = containerd_namespace(&container.cgroup_path, &container.id);
        let cancelled = Arc::new(AtomicBool::new(false));
        let key = (id.clone(), cgroup_id);
        if let Some(old) = shared.running().insert(key.clone(), cancelled.clone()) {
            old.store(true, Ordering::Relaxed);
        }
        self.runtime.spawn(async move {
            // A daemon that did not answer is asked again, with backoff, so the
            // containers created while it was down are enriched once it is back
            // (unless the container is removed first: see `cancel`).
            let mut backoff = RETRY_FIRST;
            let give_up = tokio::time::Instant::now() + RETRY_FOR;
            loop {
                let result = enrich_one(&shared, id.clone(), runtime, cgroup_id, namespace.clone(), in_pod).await;
                let complete = result.complete;
                if cancelled.load(Ordering::Relaxed)
                    || shared.results.send(result).is_err()
                    || complete
                    || tokio::time::Instant::now() >= give_up
                {
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
            let mut running = shared.running();
            if running.get(&key).is_some_and(|flag| Arc::ptr_eq(flag, &cancelled)) {
                running.remove(&key);
            }
        });
    }

    /// Stops asking about container `id` (its incarnation with root cgroup
    /// `cgroup_id`): no more retries, no more answers. For removed containers.
    pub fn cancel(&self, id: &str, cgroup_id: u64) {
        if let Some(flag) = self.shared.running().remove(&(id.to_string(), cgroup_id)) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// How many containers are being asked about (retries included).
    pub fn running(&self) -> usize {
        self.shared.running().len()
    }
}

/// Exits heard but not yet asked for, kept at most.
const MAX_CACHED_EXITS: usize = 4096;
/// Wait between two asks for a container's exit.
const EXIT_RETRY: Duration = Duration::from_millis(100);

/// Follows daemon `index`'s exit events into the cache, reconnecting with backoff.
async fn follow_exits(shared: &Arc<Shared>, index: usize) {
    let mut backoff = RETRY_FIRST;
    loop {
        let started = tokio::time::Instant::now();
        let result = match &shared.daemons[index].api {
            Api::Docker(a) if a.runtime() == Runtime::Docker => a.follow_exits(&shared.exits).await,
            // Podman's API service (4.3) delivered no `die` events here, and its events
            // request slowed its answers to lookups: its inspect is asked instead.
            Api::Docker(_) => return,
            Api::Containerd(a) => a.follow_exits(&shared.exits).await,
            Api::Cri(_) => return, // containerd's own events cover its CRI plugin
        };
        if let Err(e) = result {
            debug!("exit events: {e}");
        }
        if started.elapsed() > RETRY_MAX {
            backoff = RETRY_FIRST;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

/// Asks each daemon of `runtime` for the container's exit record.
async fn ask_exit(shared: &Shared, id: &str, runtime: Runtime, namespace: Option<&str>, in_pod: bool) -> ExitInfo {
    let mut info = ExitInfo::default();
    let asked = shared.daemons.iter().filter(|d| runtime == Runtime::Unknown || d.api.runtime() == runtime);
    for daemon in asked {
        let Ok(_permit) = daemon.permits.acquire().await else { continue };
        let answer = match &daemon.api {
            Api::Docker(a) => tokio::time::timeout(shared.request_deadline, a.exit_info(id)).await,
            Api::Cri(a) if in_pod => tokio::time::timeout(shared.request_deadline, a.exit_info(id)).await,
            Api::Cri(_) => continue,
            Api::Containerd(a) => {
                let Some(ns) = namespace else { continue };
                tokio::time::timeout(shared.request_deadline, a.task_exit(id, ns)).await
            }
        };
        match answer {
            Ok(Ok(Some(found))) => info.merge(found),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => debug!(%id, "exit status: {e}"),
            Err(_) => debug!(%id, runtime = %daemon.api.runtime(), "exit status request timed out"),
        }
    }
    info
}

async fn enrich_one(
    shared: &Arc<Shared>,
    id: String,
    runtime: Runtime,
    cgroup_id: u64,
    namespace: Option<String>,
    in_pod: bool,
) -> EnrichResult {
    // The bundle may not be readable yet (runc writes state.json after the
    // cgroups): read it alongside the daemons, and stop waiting for it once
    // the daemons' answer is whole.
    let daemon_answered = Arc::new(AtomicBool::new(false));
    let from_bundle = {
        let (oci, id, ns, stop) = (shared.oci.clone(), id.clone(), namespace.clone(), daemon_answered.clone());
        let wait = shared.request_deadline.mul_f32(0.9);
        tokio::task::spawn_blocking(move || oci.lookup(runtime, &id, ns.as_deref(), wait, &stop))
    };
    let mut from_daemons = Metadata::default();
    let mut complete = true;
    let asked = shared.daemons.iter().filter(|d| runtime == Runtime::Unknown || d.api.runtime() == runtime);
    let take = |from_daemons: &mut Metadata, found: Metadata| {
        from_daemons.merge(found);
        // Whole: the bundle can add nothing (at a pod sandbox's mkdir the
        // CRI service does not know it yet: its annotations are the source).
        let in_pod = in_pod || from_daemons.pod_sandbox == Some(true);
        let whole = !from_daemons.name.is_empty()
            && !from_daemons.image.is_empty()
            && (!in_pod || !from_daemons.pod_name.is_empty());
        if whole {
            daemon_answered.store(true, Ordering::Relaxed);
        }
    };
    for daemon in asked {
        let Ok(_permit) = daemon.permits.acquire().await else {
            continue;
        };
        // Docker's records on disk first: they need no daemon (it may be down or
        // restarting), and the daemon's answer, when it comes, is merged over them.
        if let Api::Docker(docker) = &daemon.api {
            if let Some(found) = docker.on_disk(&id).await {
                take(&mut from_daemons, found);
            }
        }
        match tokio::time::timeout(shared.request_deadline, daemon.api.lookup(&id, namespace.as_deref())).await {
            Ok(Ok(Some(found))) => take(&mut from_daemons, found),
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
    let mut metadata = from_bundle.await.ok().flatten().unwrap_or_default();
    metadata.merge(from_daemons);
    EnrichResult { container_id: id, cgroup_id, metadata, complete }
}

/// The containerd namespace in a `/<namespace>/<id>` cgroup path.
fn containerd_namespace(cgroup_path: &str, id: &str) -> Option<String> {
    let parent = cgroup_path.strip_suffix(id)?.trim_end_matches('/');
    let ns = parent.rsplit('/').next()?;
    (!ns.is_empty()).then(|| ns.to_string())
}

/// The runtime behind a CRI socket, from its path.
fn cri_runtime(socket: &Path) -> Runtime {
    if socket.to_string_lossy().contains("crio") {
        Runtime::Crio
    } else {
        Runtime::Containerd
    }
}

/// The paths in `candidates` that exist now.
fn existing(candidates: &[&str]) -> Vec<PathBuf> {
    candidates.iter().map(PathBuf::from).filter(|p| p.exists()).collect()
}

fn same_socket(a: &Path, b: &Path) -> bool {
    a == b || (a.canonicalize().ok().is_some() && a.canonicalize().ok() == b.canonicalize().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_container_is_asked_about_no_more() {
        let dir = tempfile::tempdir().unwrap();
        // A daemon that is down: every answer is incomplete, so it would be asked again for minutes.
        let config = EnrichConfig {
            deadline: Duration::from_millis(200),
            docker_sockets: vec![dir.path().join("docker.sock")],
            podman_sockets: Vec::new(),
            containerd_sockets: Vec::new(),
            cri_sockets: Vec::new(),
            state_dirs: HostStateDirs::under(dir.path()),
            docker_data_root: dir.path().join("docker"),
            ..EnrichConfig::default()
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let enrichment = Enrichment::start(config, tx).unwrap();
        let container = Container { cgroup_id: 7, ..Container::new("a".repeat(64), Runtime::Docker) };
        enrichment.submit(&container);
        assert_eq!(enrichment.running(), 1);
        let first = rx.recv_timeout(Duration::from_secs(10)).expect("a first (incomplete) answer");
        assert!(!first.complete);
        enrichment.cancel(&container.id, 7);
        assert_eq!(enrichment.running(), 0, "forgotten at once");
        // The retry after RETRY_FIRST would have answered again; nothing comes.
        assert!(rx.recv_timeout(RETRY_FIRST * 3).is_err(), "no retry after the cancel");
    }
}
