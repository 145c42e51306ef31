//! The containers data source: what detection code asks of ctwatch.
//!
//! A [`DataSource`] is a cheap handle onto a running [`crate::Agent`] (or a
//! one-off snapshot): look a container up by ID or prefix, cgroup ID, PID or
//! mount namespace; list with a filter; subscribe to the current state and
//! every event after it; resolve a path as a container sees it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ctwatch::cgroupfs::{self, Hierarchy};
use ctwatch::hook::HookInfo;
use ctwatch::proc::{self, Namespace, ProcError};
use ctwatch::resolve::{self, ResolveError, ResolvedPath};
use ctwatch::{Container, ContainerState, LookupError, PodInfo, Runtime, SecurityProfile, SharedStore};
use ctwatch_security::FilterError;
use serde::Serialize;
use thiserror::Error;

use crate::hub::{Hub, Subscription, DEFAULT_SUBSCRIBER_BUFFER};
use crate::metrics::Metrics;
use crate::namespaces::{NamespaceCache, Namespaces, DEFAULT_NAMESPACE_CACHE};

/// Why a lookup failed.
#[derive(Debug, Error)]
pub enum DataSourceError {
    /// Nothing matches the key.
    #[error("no container matches {0}")]
    NotFound(String),
    /// The prefix starts several container IDs.
    #[error("{prefix:?} is ambiguous: it starts {count} container IDs (give more characters)")]
    AmbiguousPrefix {
        /// The prefix asked for.
        prefix: String,
        /// How many IDs start with it.
        count: usize,
    },
    /// The key is of a kind the data source cannot look up.
    #[error("unsupported key type {0:?} (use an ID or prefix, id:, cgroup:, pid: or mntns:)")]
    UnsupportedKey(String),
    /// A key's value is malformed (`pid:abc`).
    #[error("invalid {kind} {value:?}: {why}")]
    InvalidKey {
        /// The key type.
        kind: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The process asked about does not exist (or could not be read).
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// The container has no process to enter (not started yet, or gone).
    #[error("container {0} has no running process to resolve paths through")]
    NotRunning(String),
    /// A path could not be resolved inside the container.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

impl DataSourceError {
    /// True when the answer is "nothing there" (no such container, process,
    /// or file in the container) rather than a failure: the API says
    /// `NOT_FOUND`, the CLI exits 1.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            DataSourceError::NotFound(_)
                | DataSourceError::Proc(ProcError::NoSuchProcess(_) | ProcError::NotInHierarchy(_))
                | DataSourceError::Resolve(ResolveError::NotFound { .. })
        )
    }
}

impl From<LookupError> for DataSourceError {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::NotFound(key) => DataSourceError::NotFound(format!("{key:?}")),
            LookupError::Ambiguous { prefix, count } => DataSourceError::AmbiguousPrefix { prefix, count },
        }
    }
}

/// What to look a container up by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupKey {
    /// A full container ID or an unambiguous prefix of one.
    Id(String),
    /// A cgroup ID (the container's root cgroup or any of its sub-cgroups).
    CgroupId(u64),
    /// A host PID of a process in the container.
    Pid(u32),
    /// The inode number of the container's mount namespace.
    MountNs(u64),
}

impl FromStr for LookupKey {
    type Err = DataSourceError;

    /// `abc123` or `id:abc123`, `cgroup:<id>`, `pid:<pid>`, `mntns:<inode>` (`mnt:[<inode>]` as
    /// `readlink /proc/<pid>/ns/mnt` prints it also works).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((kind, value)) = s.split_once(':') else {
            return Ok(LookupKey::Id(s.to_string()));
        };
        let number = |kind: &'static str| -> Result<u64, DataSourceError> {
            let v = value.trim_start_matches('[').trim_end_matches(']');
            v.parse().map_err(|e: std::num::ParseIntError| DataSourceError::InvalidKey {
                kind,
                value: value.to_string(),
                why: e.to_string(),
            })
        };
        match kind {
            "id" => Ok(LookupKey::Id(value.to_string())),
            "cgroup" | "cgroup_id" => Ok(LookupKey::CgroupId(number("cgroup ID")?)),
            "pid" => {
                let pid = number("PID")?;
                u32::try_from(pid).map(LookupKey::Pid).map_err(|e| DataSourceError::InvalidKey {
                    kind: "PID",
                    value: value.to_string(),
                    why: e.to_string(),
                })
            }
            "mntns" | "mnt" => Ok(LookupKey::MountNs(number("mount namespace")?)),
            other => Err(DataSourceError::UnsupportedKey(other.to_string())),
        }
    }
}

