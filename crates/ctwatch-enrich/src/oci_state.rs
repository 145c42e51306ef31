//! Daemon-free enrichment: runc's `state.json` names the bundle, whose
//! `config.json` carries the annotations CRI runtimes put there (pod name,
//! namespace and UID, container name, image). Works when no daemon answers.
//!
//! Both files are read with a size cap and parsed leniently (only the fields
//! used), so a huge or malformed file costs little and breaks nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctwatch::state_dirs::HostStateDirs;
use ctwatch::untrusted::{is_safe_name, MAX_RUNTIME_FILE};
pub use ctwatch::untrusted::{read_capped, read_json_capped, RecordFileError};
use ctwatch::Runtime;
use ctwatch_security::{joins_host_namespace, SecurityProfile};
use serde::Deserialize;

use crate::metadata::Metadata;

/// The largest state.json or config.json read (the one cap for runtime files).
pub const MAX_FILE: u64 = MAX_RUNTIME_FILE;
/// How long to go on waiting for runc's state.json once `stop` is set (the
/// daemons answered): long enough for runc to finish a create, never past `wait`.
pub const SECURITY_GRACE: Duration = Duration::from_millis(300);
/// How often to look for a state.json that runc has not written yet.
const STATE_POLL: Duration = Duration::from_millis(20);

#[derive(Deserialize)]
struct State {
    config: StateConfig,
}

#[derive(Deserialize)]
struct StateConfig {
    #[serde(default)]
    labels: Vec<String>,
}

#[derive(Deserialize)]
struct Spec {
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// Reads runtime state directories for what a container's OCI bundle says.
#[derive(Debug, Clone)]
pub struct OciState {
    dirs: HostStateDirs,
}

impl OciState {
    /// Reads the state directories `dirs`.
    pub fn new(dirs: HostStateDirs) -> Self {
        OciState { dirs }
    }

    /// What the bundle of container `id` says, if its state can be found.
    /// `namespace` is the containerd namespace when the cgroup path tells it.
    ///
    /// runc makes the state directory before the container's cgroups but
    /// writes `state.json` only after them, so when the directory exists and
    /// the file does not yet, this waits for it until `wait` has passed or
    /// `stop` is set and [`SECURITY_GRACE`] has passed. Besides the
    /// annotations it gives the container's security profile, derived from
    /// the same read of `config.json`.
    pub fn lookup(
        &self,
        runtime: Runtime,
        id: &str,
        namespace: Option<&str>,
        wait: Duration,
        stop: &AtomicBool,
    ) -> Option<Metadata> {
        if !is_safe_name(id) {
            return None;
        }
        // containerd's own bundle (Docker's and `ctr`'s containers) is there
        // before the cgroups: read at once, no wait for runc's state.json.
        for bundle in self.task_bundles(runtime, id, namespace) {
            if let Some(metadata) = read_bundle(id, &bundle) {
                return Some(metadata);
            }
        }
        let candidates = self.state_files(runtime, id, namespace);
        let started = Instant::now();
        let give_up = started + wait;
        let state = loop {
            if let Some(found) = candidates.iter().find(|p| p.is_file()) {
                break found;
            }
            let pending = candidates.iter().any(|p| p.parent().is_some_and(Path::is_dir));
            let now = Instant::now();
            // The daemons' answer ends the wait, but not before a short grace:
            // the bundle's config.json is the only source of the security
            // profile when the hook is off.
            let stopped = stop.load(Ordering::Relaxed) && now >= started + SECURITY_GRACE;
            if !pending || now >= give_up || stopped {
                return None;
            }
            std::thread::sleep(STATE_POLL);
        };
        let state: State = read_json(state)?;
        let bundle = state.config.labels.iter().find_map(|l| l.strip_prefix("bundle="))?;
        read_bundle(id, Path::new(bundle))
    }

