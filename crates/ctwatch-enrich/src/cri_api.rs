//! CRI enrichment (containerd's CRI plugin, CRI-O): the container's status,
//! and its pod's from PodSandboxStatus; a pod's sandbox (pause) container
//! itself gets `pod_sandbox: true`.

use std::path::Path;

use ctwatch::Runtime;
use ctwatch_protos::cri::v1::runtime_service_client::RuntimeServiceClient;
use ctwatch_protos::cri::v1::{ContainerFilter, ListContainersRequest, PodSandboxStatusRequest};
use tonic::Code;

use crate::grpc::GrpcDaemon;
use crate::metadata::{clean, sha256_digest, Metadata, MAX_ID, MAX_IMAGE, MAX_NAME};
use crate::EnrichError;

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
                m.image_digest = sha256_digest(&container.image_ref);
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