impl fmt::Display for LookupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupKey::Id(id) => write!(f, "{id:?}"),
            LookupKey::CgroupId(id) => write!(f, "cgroup ID {id}"),
            LookupKey::Pid(pid) => write!(f, "PID {pid}"),
            LookupKey::MountNs(ns) => write!(f, "mount namespace {ns}"),
        }
    }
}

/// One container, as the data source returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerRecord {
    /// The container's ID.
    pub container_id: String,
    /// Its root cgroup's creation time, ns since the Unix epoch (0 if unknown).
    pub container_ctime: u64,
    /// Its name.
    pub container_name: String,
    /// Its image as the user named it.
    pub container_image: String,
    /// The image digest (`sha256:<hex>`).
    pub container_image_digest: String,
    /// The runtime that made it.
    pub runtime: Runtime,
    /// Its pod's UID.
    pub k8s_pod_id: String,
    /// Its pod's name.
    pub k8s_pod_name: String,
    /// Its pod's namespace.
    pub k8s_pod_namespace: String,
    /// True for a pod's sandbox container.
    pub k8s_pod_sandbox: bool,
    /// Its root cgroup's ID.
    pub cgroup_id: u64,
    /// Its root cgroup's path in the watched hierarchy. Names that are not
    /// UTF-8 are kept as in [`ctwatch::cgroupfs::path_from_bytes`] (so gRPC
    /// carries them losslessly); in JSON such bytes read `\xNN` and the exact
    /// bytes are in `cgroup_path_bytes`.
    #[serde(serialize_with = "readable_cgroup_path")]
    pub cgroup_path: String,
    /// The root cgroup path's bytes in standard base64, only when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_path_bytes: Option<String>,
    /// Its init process (host PID), once it has one.
    pub init_pid: Option<u32>,
    /// Its mount namespace's inode number, once it has a process.
    pub mount_ns: Option<u64>,
    /// Its network namespace's inode number, once it has a process.
    pub net_ns: Option<u64>,
    /// Its runtime's labels.
    pub labels: BTreeMap<String, String>,
    /// Its bundle's OCI annotations, when the runtime hook read them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// What the runtime hook learned before it started, when the hook saw its create.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "hook_findings")]
    pub hook: Option<Arc<HookInfo>>,
    /// `existing`, `created` or `removed` (kept for the grace period).
    pub state: ContainerState,
    /// What it may do, from its OCI config, when the hook or the bundle was read.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "security_profile")]
    pub security: Option<Arc<SecurityProfile>>,
    /// When its own process started, ns since the Unix epoch (RFC 3339 in JSON), when known.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "rfc3339_opt")]
    pub started_at: Option<u64>,
    /// When it ended, ns since the Unix epoch (RFC 3339 in JSON), when known.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "rfc3339_opt")]
    pub finished_at: Option<u64>,
    /// Its init's exit code, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that killed its init, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
    /// Whether the OOM killer killed its init, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_killed: Option<bool>,
    /// OOM kills inside it during its life, when counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
    /// The executable its own process started with, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// That process's `argv[0]`, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv0: Option<String>,
}

impl ContainerRecord {
    /// A record from a container and what is known of its processes.
    pub fn new(c: &Container, ns: Option<Namespaces>) -> Self {
        // Every field named: one added to the model fails to compile here.
        let Container {
            id,
            runtime,
            cgroup_id,
            cgroup_path,
            image,
            image_digest,
            name,
            pod: PodInfo { name: pod_name, namespace: pod_namespace, uid: pod_uid, sandbox: pod_sandbox },
            labels,
            annotations,
            hook,
            ctime_ns,
            state,
            security,
            started_at_ns,
            finished_at_ns,
            exit_code,
            exit_signal,
            oom_killed,
            oom_kills,
            init_pid,
            start_exe,
            start_argv0,
        } = c;
        ContainerRecord {
            container_id: id.clone(),
            container_ctime: *ctime_ns,
            container_name: name.clone(),
            container_image: image.clone(),
            container_image_digest: image_digest.clone(),
            runtime: *runtime,
            k8s_pod_id: pod_uid.clone(),
            k8s_pod_name: pod_name.clone(),
            k8s_pod_namespace: pod_namespace.clone(),
            k8s_pod_sandbox: *pod_sandbox,
            cgroup_id: *cgroup_id,
            cgroup_path: cgroup_path.clone(),
            cgroup_path_bytes: cgroup_path_bytes(cgroup_path),
            init_pid: ns.map(|n| n.init_pid).or(*init_pid),
            mount_ns: ns.map(|n| n.mount_ns),
            net_ns: ns.map(|n| n.net_ns),
            labels: labels.clone(),
            annotations: annotations.clone(),
            hook: hook.clone(),
            state: *state,
            security: security.clone(),
            started_at: *started_at_ns,
            finished_at: *finished_at_ns,
            exit_code: *exit_code,
            exit_signal: *exit_signal,
            oom_killed: *oom_killed,
            oom_kills: *oom_kills,
            exe: start_exe.clone(),
            argv0: start_argv0.clone(),
        }
    }
}

