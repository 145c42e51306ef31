//! What enrichment learns about a container, and how untrusted values are
//! made safe: names, labels and annotations come from whoever started the
//! container.

use std::collections::{BTreeMap, HashMap};

use std::sync::Arc;

use ctwatch::{Container, Runtime, SecurityProfile};

/// Longest container or pod name kept (Kubernetes names are at most 253).
pub const MAX_NAME: usize = 253;
/// Longest image reference kept.
pub const MAX_IMAGE: usize = 1024;
/// Longest digest or UID kept.
pub const MAX_ID: usize = 128;
/// Most labels kept per container.
pub const MAX_LABELS: usize = 256;
/// Longest label key kept.
pub const MAX_LABEL_KEY: usize = 253;
/// Longest label value kept.
pub const MAX_LABEL_VALUE: usize = 4096;

/// Fields learned about a container; empty strings mean "not known".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The runtime that knows the container, when the cgroup path did not say.
    pub runtime: Option<Runtime>,
    /// Container name (no leading `/`).
    pub name: String,
    /// Image as the user named it.
    pub image: String,
    /// `sha256:<hex>`: the repo digest when the image has one, else the image ID.
    pub image_digest: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod UID.
    pub pod_uid: String,
    /// True for a pod's sandbox (pause) container, when known.
    pub pod_sandbox: Option<bool>,
    /// The runtime's labels for the container (cleaned, at most [`MAX_LABELS`]).
    pub labels: BTreeMap<String, String>,
    /// The security profile derived from the bundle's `config.json`, when it was read.
    pub security: Option<Arc<SecurityProfile>>,
}

impl Metadata {
    /// Takes every field `other` knows, keeping ours where it knows nothing.
    pub fn merge(&mut self, other: Metadata) {
        let take = |mine: &mut String, theirs: String| {
            if !theirs.is_empty() {
                *mine = theirs;
            }
        };
        take(&mut self.name, other.name);
        take(&mut self.image, other.image);
        take(&mut self.image_digest, other.image_digest);
        take(&mut self.pod_name, other.pod_name);
        take(&mut self.pod_namespace, other.pod_namespace);
        take(&mut self.pod_uid, other.pod_uid);
        self.pod_sandbox = other.pod_sandbox.or(self.pod_sandbox);
        if !other.labels.is_empty() {
            self.labels = other.labels;
        }
        self.runtime = other.runtime.or(self.runtime);
        self.security = other.security.or(self.security.take());
    }

    /// Writes what is known into `container`; a known runtime replaces `unknown` only.
    pub fn apply_to(&self, container: &mut Container) {
        let put = |field: &mut String, value: &str| {
            if !value.is_empty() {
                *field = value.to_string();
            }
        };
        put(&mut container.name, &self.name);
        put(&mut container.image, &self.image);
        put(&mut container.image_digest, &self.image_digest);
        put(&mut container.pod.name, &self.pod_name);
        put(&mut container.pod.namespace, &self.pod_namespace);
        put(&mut container.pod.uid, &self.pod_uid);
        if let Some(sandbox) = self.pod_sandbox {
            container.pod.sandbox = sandbox;
        }
        if !self.labels.is_empty() {
            container.labels = self.labels.clone();
        }
        if let (Runtime::Unknown, Some(runtime)) = (container.runtime, self.runtime) {
            container.runtime = runtime;
        }
        // The hook's profile (read before the start) is kept over the bundle's.
        if let (None, Some(security)) = (&container.security, &self.security) {
            container.security = Some(security.clone());
        }
    }

    /// Keeps the runtime's labels: cleaned, the first [`MAX_LABELS`] in key order.
    pub fn set_labels(&mut self, labels: &HashMap<String, String>) {
        let mut sorted: Vec<_> = labels.iter().collect();
        sorted.sort();
        self.labels = sorted
            .into_iter()
            .take(MAX_LABELS)
            .map(|(k, v)| (clean(k, MAX_LABEL_KEY), clean(v, MAX_LABEL_VALUE)))
            .collect();
    }

