//! Health over a real unix socket: NOT_SERVING until the agent says the scan
//! at start is done, and requests made before then wait for it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ctwatch::cgroupfs::{CgroupVersion, Hierarchy};
use ctwatch::{SharedStore, Store};
use ctwatch_agent::{DataSource, HostView, Metrics};
use ctwatch_api::client::{self, ServingStatus};
use ctwatch_api::pb;
use ctwatch_api::server::{serve, ContainersService, StandardServices, UnixSocket};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_until_the_scan_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let hierarchy = Hierarchy {
        mount_point: PathBuf::from("/nonexistent"),
        version: CgroupVersion::V2,
        controllers: vec![],
        hierarchy_id: 0,
    };
    let host = HostView { hierarchy, proc_root: PathBuf::from("/proc") };
    let data_source = DataSource::new(SharedStore::new(Store::default()), host, Arc::new(Metrics::new()));
    let mut socket = UnixSocket::bind(&path, 0o600, None).unwrap();
    let standard = StandardServices::new().await.unwrap();
    let readiness = standard.readiness();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = ContainersService::new(data_source.clone(), 16);
    let server = tokio::spawn(async move {
        serve(service, standard, &mut socket, None, async {
            let _ = stopped.await;
        })
        .await
    });

    for service in ["", ctwatch_api::SERVICE_NAME] {
        assert_eq!(client::health(&path, service).await.unwrap(), ServingStatus::NotServing, "{service:?}");
    }
    // A List before the scan is done waits (here past the client's deadline).
    let mut containers = client::connect(&path).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), containers.list(pb::ListRequest::default())).await;
    assert!(early.is_err(), "List answered before the scan was done");

    data_source.set_scanned();
    readiness.set_serving().await;
    for service in ["", ctwatch_api::SERVICE_NAME] {
        assert_eq!(client::health(&path, service).await.unwrap(), ServingStatus::Serving, "{service:?}");
    }
    let listed = containers.list(pb::ListRequest::default()).await.unwrap().into_inner();
    assert!(listed.containers.is_empty());
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
