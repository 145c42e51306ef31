//! A Kubernetes pod without a cluster, driven over CRI as kubelet would.

use std::collections::HashMap;

use super::{hex_id, unique};
use ctwatch_protos::cri::v1::runtime_service_client::RuntimeServiceClient;
use ctwatch_protos::cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxContainerConfig, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::Channel;

/// containerd's socket (its CRI plugin answers there).
pub const SOCKET: &str = "/run/containerd/containerd.sock";

/// A running pod: its sandbox and containers.
pub struct Pod {
    pub sandbox_id: String,
    pub containers: Vec<(String, String)>, // (name, id)
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// Runs a pod with containers `app` and `sidecar` (busybox `sleep 60`), cgroup parent under /kubepods.
pub async fn run_pod(cri: &mut RuntimeServiceClient<Channel>, tag: &str) -> Pod {
    let name = unique(tag);
    let namespace = "ctwatch-test".to_string();
    let h = hex_id(&name);
    let uid = format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: namespace.clone(),
            attempt: 0,
        }),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..NamespaceOption::default()
                }),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    };
    let sandbox_id = cri
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(sandbox_config.clone()), runtime_handler: String::new() })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let mut containers = Vec::new();
    for container in ["app", "sidecar"] {
        let labels: HashMap<String, String> = [
            ("io.kubernetes.pod.name", name.as_str()),
            ("io.kubernetes.pod.namespace", namespace.as_str()),
            ("io.kubernetes.pod.uid", uid.as_str()),
            ("io.kubernetes.container.name", container),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: container.to_string(), attempt: 0 }),
            image: Some(ImageSpec { image: "docker.io/local/busybox:1".into(), ..ImageSpec::default() }),
            command: vec!["sleep".into(), "60".into()],
            labels,
            linux: Some(LinuxContainerConfig::default()),
            ..ContainerConfig::default()
        };
        let id = cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox_id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        cri.start_container(StartContainerRequest { container_id: id.clone() }).await.expect("StartContainer");
        containers.push((container.to_string(), id));
    }
    Pod { sandbox_id, containers, name, namespace, uid }
}

/// A CRI client on containerd's socket.
pub async fn connect() -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(ctwatch_protos::connect(SOCKET).await.expect("CRI socket"))
}

/// Stops and removes a pod.
pub async fn remove_pod(cri: &mut RuntimeServiceClient<Channel>, sandbox_id: &str) {
    let id = sandbox_id.to_string();
    cri.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await.unwrap();
    cri.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }).await.unwrap();
}