    /// containerd's task bundle directories that may hold container `id`
    /// (namespace `moby` for Docker; the cgroup's namespace, else every
    /// namespace, for containerd). Root's own directories, not a user's.
    fn task_bundles(&self, runtime: Runtime, id: &str, namespace: Option<&str>) -> Vec<PathBuf> {
        let namespaces: Vec<String> = match runtime {
            Runtime::Docker => vec!["moby".to_string()],
            Runtime::Containerd | Runtime::Unknown => match namespace.filter(|ns| is_safe_name(ns)) {
                Some(ns) => vec![ns.to_string()],
                None => std::fs::read_dir(&self.dirs.bundles)
                    .map(|entries| entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
                    .unwrap_or_default(),
            },
            _ => Vec::new(),
        };
        namespaces.iter().map(|ns| self.dirs.bundles.join(ns).join(id)).collect()
    }

    fn state_files(&self, runtime: Runtime, id: &str, namespace: Option<&str>) -> Vec<PathBuf> {
        let containerd = || -> Vec<PathBuf> {
            let mut namespaces: Vec<String> = namespace.map(str::to_string).into_iter().collect();
            if let Ok(entries) = std::fs::read_dir(&self.dirs.containerd) {
                namespaces.extend(entries.flatten().filter_map(|e| e.file_name().into_string().ok()));
            }
            namespaces.iter().map(|ns| self.dirs.containerd.join(ns).join(id).join("state.json")).collect()
        };
        let docker = || vec![self.dirs.docker.join(id).join("state.json")];
        let runc = || vec![self.dirs.runc.join(id).join("state.json")];
        match runtime {
            Runtime::Docker => docker(),
            Runtime::Containerd => containerd(),
            Runtime::Podman | Runtime::Crio | Runtime::Runc => runc(),
            // No runc state of their own to read (or none ctwatch knows of).
            Runtime::Garden
            | Runtime::Crun
            | Runtime::Gvisor
            | Runtime::Kata
            | Runtime::Lxc
            | Runtime::Nspawn
            | Runtime::LibvirtLxc
            | Runtime::Rkt
            | Runtime::Mesos
            | Runtime::Bpm
            | Runtime::Ecs => Vec::new(),
            Runtime::Unknown => [containerd(), runc(), docker()].concat(),
        }
    }
}

/// What the bundle at `bundle` says of container `id`: its annotations and
/// the security profile, from one capped read of its `config.json`; `None`
/// when the file is missing or is not an OCI config.
fn read_bundle(id: &str, bundle: &Path) -> Option<Metadata> {
    let bytes = read_capped(&bundle.join("config.json"), MAX_FILE).ok()?;
    let spec: Spec = serde_json::from_slice(&bytes).ok()?;
    let mut metadata = Metadata::default();
    metadata.add_annotations(&spec.annotations);
    metadata.security = match SecurityProfile::from_config_bytes(&bytes) {
        Ok(mut profile) => {
            profile.resolve_joined_namespaces(|kind, path| joins_host_namespace(Path::new("/proc"), kind, path));
            Some(Arc::new(profile))
        }
        Err(e) => {
            tracing::debug!(%id, error = %e, "the bundle's config.json gives no security profile");
            None
        }
    };
    Some(metadata)
}

/// Reads at most [`MAX_FILE`] bytes of JSON; see [`read_json_capped`].
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    read_json_capped(path, MAX_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn bundle_with(root: &Path, id: &str, config: &[u8]) -> OciState {
        let dirs = HostStateDirs::under(root);
        let bundle = root.join("bundles").join(id);
        fs::create_dir_all(&bundle).unwrap();
        fs::write(bundle.join("config.json"), config).unwrap();
        let state_dir = dirs.containerd.join("k8s.io").join(id);
        fs::create_dir_all(&state_dir).unwrap();
        let state = serde_json::json!({"config": {"labels": [format!("bundle={}", bundle.display())]}, "id": id});
        fs::write(state_dir.join("state.json"), state.to_string()).unwrap();
        OciState::new(dirs)
    }

    #[test]
    fn records_are_read_only_from_regular_files_of_bounded_size() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.json");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // A FIFO with no writer would block a plain open forever.
        assert!(read_json_capped::<serde_json::Value>(&fifo, 1024).is_none());
        assert!(read_json_capped::<serde_json::Value>(dir.path(), 1024).is_none(), "a directory");
        let big = dir.path().join("big.json");
        fs::write(&big, format!("\"{}\"", "x".repeat(100))).unwrap();
        assert!(read_json_capped::<String>(&big, 50).is_none());
        assert_eq!(read_json_capped::<String>(&big, 200).unwrap().len(), 100);
    }

