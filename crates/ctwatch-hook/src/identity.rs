//! Who a container about to be created is (runtime, name, image, digest,
//! pod), found while the runtime waits, without asking a daemon that may be
//! the one waiting: Docker and Podman hold the container's lock during a
//! start, so their APIs would answer only after ctwatch did. Their on-disk
//! records are read instead; CRI pod data is in the annotations; only
//! containerd's API (which does not block on a create) is asked, with a
//! short timeout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ctwatch::{Container, Runtime};
use ctwatch_enrich::containerd_api::ContainerdApi;
use ctwatch_enrich::docker_api::{docker_record_on_disk, docker_repo_digest_on_disk};
use ctwatch_enrich::metadata::{clean, sha256_digest, Metadata, MAX_IMAGE, MAX_NAME};
use ctwatch_enrich::oci_state::read_json_capped;
use serde::Deserialize;

use crate::bundle::BundleConfig;
use crate::invocation::CreateCall;

/// Record files larger than this are not read.
const MAX_RECORD_BYTES: u64 = ctwatch::untrusted::MAX_RUNTIME_FILE;

/// Where the runtimes keep their records.
#[derive(Debug, Clone)]
pub struct IdentitySources {
    /// Docker's data root (`/var/lib/docker`).
    pub docker_root: PathBuf,
    /// containers/storage's graph root, used by Podman (`/var/lib/containers/storage`).
    pub podman_storage: PathBuf,
    /// containerd's socket, for `ctr`-made containers (`None`: not asked).
    pub containerd_socket: Option<PathBuf>,
    /// How long containerd may take.
    pub containerd_timeout: Duration,
}

impl Default for IdentitySources {
    fn default() -> Self {
        IdentitySources {
            docker_root: PathBuf::from("/var/lib/docker"),
            podman_storage: PathBuf::from("/var/lib/containers/storage"),
            containerd_socket: Some(PathBuf::from("/run/containerd/containerd.sock")),
            containerd_timeout: Duration::from_millis(300),
        }
    }
}

/// Which runtime is creating a container, from its annotations and bundle path.
pub fn runtime_of(call: &CreateCall, bundle: &str, annotations: &HashMap<String, String>) -> (Runtime, Option<String>) {
    let annotation = |k: &str| annotations.get(k).map(String::as_str);
    if annotation("io.container.manager") == Some("libpod") {
        return (Runtime::Podman, None);
    }
    if annotation("io.kubernetes.cri.container-type").is_some() {
        return (Runtime::Containerd, Some("k8s.io".into()));
    }
    if annotation("io.kubernetes.cri-o.ContainerType").is_some() {
        return (Runtime::Crio, None);
    }
    if let Some(rest) = bundle.split_once("/io.containerd.runtime.v2.task/").map(|(_, r)| r) {
        let namespace = rest.split('/').next().unwrap_or_default();
        return if namespace == "moby" {
            (Runtime::Docker, None)
        } else {
            (Runtime::Containerd, Some(namespace.to_string()))
        };
    }
    if call.command == "conmon" {
        return (Runtime::Podman, None);
    }
    (Runtime::Runc, None)
}

/// The container as far as can be known before it starts.
pub fn identify(
    call: &CreateCall,
    bundle: &str,
    config: Option<&BundleConfig>,
    sources: &IdentitySources,
    tokio: Option<&tokio::runtime::Runtime>,
) -> Container {
    let empty = HashMap::new();
    let annotations = config.map_or(&empty, |c| &c.annotations);
    let (runtime, namespace) = runtime_of(call, bundle, annotations);
    let mut m = Metadata::default();
    m.add_annotations(annotations);
    let found = match runtime {
        Runtime::Docker => docker_record(&sources.docker_root, &call.id),
        Runtime::Podman => podman_record(&sources.podman_storage, &call.id),
        Runtime::Containerd if m.pod_name.is_empty() => {
            containerd_record(sources, tokio, &call.id, namespace.as_deref())
        }
        _ => None,
    };
    if let Some(found) = found {
        m.merge(found);
    }
    if m.name.is_empty() {
        m.name = clean(call.name.as_deref().unwrap_or(&call.id), MAX_NAME);
    }
    let mut container = Container::new(clean(&call.id, 128), runtime);
    m.apply_to(&mut container);
    container
}

/// Reads a runtime's JSON record file (bounded, never blocking on a FIFO).
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    read_json_capped(path, MAX_RECORD_BYTES)
}

/// Docker's `containers/<id>/config.v2.json`, with the digest from its image store.
fn docker_record(root: &Path, id: &str) -> Option<Metadata> {
    let (mut m, image_id) = docker_record_on_disk(root, id)?;
    m.image_digest = docker_repo_digest_on_disk(root, &image_id).unwrap_or_else(|| sha256_digest(&image_id));
    Some(m)
}

