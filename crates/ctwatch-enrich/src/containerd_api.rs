//! containerd enrichment: the container record (image, labels) in whichever
//! namespace holds it, and the image's digest from containerd's image store.

use std::path::Path;

use ctwatch::Runtime;
use ctwatch_protos::containerd::services::v1::containers_client::ContainersClient;
use ctwatch_protos::containerd::services::v1::images_client::ImagesClient;
use ctwatch_protos::containerd::services::v1::namespaces_client::NamespacesClient;
use ctwatch_protos::containerd::services::v1::{GetContainerRequest, GetImageRequest, ListNamespacesRequest};
use tonic::Code;

use crate::grpc::{in_namespace, GrpcDaemon};
use crate::metadata::{clean, sha256_digest, Metadata, MAX_IMAGE, MAX_NAME};
use crate::EnrichError;

/// containerd's own API at one socket.
pub struct ContainerdApi {
    daemon: GrpcDaemon,
}

impl ContainerdApi {
    /// containerd answering at `socket`.
    pub fn new(socket: &Path) -> Self {
        ContainerdApi { daemon: GrpcDaemon::new(Runtime::Containerd, socket) }
    }

    /// Where it answers.
    pub fn socket(&self) -> &Path {
        self.daemon.socket()
    }

    /// What containerd says of container `id`, looking in `namespace` first,
    /// then in every namespace; `Ok(None)` when no namespace holds it.
    pub async fn lookup(&self, id: &str, namespace: Option<&str>) -> Result<Option<Metadata>, EnrichError> {
        let result = self.try_lookup(id, namespace).await;
        self.daemon.record(&result).await;
        result
    }

    async fn try_lookup(&self, id: &str, namespace: Option<&str>) -> Result<Option<Metadata>, EnrichError> {
        let channel = self.daemon.channel().await?;
        let mut namespaces: Vec<String> = namespace.map(str::to_string).into_iter().collect();
        let listed = NamespacesClient::new(channel.clone())
            .list(ListNamespacesRequest { filter: String::new() })
            .await
            .map_err(|e| self.daemon.unavailable(&e))?;
        namespaces.extend(
            listed.into_inner().namespaces.into_iter().map(|n| n.name).filter(|n| Some(n.as_str()) != namespace),
        );
        let mut containers = ContainersClient::new(channel.clone());
        for ns in &namespaces {
            let Some(request) = in_namespace(GetContainerRequest { id: id.to_string() }, ns) else {
                continue;
            };
            let container = match containers.get(request).await {
                Ok(response) => response.into_inner().container,
                Err(status) if status.code() == Code::NotFound => continue,
                Err(status) => return Err(self.daemon.unavailable(&status)),
            };
            let Some(container) = container else { continue };
            let mut m = Metadata { runtime: Some(Runtime::Containerd), ..Metadata::default() };
            m.image = clean(&container.image, MAX_IMAGE);
            let labels = &container.labels;
            m.add_labels(labels);
            if m.name.is_empty() {
                let nerdctl = labels.get("nerdctl/name").map(String::as_str).unwrap_or("");
                m.name = clean(if nerdctl.is_empty() { id } else { nerdctl }, MAX_NAME);
            }
            if labels.get("io.cri-containerd.kind").map(String::as_str) == Some("sandbox") {
                m.pod_sandbox = Some(true);
            }
            m.image_digest = self.image_digest(channel.clone(), &container.image, ns).await;
            return Ok(Some(m));
        }
        Ok(None)
    }

    async fn image_digest(&self, channel: tonic::transport::Channel, image: &str, ns: &str) -> String {
        if image.is_empty() {
            return String::new();
        }
        let Some(request) = in_namespace(GetImageRequest { name: image.to_string() }, ns) else {
            return String::new();
        };
        match ImagesClient::new(channel).get(request).await {
            Ok(response) => response
                .into_inner()
                .image
                .and_then(|i| i.target)
                .map(|target| sha256_digest(&target.digest))
                .unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}