    #[test]
    fn reads_cri_annotations_through_the_bundle() {
        let root = tempfile::tempdir().unwrap();
        let config = serde_json::json!({"ociVersion": "1.0.2", "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "app",
            "io.kubernetes.cri.sandbox-name": "web-0",
            "io.kubernetes.cri.sandbox-namespace": "prod",
            "io.kubernetes.cri.sandbox-uid": "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
            "io.kubernetes.cri.image-name": "docker.io/library/nginx:1"}});
        let oci = bundle_with(root.path(), "c1", config.to_string().as_bytes());
        let m = oci.lookup(Runtime::Containerd, "c1", None, Duration::ZERO, &AtomicBool::new(false)).unwrap();
        assert_eq!((m.name.as_str(), m.pod_name.as_str(), m.pod_sandbox), ("app", "web-0", Some(false)));
        assert_eq!(m.image, "docker.io/library/nginx:1");
        assert_eq!(
            oci.lookup(Runtime::Unknown, "c1", None, Duration::ZERO, &AtomicBool::new(false)).unwrap().pod_namespace,
            "prod"
        );
    }

    #[test]
    fn the_bundles_config_gives_the_security_profile_and_apply_to_keeps_the_hooks() {
        let root = tempfile::tempdir().unwrap();
        let config = br#"{"process":{"user":{"uid":0},"capabilities":{"bounding":["CAP_CHOWN","CAP_SYS_ADMIN"]}},
            "linux":{"namespaces":[{"type":"mount"},{"type":"network"}]},
            "mounts":[{"destination":"/var/run/docker.sock","source":"/var/run/docker.sock","type":"bind","options":["rbind"]}]}"#;
        let oci = bundle_with(root.path(), "s1", config);
        let m = oci.lookup(Runtime::Containerd, "s1", None, Duration::ZERO, &AtomicBool::new(false)).unwrap();
        let profile = m.security.clone().expect("a profile from config.json");
        assert_eq!(profile.capabilities_added, ["CAP_SYS_ADMIN"]);
        assert!(profile.host_namespaces.iter().any(|n| n == "pid") && profile.run_as_root);
        assert!(profile.host_mounts.iter().any(|h| h.sensitive), "{:?}", profile.host_mounts);
        let mut c = ctwatch::Container::new("s1", Runtime::Containerd);
        m.apply_to(&mut c);
        assert_eq!(c.security.as_deref(), Some(&*profile));
        // The hook's profile (read before the start) stays.
        let hooks = std::sync::Arc::new(SecurityProfile::from_config_bytes(b"{}").unwrap());
        c.security = Some(hooks.clone());
        m.apply_to(&mut c);
        assert_eq!(c.security, Some(hooks));
    }

    #[test]
    fn malformed_huge_or_hostile_files_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        assert!(bundle_with(root.path(), "bad", b"{not json")
            .lookup(Runtime::Containerd, "bad", None, Duration::ZERO, &AtomicBool::new(false))
            .is_none());
        let huge = vec![b' '; (MAX_FILE + 10) as usize];
        assert!(bundle_with(root.path(), "huge", &huge)
            .lookup(Runtime::Containerd, "huge", None, Duration::ZERO, &AtomicBool::new(false))
            .is_none());
        let hostile =
            serde_json::json!({"annotations": {"io.kubernetes.cri.container-name": "x\u{1b}[2J\ny".repeat(1000)}});
        let m = bundle_with(root.path(), "hostile", hostile.to_string().as_bytes())
            .lookup(Runtime::Containerd, "hostile", None, Duration::ZERO, &AtomicBool::new(false))
            .unwrap();
        assert!(
            m.name.chars().count() <= crate::metadata::MAX_NAME && !m.name.contains('\n') && !m.name.contains('\u{1b}')
        );
        let oci = OciState::new(HostStateDirs::under(root.path()));
        assert!(oci.lookup(Runtime::Containerd, "../../etc", None, Duration::ZERO, &AtomicBool::new(false)).is_none());
        assert!(oci.lookup(Runtime::Containerd, "missing", None, Duration::ZERO, &AtomicBool::new(false)).is_none());
    }
}
