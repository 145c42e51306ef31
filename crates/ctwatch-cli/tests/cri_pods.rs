//! A Kubernetes pod without a cluster: containerd's CRI plugin runs a real
//! pod sandbox and two containers, driven by a CRI client here as kubelet
//! would (cgroup parent `/kubepods/besteffort/pod<uid>`, kubelet-style labels).

mod common;

use std::collections::HashMap;

use common::*;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest, ImageSpec,
    LinuxContainerConfig, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest,
};
use tonic::transport::Channel;

const SOCKET: &str = "/run/containerd/containerd.sock";

struct Pod {
    sandbox_id: String,
    containers: Vec<(String, String)>, // (name, id)
    name: String,
    namespace: String,
    uid: String,
}

async fn run_pod(cri: &mut RuntimeServiceClient<Channel>, tag: &str) -> Pod {
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

#[test]
fn a_pods_sandbox_and_containers_carry_their_pod_data() {
    require_root();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut cri =
        rt.block_on(async { RuntimeServiceClient::new(containerd_client::connect(SOCKET).await.expect("CRI socket")) });
    let mut watch = Watch::start(&["--no-existing"]);
    let pod = rt.block_on(run_pod(&mut cri, "pod"));

    let mut ids: Vec<&str> = vec![pod.sandbox_id.as_str()];
    ids.extend(pod.containers.iter().map(|(_, id)| id.as_str()));
    for id in &ids {
        watch.wait_for("container_create", id);
    }
    let args_of = |id: &str| watch.event("container_create", id).clone();

    let sandbox = args_of(&pod.sandbox_id);
    assert_eq!(sandbox["enriched"], true, "{sandbox}");
    let a = &sandbox["args"];
    assert_eq!(a["runtime"], "containerd");
    assert_eq!(a["pod_sandbox"], true);
    assert_eq!(
        (a["pod_name"].as_str(), a["pod_namespace"].as_str(), a["pod_uid"].as_str()),
        (Some(pod.name.as_str()), Some(pod.namespace.as_str()), Some(pod.uid.as_str()))
    );

    for (name, id) in &pod.containers {
        let status = rt
            .block_on(cri.container_status(ContainerStatusRequest { container_id: id.clone(), verbose: false }))
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        let e = args_of(id);
        assert_eq!(e["enriched"], true, "{e}");
        let a = &e["args"];
        assert_eq!(a["runtime"], "containerd");
        assert_eq!(a["pod_sandbox"], false);
        assert_eq!(a["container_name"], name.as_str());
        assert_eq!(a["container_name"], status.metadata.unwrap().name.as_str());
        assert_eq!(
            (a["pod_name"].as_str(), a["pod_namespace"].as_str(), a["pod_uid"].as_str()),
            (Some(pod.name.as_str()), Some(pod.namespace.as_str()), Some(pod.uid.as_str()))
        );
        assert_eq!(a["container_image"], "docker.io/local/busybox:1");
        assert_eq!(a["container_image_digest"], status.image_ref.as_str(), "the digest CRI reports");
    }

    rt.block_on(async {
        cri.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.sandbox_id.clone() }).await.unwrap();
        cri.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.sandbox_id.clone() }).await.unwrap();
    });
    for id in &ids {
        watch.wait_for("container_remove", id);
    }
}
