//! A Kubernetes pod without a cluster: containerd's CRI plugin runs a real
//! pod sandbox and two containers, driven by a CRI client here as kubelet
//! would (cgroup parent `/kubepods/besteffort/pod<uid>`, kubelet-style labels).

mod common;

use common::cri::{self, run_pod};
use common::*;
use ctwatch_protos::cri::v1::ContainerStatusRequest;

#[test]
fn a_pods_sandbox_and_containers_carry_their_pod_data() {
    require_root();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut cri = rt.block_on(cri::connect());
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
        // The manifest digest containerd's image store holds (what `ctr images ls` shows, and
        // what `ctr` containers of the image get), not CRI's image_ref (the config digest).
        let listed = run("ctr", &["-n", "k8s.io", "images", "ls", "name==docker.io/local/busybox:1"]);
        let digest = listed.lines().nth(1).and_then(|l| l.split_whitespace().nth(2)).unwrap();
        assert_eq!(a["container_image_digest"], digest, "the manifest digest, not {}", status.image_ref);
    }

    rt.block_on(cri::remove_pod(&mut cri, &pod.sandbox_id));
    for id in &ids {
        watch.wait_for("container_remove", id);
    }
}
