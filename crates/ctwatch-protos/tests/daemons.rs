//! The generated clients against the host's real containerd (and its CRI
//! plugin), over the unix socket `connect` dials.

use ctwatch_protos::containerd::services::v1::namespaces_client::NamespacesClient;
use ctwatch_protos::containerd::services::v1::version_client::VersionClient;
use ctwatch_protos::containerd::services::v1::ListNamespacesRequest;
use ctwatch_protos::cri::v1::runtime_service_client::RuntimeServiceClient;
use ctwatch_protos::cri::v1::VersionRequest;

const SOCKET: &str = "/run/containerd/containerd.sock";

#[tokio::test]
async fn containerd_version_and_namespaces() {
    let channel = ctwatch_protos::connect(SOCKET).await.expect("containerd's socket");
    let version = VersionClient::new(channel.clone()).version(()).await.expect("Version").into_inner();
    assert!(!version.version.is_empty(), "containerd reported no version: {version:?}");
    let namespaces = NamespacesClient::new(channel)
        .list(ListNamespacesRequest::default())
        .await
        .expect("List namespaces")
        .into_inner()
        .namespaces;
    // The CRI plugin's namespace exists on any host where it runs (setup-host.sh enables it).
    assert!(namespaces.iter().any(|n| n.name == "k8s.io"), "no k8s.io namespace in {namespaces:?}");
}

#[tokio::test]
async fn cri_version() {
    let channel = ctwatch_protos::connect(SOCKET).await.expect("containerd's socket");
    let version = RuntimeServiceClient::new(channel)
        .version(VersionRequest { version: "v1".into() })
        .await
        .expect("CRI Version")
        .into_inner();
    assert_eq!(version.runtime_name, "containerd");
    assert_eq!(version.runtime_api_version, "v1");
}

#[tokio::test]
async fn connect_to_nothing_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("ctwatch-protos-no-daemon.sock");
    assert!(ctwatch_protos::connect(&missing).await.is_err());
}