fn security_profile<S: serde::Serializer>(
    security: &Option<Arc<SecurityProfile>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    security.as_deref().serialize(serializer)
}

fn rfc3339_opt<S: serde::Serializer>(ns: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    ns.map(|ns| ctwatch::event::rfc3339_nanos(ctwatch::event::ns_to_time(ns))).serialize(serializer)
}

fn hook_findings<S: serde::Serializer>(hook: &Option<Arc<HookInfo>>, serializer: S) -> Result<S::Ok, S::Error> {
    hook.as_deref().serialize(serializer)
}

/// A cgroup path's bytes in standard base64, when they are not UTF-8.
fn cgroup_path_bytes(path: &str) -> Option<String> {
    use base64::Engine;
    cgroupfs::path_is_escaped(path)
        .then(|| base64::engine::general_purpose::STANDARD.encode(cgroupfs::path_to_bytes(path)))
}

fn readable_cgroup_path<S: serde::Serializer>(path: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&cgroupfs::display_path(path))
}

/// Which containers [`DataSource::list`] returns; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFilter {
    /// A substring of the container's name (as `docker ps --filter name=`).
    pub name: Option<String>,
    /// Image: exact, or the repository without its tag or digest (`busybox` matches `busybox:1`).
    pub image: Option<String>,
    /// Runtime.
    pub runtime: Option<Runtime>,
    /// Pod name.
    pub pod_name: Option<String>,
    /// Pod namespace.
    pub pod_namespace: Option<String>,
    /// Labels: `(key, None)` needs the key, `(key, Some(value))` that value.
    pub labels: Vec<(String, Option<String>)>,
    /// Also list removed containers still within their grace period.
    pub include_removed: bool,
    /// Security filters `(key, value)` (`privileged`/`true`, `host_ns`/`pid`,
    /// `cap`/`SYS_ADMIN`, ...; see [`SecurityProfile::matches_filter`]): a
    /// container without a security profile matches none. Check the keys
    /// with [`ContainerFilter::check_security`] first; an unknown key matches nothing.
    pub security: Vec<(String, String)>,
}

impl ContainerFilter {
    /// True when `c` passes the filter.
    pub fn matches(&self, c: &Container) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        (self.include_removed || c.state != ContainerState::Removed)
            && self.name.as_deref().is_none_or(|w| c.name.contains(w))
            && self.image.as_deref().is_none_or(|w| image_matches(w, &c.image))
            && self.runtime.is_none_or(|r| r == c.runtime)
            && eq(&self.pod_name, &c.pod.name)
            && eq(&self.pod_namespace, &c.pod.namespace)
            && self.labels.iter().all(|(k, v)| match (c.labels.get(k), v) {
                (Some(have), Some(want)) => have == want,
                (Some(_), None) => true,
                (None, _) => false,
            })
            && (self.security.is_empty()
                || c.security
                    .as_deref()
                    .is_some_and(|p| self.security.iter().all(|(k, v)| p.matches_filter(k, v).unwrap_or(false))))
    }

    /// Whether every security filter's key and value are ones
    /// [`SecurityProfile::matches_filter`] knows (the first error otherwise).
    pub fn check_security(&self) -> Result<(), FilterError> {
        let probe = SecurityProfile::from_config(&ctwatch_security::Config::default());
        self.security.iter().try_for_each(|(k, v)| probe.matches_filter(k, v).map(drop))
    }
}

fn image_matches(want: &str, image: &str) -> bool {
    if want == image {
        return true;
    }
    // `repo` matches `repo:tag` and `repo@sha256:...` (a ':' after the last '/' is a tag).
    image.strip_prefix(want).is_some_and(|rest| {
        rest.starts_with('@') || (rest.starts_with(':') && !rest.contains('/') && !want.ends_with(':'))
    })
}

