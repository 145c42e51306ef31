//! CRI enrichment (containerd's CRI plugin, CRI-O): the container's status,
//! and its pod's from PodSandboxStatus; a pod's sandbox (pause) container
//! itself gets `pod_sandbox: true`.

use std::path::Path;

use ctwatch::Runtime;
use ctwatch_protos::cri::v1::image_service_client::ImageServiceClient;
use ctwatch_protos::cri::v1::runtime_service_client::RuntimeServiceClient;
use ctwatch_protos::cri::v1::{
    ContainerFilter, ContainerState, ContainerStatusRequest, ImageSpec, ImageStatusRequest, ListContainersRequest,
    PodSandboxStatusRequest,
};

use crate::containerd_api::image_target_digest;
use crate::exit::{from_unix_nanos, ExitInfo};
use tonic::Code;

use crate::grpc::GrpcDaemon;
use crate::metadata::{clean, sha256_digest, Metadata, MAX_ID, MAX_IMAGE, MAX_NAME};
use crate::EnrichError;

/// The containerd namespace of containerd's CRI plugin.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The digest in the repo digest (`repo@sha256:...`) whose repository is the
/// one in `named` (an image reference), else the first; `None` when there is none.
pub fn choose_repo_digest(repo_digests: &[String], named: &str) -> Option<String> {
    let repo = named.rsplit_once('@').map_or(named, |(r, _)| r);
    let repo = repo.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')).map_or(repo, |(r, _)| r);
    let chosen = repo_digests.iter().find(|d| d.starts_with(&format!("{repo}@"))).or(repo_digests.first())?;
    Some(sha256_digest(chosen)).filter(|d| !d.is_empty())
}

/// A CRI runtime service at one socket.
pub struct CriApi {
    daemon: GrpcDaemon,
}

impl CriApi {
    /// The CRI service of `runtime` at `socket`.
    pub fn new(runtime: Runtime, socket: &Path) -> Self {
        CriApi { daemon: GrpcDaemon::new(runtime, socket) }
    }

    /// Which runtime it is.
    pub fn runtime(&self) -> Runtime {
        self.daemon.runtime()
    }

    /// Where it answers.
    pub fn socket(&self) -> &Path {
        self.daemon.socket()
    }

    /// What the CRI service says of `id` (a container or a pod sandbox).
    pub async fn lookup(&self, id: &str) -> Result<Option<Metadata>, EnrichError> {
        let result = self.try_lookup(id).await;
        self.daemon.record(&result).await;
        result
    }

    /// The image's repo (manifest) digest: from the CRI image service's
    /// `ImageStatus` (matching the repository named when there are several);
    /// for containerd's CRI plugin, when the image has no repo digest (it
    /// was imported, not pulled), the manifest digest its image store holds
    /// for the image's name (namespace `k8s.io`), as `ctr images ls` shows
    /// it. `None` when the store knows no manifest digest.
    pub async fn repo_digest(&self, image_ref: &str, named: &str) -> Option<String> {
        if image_ref.is_empty() {
            return None;
        }
        let channel = self.daemon.channel().await.ok()?;
        let mut images = ImageServiceClient::new(channel.clone());
        let spec = ImageSpec { image: image_ref.to_string(), ..ImageSpec::default() };
        let image = images
            .image_status(ImageStatusRequest { image: Some(spec), verbose: false })
            .await
            .ok()?
            .into_inner()
            .image?;
        if let Some(digest) = choose_repo_digest(&image.repo_digests, named) {
            return Some(digest);
        }
        if self.runtime() != Runtime::Containerd {
            return None;
        }
        // The name the user gave when it is one of the image's tags, else its first tag.
        let name = image.repo_tags.iter().find(|t| t.as_str() == named).or(image.repo_tags.first())?;
        Some(image_target_digest(channel, name, CRI_NAMESPACE).await).filter(|d| !d.is_empty())
    }

