//! containerd enrichment: the container record (image, labels) in whichever
//! namespace holds it, and the image's digest from containerd's image store.

use std::path::Path;

use ctwatch::Runtime;
use ctwatch_protos::containerd::events::{TaskExit, TaskOom};
use ctwatch_protos::containerd::services::events::v1::events_client::EventsClient;
use ctwatch_protos::containerd::services::events::v1::SubscribeRequest;
use ctwatch_protos::containerd::services::tasks::v1::{self as tasks, tasks_client::TasksClient};
use ctwatch_protos::containerd::services::v1::containers_client::ContainersClient;
use ctwatch_protos::containerd::services::v1::images_client::ImagesClient;
use ctwatch_protos::containerd::services::v1::namespaces_client::NamespacesClient;
use ctwatch_protos::containerd::services::v1::{GetContainerRequest, GetImageRequest, ListNamespacesRequest};
use ctwatch_protos::containerd::v1::types::Status as TaskStatus;
use prost::Message;
use tonic::Code;

use crate::exit::{from_timestamp, ExitCache, ExitInfo};

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

    /// How container `id`'s task ended, from containerd's tasks service (the
    /// task stays, stopped, until deleted: `ctr run` without `--rm`, or until
    /// its client deletes it). `Ok(None)` when there is no task or it still
    /// runs; a task deleted at once (`ctr run --rm`, the CRI plugin) is known
    /// from [`ContainerdApi::follow_exits`] (or the CRI's container status).
    pub async fn task_exit(&self, id: &str, namespace: &str) -> Result<Option<ExitInfo>, EnrichError> {
        let channel = self.daemon.channel().await?;
        let Some(request) =
            in_namespace(tasks::GetRequest { container_id: id.to_string(), exec_id: String::new() }, namespace)
        else {
            return Ok(None);
        };
        let process = match TasksClient::new(channel).get(request).await {
            Ok(response) => response.into_inner().process,
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(self.daemon.unavailable(&status)),
        };
        Ok(process.filter(|p| p.status == TaskStatus::Stopped as i32).map(|p| {
            let mut info = ExitInfo::from_runtime_status(i64::from(p.exit_status));
            info.finished_at = from_timestamp(p.exited_at.as_ref());
            info
        }))
    }

    /// Follows containerd's `/tasks/exit` and `/tasks/oom` events (every
    /// namespace) into `cache`, by container ID, until the stream ends or
    /// fails (call again to resume). Exits of exec'd processes are skipped:
    /// only the init's exit is the container's.
    pub async fn follow_exits(&self, cache: &ExitCache) -> Result<(), EnrichError> {
        // A connection of its own, so a stream that broke with a restart leaves the lookups' channel alone.
        let channel = ctwatch_protos::connect(self.socket()).await.map_err(|e| self.daemon.unavailable(&e))?;
        let request = SubscribeRequest {
            filters: vec![r#"topic=="/tasks/exit""#.to_string(), r#"topic=="/tasks/oom""#.to_string()],
        };
        let mut stream =
            EventsClient::new(channel).subscribe(request).await.map_err(|e| self.daemon.unavailable(&e))?.into_inner();
        while let Some(envelope) = stream.message().await.map_err(|e| self.daemon.unavailable(&e))? {
            let Some(event) = envelope.event else { continue };
            match envelope.topic.as_str() {
                "/tasks/exit" => {
                    let Ok(exit) = TaskExit::decode(event.value.as_slice()) else { continue };
                    if exit.id != exit.container_id {
                        continue; // an exec'd process
                    }
                    let mut info = ExitInfo::from_runtime_status(i64::from(exit.exit_status));
                    info.finished_at = from_timestamp(exit.exited_at.as_ref());
                    cache.record(&clean(&exit.container_id, MAX_NAME), info);
                }
                "/tasks/oom" => {
                    let Ok(oom) = TaskOom::decode(event.value.as_slice()) else { continue };
                    cache.record(
                        &clean(&oom.container_id, MAX_NAME),
                        ExitInfo { oom_killed: Some(true), ..ExitInfo::default() },
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn image_digest(&self, channel: tonic::transport::Channel, image: &str, ns: &str) -> String {
        image_target_digest(channel, image, ns).await
    }
}

/// The digest containerd's image store holds for image `name` in namespace
/// `ns`: its target, the manifest (or index) digest that `ctr images ls`
/// shows; empty when unknown.
pub async fn image_target_digest(channel: tonic::transport::Channel, name: &str, ns: &str) -> String {
    if name.is_empty() {
        return String::new();
    }
    let Some(request) = in_namespace(GetImageRequest { name: name.to_string() }, ns) else {
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