/// Where the host's facts are read.
#[derive(Debug, Clone)]
pub struct HostView {
    /// The watched cgroup hierarchy.
    pub hierarchy: Hierarchy,
    /// The proc mount (normally `/proc`).
    pub proc_root: PathBuf,
}

struct Inner {
    store: SharedStore,
    hub: Hub,
    host: HostView,
    namespaces: NamespaceCache,
    metrics: Arc<Metrics>,
    scanned: (Mutex<bool>, Condvar),
    journal: std::sync::OnceLock<Arc<ctwatch_journal::Journal>>,
}

/// The handle; clone it freely.
#[derive(Clone)]
pub struct DataSource(Arc<Inner>);

impl DataSource {
    /// A data source over `store`, fed with events by whoever publishes to its hub.
    pub fn new(store: SharedStore, host: HostView, metrics: Arc<Metrics>) -> Self {
        let namespaces =
            NamespaceCache::new(&host.proc_root, &host.hierarchy.mount_point, DEFAULT_NAMESPACE_CACHE, metrics.clone());
        DataSource(Arc::new(Inner {
            store,
            hub: Hub::new(metrics.clone()),
            host,
            namespaces,
            metrics,
            scanned: (Mutex::new(false), Condvar::new()),
            journal: std::sync::OnceLock::new(),
        }))
    }

    /// The journal events are numbered by and replayed from, if there is one.
    pub fn journal(&self) -> Option<&Arc<ctwatch_journal::Journal>> {
        self.0.journal.get()
    }

    /// Sets the journal (once; the agent does it when it has one).
    pub fn set_journal(&self, journal: Arc<ctwatch_journal::Journal>) {
        let _ = self.0.journal.set(journal);
    }

    /// The hub events are published to (the agent's pipeline publishes).
    pub fn hub(&self) -> &Hub {
        &self.0.hub
    }

    /// The metrics the agent keeps.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    /// The store behind it.
    pub fn store(&self) -> &SharedStore {
        &self.0.store
    }

    /// The watched hierarchy and proc mount.
    pub fn host(&self) -> &HostView {
        &self.0.host
    }

    /// Marks the scan at start complete (wakes [`DataSource::wait_scanned`]).
    pub fn set_scanned(&self) {
        let (lock, cvar) = &self.0.scanned;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
    }