    /// How container `id` ended, from the CRI's `ContainerStatus` (the CRI
    /// keeps an exited container until it is removed): exit code (or signal,
    /// by the `128 + n` convention), `oom_killed` from reason `OOMKilled`,
    /// start and finish times. `Ok(None)` when it is unknown or still running.
    pub async fn exit_info(&self, id: &str) -> Result<Option<ExitInfo>, EnrichError> {
        let mut client = RuntimeServiceClient::new(self.daemon.channel().await?);
        let status = match client
            .container_status(ContainerStatusRequest { container_id: id.to_string(), verbose: false })
            .await
        {
            Ok(response) => response.into_inner().status,
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(self.daemon.unavailable(&status)),
        };
        Ok(status.filter(|s| s.state == ContainerState::ContainerExited as i32).map(|s| {
            let mut info = ExitInfo::from_runtime_status(i64::from(s.exit_code));
            info.oom_killed = Some(s.reason == "OOMKilled");
            info.started_at = from_unix_nanos(s.started_at);
            info.finished_at = from_unix_nanos(s.finished_at);
            info
        }))
    }

    async fn try_lookup(&self, id: &str) -> Result<Option<Metadata>, EnrichError> {
        let mut client = RuntimeServiceClient::new(self.daemon.channel().await?);
        let filter = ContainerFilter { id: id.to_string(), ..ContainerFilter::default() };
        let listed = client
            .list_containers(ListContainersRequest { filter: Some(filter) })
            .await
            .map_err(|e| self.daemon.unavailable(&e))?
            .into_inner();
        let mut m = Metadata { runtime: Some(self.runtime()), ..Metadata::default() };
        let sandbox_id = match listed.containers.into_iter().find(|c| c.id == id) {
            Some(container) => {
                m.add_labels(&container.labels);
                if let Some(meta) = &container.metadata {
                    m.name = clean(&meta.name, MAX_NAME);
                }
                m.image = clean(container.image.as_ref().map_or("", |i| i.user_specified_image.as_str()), MAX_IMAGE);
                if m.image.is_empty() {
                    m.image = clean(container.image.as_ref().map_or("", |i| i.image.as_str()), MAX_IMAGE);
                }
                // `image_ref` is the image ID (config digest); the repo (manifest)
                // digest, which containerd's own API and `ctr images ls` show, wins.
                m.image_digest = match self.repo_digest(&container.image_ref, &m.image).await {
                    Some(digest) => digest,
                    None => sha256_digest(&container.image_ref),
                };
                m.pod_sandbox = Some(false);
                container.pod_sandbox_id
            }
            None => id.to_string(), // maybe a sandbox itself
        };
        let status = match client
            .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: sandbox_id.clone(), verbose: false })
            .await
        {
            Ok(response) => response.into_inner().status,
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => return Err(self.daemon.unavailable(&status)),
        };
        let Some(sandbox) = status else {
            return Ok((sandbox_id != id).then_some(m));
        };
        if let Some(meta) = &sandbox.metadata {
            m.pod_name = clean(&meta.name, MAX_NAME);
            m.pod_namespace = clean(&meta.namespace, MAX_NAME);
            m.pod_uid = clean(&meta.uid, MAX_ID);
        }
        if sandbox_id == id {
            m.pod_sandbox = Some(true);
            if m.name.is_empty() {
                m.name = m.pod_name.clone();
            }
        }
        Ok(Some(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repo_digest_of_the_named_repository_is_chosen() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let digests = vec![format!("docker.io/x/one@sha256:{a}"), format!("docker.io/local/busybox@sha256:{b}")];
        assert_eq!(choose_repo_digest(&digests, "docker.io/local/busybox:1"), Some(format!("sha256:{b}")));
        assert_eq!(choose_repo_digest(&digests, "localhost:5000/other"), Some(format!("sha256:{a}")), "else the first");
        assert_eq!(choose_repo_digest(&[], "docker.io/local/busybox:1"), None);
        assert_eq!(choose_repo_digest(&["junk".to_string()], "x"), None);
    }
}