/// containers/storage's records, as Podman leaves them at `podman create`.
fn podman_record(storage: &Path, id: &str) -> Option<Metadata> {
    #[derive(Deserialize)]
    struct StoredContainer {
        id: String,
        #[serde(default)]
        names: Vec<String>,
        #[serde(default)]
        image: String,
        #[serde(default)]
        metadata: String,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct ContainerMetadata {
        #[serde(rename = "image-name")]
        image_name: String,
    }
    #[derive(Deserialize)]
    struct StoredImage {
        id: String,
        #[serde(default)]
        digest: String,
    }
    for driver in ["overlay", "vfs", "btrfs", "zfs"] {
        let Some(containers) =
            read_json::<Vec<StoredContainer>>(&storage.join(format!("{driver}-containers")).join("containers.json"))
        else {
            continue;
        };
        let c = containers.into_iter().find(|c| c.id == id)?;
        let meta: ContainerMetadata = serde_json::from_str(&c.metadata).unwrap_or_default();
        let digest = read_json::<Vec<StoredImage>>(&storage.join(format!("{driver}-images")).join("images.json"))
            .and_then(|images| images.into_iter().find(|i| i.id == c.image))
            .map(|i| i.digest)
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| sha256_digest(&c.image));
        return Some(Metadata {
            runtime: Some(Runtime::Podman),
            name: clean(c.names.first().map_or("", String::as_str), MAX_NAME),
            image: clean(&meta.image_name, MAX_IMAGE),
            image_digest: clean(&digest, 128),
            ..Metadata::default()
        });
    }
    None
}

/// containerd's record for a container made through its API (`ctr run`, nerdctl).
fn containerd_record(
    sources: &IdentitySources,
    tokio: Option<&tokio::runtime::Runtime>,
    id: &str,
    namespace: Option<&str>,
) -> Option<Metadata> {
    let socket = sources.containerd_socket.as_ref()?;
    let tokio = tokio?;
    let api = ContainerdApi::new(socket);
    tokio
        .block_on(async { tokio::time::timeout(sources.containerd_timeout, api.lookup(id, namespace)).await })
        .ok()?
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_from_annotations_and_bundles() {
        let call = CreateCall { id: "x".into(), command: "create".into(), ..CreateCall::default() };
        let none = HashMap::new();
        let t = "/run/containerd/io.containerd.runtime.v2.task";
        assert_eq!(runtime_of(&call, &format!("{t}/moby/x"), &none), (Runtime::Docker, None));
        assert_eq!(runtime_of(&call, &format!("{t}/default/x"), &none), (Runtime::Containerd, Some("default".into())));
        assert_eq!(runtime_of(&call, "/tmp/b", &none), (Runtime::Runc, None));
        let podman = HashMap::from([("io.container.manager".to_string(), "libpod".to_string())]);
        assert_eq!(runtime_of(&call, "/var/lib/containers/x/userdata", &podman).0, Runtime::Podman);
        let cri = HashMap::from([("io.kubernetes.cri.container-type".to_string(), "sandbox".to_string())]);
        assert_eq!(runtime_of(&call, &format!("{t}/k8s.io/x"), &cri).0, Runtime::Containerd);
        let conmon = CreateCall { command: "conmon".into(), ..call };
        assert_eq!(runtime_of(&conmon, "/b", &none).0, Runtime::Podman);
    }

    #[test]
    fn docker_and_podman_records_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let id = "a".repeat(64);
        let docker = dir.path().join("docker");
        std::fs::create_dir_all(docker.join("containers").join(&id)).unwrap();
        std::fs::write(
            docker.join("containers").join(&id).join("config.v2.json"),
            r#"{"Name":"/web","Image":"sha256:1111","Config":{"Image":"nginx:1","Labels":{"k":"v"}}}"#,
        )
        .unwrap();
        std::fs::create_dir_all(docker.join("image/overlay2")).unwrap();
        std::fs::write(
            docker.join("image/overlay2/repositories.json"),
            r#"{"Repositories":{"nginx":{"nginx:1":"sha256:1111","nginx@sha256:2222":"sha256:1111"}}}"#,
        )
        .unwrap();
        let m = docker_record(&docker, &id).unwrap();
        assert_eq!((m.name.as_str(), m.image.as_str(), m.image_digest.as_str()), ("web", "nginx:1", "sha256:2222"));
        assert_eq!(m.labels["k"], "v");
        assert!(docker_record(&docker, "../../etc").is_none());

        let storage = dir.path().join("storage");
        std::fs::create_dir_all(storage.join("overlay-containers")).unwrap();
        std::fs::create_dir_all(storage.join("overlay-images")).unwrap();
        std::fs::write(
            storage.join("overlay-containers/containers.json"),
            format!(
                r#"[{{"id":"{id}","names":["pm"],"image":"img1","metadata":"{{\"image-name\":\"localhost/bb:1\"}}"}}]"#
            ),
        )
        .unwrap();
        std::fs::write(storage.join("overlay-images/images.json"), r#"[{"id":"img1","digest":"sha256:3333"}]"#)
            .unwrap();
        let m = podman_record(&storage, &id).unwrap();
        assert_eq!(
            (m.name.as_str(), m.image.as_str(), m.image_digest.as_str()),
            ("pm", "localhost/bb:1", "sha256:3333")
        );
        assert!(podman_record(&storage, "nope").is_none());
    }
}