    /// The runtime's labels, and the pod data in kubelet-style ones (as
    /// cri-dockerd sets them on Docker containers, and CRI clients on containerd's).
    pub fn add_labels(&mut self, labels: &HashMap<String, String>) {
        self.set_labels(labels);
        let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or("");
        self.pod_name = clean(get("io.kubernetes.pod.name"), MAX_NAME);
        self.pod_namespace = clean(get("io.kubernetes.pod.namespace"), MAX_NAME);
        self.pod_uid = clean(get("io.kubernetes.pod.uid"), MAX_ID);
        let container_name = get("io.kubernetes.container.name");
        if !container_name.is_empty() {
            self.name = clean(container_name, MAX_NAME);
        }
        if get("io.kubernetes.docker.type") == "podsandbox" || container_name == "POD" {
            self.pod_sandbox = Some(true);
        } else if !self.pod_name.is_empty() {
            self.pod_sandbox = Some(false);
        }
    }

    /// Pod data and image from OCI annotations: containerd's CRI plugin
    /// (`io.kubernetes.cri.*`) and CRI-O (`io.kubernetes.*`, `io.kubernetes.cri-o.*`).
    pub fn add_annotations(&mut self, a: &HashMap<String, String>) {
        let get = |k: &str| a.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let first = |keys: &[&str], max| keys.iter().find_map(|k| get(k)).map(|v| clean(v, max)).unwrap_or_default();
        self.pod_name = first(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"], MAX_NAME);
        self.pod_namespace = first(&["io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace"], MAX_NAME);
        self.pod_uid = first(&["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"], MAX_ID);
        self.name = first(&["io.kubernetes.cri.container-name", "io.kubernetes.container.name"], MAX_NAME);
        self.image = first(&["io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName"], MAX_IMAGE);
        match get("io.kubernetes.cri.container-type").or_else(|| get("io.kubernetes.cri-o.ContainerType")) {
            Some("sandbox") => self.pod_sandbox = Some(true),
            Some(_) => self.pod_sandbox = Some(false),
            None => {}
        }
        if self.pod_sandbox == Some(true) && self.name.is_empty() {
            self.name = self.pod_name.clone();
        }
    }
}

pub use ctwatch::untrusted::clean;

/// `sha256:<hex>` from a digest, a repo digest (`repo@sha256:<hex>`) or an
/// image ID; empty when it is none of these.
pub fn sha256_digest(value: &str) -> String {
    let digest = value.rsplit_once('@').map_or(value, |(_, d)| d);
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("sha256:{}", hex.to_ascii_lowercase())
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_values_are_capped_and_cleaned() {
        assert_eq!(clean("a\nb\u{1b}[31m", 10), "a\u{fffd}b\u{fffd}[31m");
        assert_eq!(clean(&"x".repeat(10_000), MAX_NAME).len(), MAX_NAME);
        assert_eq!(clean("ünïcödé", 3), "ünï");
    }

    #[test]
    fn digests_are_normalised() {
        let hex = "a".repeat(64);
        assert_eq!(sha256_digest(&format!("docker.io/library/x@sha256:{hex}")), format!("sha256:{hex}"));
        assert_eq!(sha256_digest(&format!("sha256:{}", hex.to_uppercase())), format!("sha256:{hex}"));
        assert_eq!(sha256_digest("sha256:short"), "");
        assert_eq!(sha256_digest("local/busybox:1"), "");
    }

    #[test]
    fn the_daemon_that_knows_a_container_names_its_runtime() {
        let mut c = ctwatch::Container {
            cgroup_id: 1,
            cgroup_path: "/kubepods/x".into(),
            ctime_ns: 1,
            ..ctwatch::Container::new("x", Runtime::Unknown)
        };
        let m = Metadata { runtime: Some(Runtime::Containerd), name: "app".into(), ..Metadata::default() };
        m.apply_to(&mut c);
        assert_eq!((c.runtime, c.name.as_str()), (Runtime::Containerd, "app"));
        // A runtime the path already told is not overridden.
        let mut d = ctwatch::Container { runtime: Runtime::Docker, ..c.clone() };
        Metadata { runtime: Some(Runtime::Podman), ..Metadata::default() }.apply_to(&mut d);
        assert_eq!(d.runtime, Runtime::Docker);
    }

    #[test]
    fn cri_annotations_give_pod_data() {
        let a: HashMap<String, String> = [
            ("io.kubernetes.cri.container-type", "sandbox"),
            ("io.kubernetes.cri.sandbox-name", "web-0"),
            ("io.kubernetes.cri.sandbox-namespace", "prod"),
            ("io.kubernetes.cri.sandbox-uid", "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut m = Metadata::default();
        m.add_annotations(&a);
        assert_eq!((m.pod_name.as_str(), m.pod_namespace.as_str(), m.pod_sandbox), ("web-0", "prod", Some(true)));
    }
}