    /// Waits until the scan at start is complete; false if `timeout` passed first.
    pub fn wait_scanned(&self, timeout: Duration) -> bool {
        let (lock, cvar) = &self.0.scanned;
        let deadline = Instant::now() + timeout;
        let mut done = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            done = cvar.wait_timeout(done, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    fn record(&self, c: &Container) -> ContainerRecord {
        ContainerRecord::new(c, self.0.namespaces.of(c))
    }

    /// `c` as a record with the namespaces already known, without reading
    /// `/proc` (for events: a new container has no process yet anyway).
    pub fn record_cached(&self, c: &Container) -> ContainerRecord {
        ContainerRecord::new(c, self.0.namespaces.cached(c))
    }

    /// The record of the live container whose ID is exactly `id` (`None` when
    /// it is unknown or removed), as [`DataSource::get`] gives it.
    pub fn live_record(&self, id: &str) -> Option<ContainerRecord> {
        let c = self.0.store.read().get(id).filter(|c| c.state != ctwatch::ContainerState::Removed).cloned()?;
        Some(self.record(&c))
    }

    /// The container with this ID, or the only one whose ID starts with it,
    /// or else the only live one with this name (as `docker inspect` accepts).
    pub fn get(&self, id_or_prefix: &str) -> Result<ContainerRecord, DataSourceError> {
        let c = self.find(id_or_prefix)?;
        Ok(self.record(&c))
    }

    fn find(&self, id_or_prefix: &str) -> Result<Arc<Container>, DataSourceError> {
        let store = self.0.store.read();
        match store.get_by_prefix(id_or_prefix) {
            Ok(c) => Ok(c.clone()),
            Err(LookupError::NotFound(key)) => {
                let mut named = store.live().filter(|c| !c.name.is_empty() && c.name == id_or_prefix);
                match (named.next(), named.next()) {
                    (Some(c), None) => Ok(c.clone()),
                    (Some(_), Some(_)) => Err(DataSourceError::AmbiguousPrefix {
                        prefix: id_or_prefix.to_string(),
                        count: 2 + named.count(),
                    }),
                    (None, _) => Err(LookupError::NotFound(key).into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The container a cgroup (its root or a sub-cgroup) belongs to.
    pub fn get_by_cgroup_id(&self, cgroup_id: u64) -> Result<ContainerRecord, DataSourceError> {
        let c = self.0.store.read().get_by_cgroup_id(cgroup_id).cloned();
        let c = c.ok_or_else(|| DataSourceError::NotFound(format!("cgroup ID {cgroup_id}")))?;
        Ok(self.record(&c))
    }

    /// The container process `pid` (a host PID) is in, from `/proc/<pid>/cgroup`.
    pub fn get_by_pid(&self, pid: u32) -> Result<ContainerRecord, DataSourceError> {
        let path = proc::cgroup_path_of(&self.0.host.proc_root, pid, &self.0.host.hierarchy)?;
        let c = {
            let store = self.0.store.read();
            match store.cgroup_at(&path) {
                Some((m, _)) => store.get(&m.container_id).cloned(),
                None => store.container_above(&path).cloned(),
            }
        };
        let c = c.ok_or_else(|| DataSourceError::NotFound(format!("PID {pid} (its cgroup is {path})")))?;
        Ok(self.record(&c))
    }

    /// The container whose processes are in mount namespace `mount_ns` (an inode number).
    pub fn get_by_mount_ns(&self, mount_ns: u64) -> Result<ContainerRecord, DataSourceError> {
        // The cache takes the store's lock only to copy containers out: /proc is read without it.
        let c = self.0.namespaces.container_in_mount_ns(mount_ns, &self.0.store);
        let c = c.ok_or_else(|| DataSourceError::NotFound(format!("mount namespace {mount_ns}")))?;
        Ok(self.record(&c))
    }

    /// Looks a container up by any [`LookupKey`].
    pub fn lookup(&self, key: &LookupKey) -> Result<ContainerRecord, DataSourceError> {
        match key {
            LookupKey::Id(id) => self.get(id),
            LookupKey::CgroupId(id) => self.get_by_cgroup_id(*id),
            LookupKey::Pid(pid) => self.get_by_pid(*pid),
            LookupKey::MountNs(ns) => self.get_by_mount_ns(*ns),
        }
    }

    /// The containers that pass `filter`, newest first.
    pub fn list(&self, filter: &ContainerFilter) -> Vec<ContainerRecord> {
        let matching: Vec<Arc<Container>> = self.0.store.read().iter().filter(|c| filter.matches(c)).cloned().collect();
        let mut records: Vec<ContainerRecord> = matching.iter().map(|c| self.record(c)).collect();
        records.sort_by(|a, b| {
            b.container_ctime.cmp(&a.container_ctime).then_with(|| a.container_id.cmp(&b.container_id))
        });
        records
    }

    /// The current containers, then every event after them, with no gap
    /// between the two (buffer: [`DEFAULT_SUBSCRIBER_BUFFER`] events).
    pub fn subscribe(&self) -> Subscription {
        self.subscribe_with_buffer(DEFAULT_SUBSCRIBER_BUFFER)
    }

    /// [`DataSource::subscribe`] with a buffer of `buffer` events: a
    /// subscriber that falls further behind is dropped.
    pub fn subscribe_with_buffer(&self, buffer: usize) -> Subscription {
        self.0.hub.subscribe(buffer)
    }

    /// [`DataSource::subscribe_with_buffer`] that also drops the subscriber
    /// once its queued events hold more than `bytes` bytes.
    pub fn subscribe_bounded(&self, buffer: usize, bytes: usize) -> Subscription {
        self.0.hub.subscribe_bounded(buffer, bytes)
    }

    /// Resolves `path` as the container sees it (symlinks and `..` never
    /// leave its root) to a host path and an open file.
    pub fn resolve_path(&self, id_or_prefix: &str, path: &str) -> Result<ResolvedPath, DataSourceError> {
        let c = self.find(id_or_prefix)?;
        let ns = self.0.namespaces.live_init(&c).ok_or_else(|| DataSourceError::NotRunning(c.id.clone()))?;
        Ok(resolve::resolve_in_process_root(&self.0.host.proc_root, ns.init_pid, path)?)
    }

    /// The mount namespace of process `pid`, to look its container up by.
    pub fn mount_ns_of(&self, pid: u32) -> Result<u64, DataSourceError> {
        Ok(proc::namespace_of(&self.0.host.proc_root, pid, Namespace::Mount)?)
    }

    /// The proc mount this data source reads.
    pub fn proc_root(&self) -> &Path {
        &self.0.host.proc_root
    }
}
