//! Table tests for the cgroup path classifier: real-world paths per runtime,
//! the negatives, and a property test that no path makes it panic.

use std::fs;

use ctwatch::classify::classify;
use ctwatch::state_dirs::{HostStateDirs, PathOnly};
use ctwatch::Runtime;
use proptest::prelude::*;

const ID: &str = "3f4b1c2d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
const ID2: &str = "aa4b1c2d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8bb";
const POD: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
const POD_US: &str = "0b1c2d3e_4f50_6172_8394_a5b6c7d8e9f0";

/// (path, runtime, container id, is_root, pod uid)
fn positives() -> Vec<(String, Runtime, String, bool, Option<&'static str>)> {
    let mut v = vec![
        // Docker, cgroupfs driver.
        (format!("/docker/{ID}"), Runtime::Docker, ID.into(), true, None),
        (format!("/docker/{ID}/sub"), Runtime::Docker, ID.into(), false, None),
        // Docker, systemd driver.
        (format!("/system.slice/docker-{ID}.scope"), Runtime::Docker, ID.into(), true, None),
        (format!("/system.slice/docker-{ID}.scope/init"), Runtime::Docker, ID.into(), false, None),
        // Rootless Docker.
        (format!("/user.slice/user-1000.slice/user@1000.service/docker-{ID}.scope"), Runtime::Docker, ID.into(), true, None),
        // Docker-in-Docker: the innermost container wins.
        (format!("/docker/{ID}/docker/{ID2}"), Runtime::Docker, ID2.into(), true, None),
        (format!("/docker/{ID}/docker/{ID2}/x/y"), Runtime::Docker, ID2.into(), false, None),
        (format!("/system.slice/docker-{ID}.scope/system.slice/docker-{ID2}.scope"), Runtime::Docker, ID2.into(), true, None),
        // GitHub Actions job containers.
        (format!("/actions_job/{ID}"), Runtime::Docker, ID.into(), true, None),
        // containerd CRI, systemd driver.
        (format!("/system.slice/cri-containerd-{ID}.scope"), Runtime::Containerd, ID.into(), true, None),
        (
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_US}.slice/cri-containerd-{ID}.scope"),
            Runtime::Containerd, ID.into(), true, Some(POD),
        ),
        (
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_US}.slice/cri-containerd-{ID}.scope"),
            Runtime::Containerd, ID.into(), true, Some(POD),
        ),
        // Guaranteed pods sit directly under kubepods.slice.
        (format!("/kubepods.slice/kubepods-pod{POD_US}.slice/cri-containerd-{ID}.scope"), Runtime::Containerd, ID.into(), true, Some(POD)),
        // containerd's "slice:prefix:id" cgroupsPath used verbatim.
        (
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_US}.slice:cri-containerd:{ID}"),
            Runtime::Containerd, ID.into(), true, None,
        ),
        (format!("/system.slice/containerd.service/kubepods-burstable-pod{POD_US}.slice:cri-containerd:{ID}"), Runtime::Containerd, ID.into(), true, None),
        // Kubernetes with the cgroupfs driver: every QoS class, the runtime told by enrichment.
        (format!("/kubepods/besteffort/pod{POD}/{ID}"), Runtime::Unknown, ID.into(), true, Some(POD)),
        (format!("/kubepods/burstable/pod{POD}/{ID}"), Runtime::Unknown, ID.into(), true, Some(POD)),
        (format!("/kubepods/pod{POD}/{ID}"), Runtime::Unknown, ID.into(), true, Some(POD)),
        (format!("/kubepods/burstable/pod{POD}/{ID}/sub"), Runtime::Unknown, ID.into(), false, Some(POD)),
        // Static pods have 32-hex UIDs.
        (format!("/kubepods/burstable/pod0123456789abcdef0123456789abcdef/{ID}"), Runtime::Unknown, ID.into(), true, Some("0123456789abcdef0123456789abcdef")),
        // kubelet with cri-dockerd.
        (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_US}.slice/docker-{ID}.scope"), Runtime::Docker, ID.into(), true, Some(POD)),
        // CRI-O.
        (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_US}.slice/crio-{ID}.scope"), Runtime::Crio, ID.into(), true, Some(POD)),
        (format!("/kubepods/besteffort/pod{POD}/crio-{ID}"), Runtime::Crio, ID.into(), true, Some(POD)),
        (format!("/kubepods.slice/kubepods-pod{POD_US}.slice/crio-{ID}.scope/container"), Runtime::Crio, ID.into(), false, Some(POD)),
        // Podman, cgroupfs and systemd.
        (format!("/libpod_parent/libpod-{ID}"), Runtime::Podman, ID.into(), true, None),
        (format!("/machine.slice/libpod-{ID}.scope"), Runtime::Podman, ID.into(), true, None),
        (format!("/machine.slice/libpod-{ID}.scope/container"), Runtime::Podman, ID.into(), false, None),
        (format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"), Runtime::Podman, ID.into(), true, None),
        // Garden (Cloud Foundry).
        ("/garden/01234567-89ab-cdef-0123-4567".into(), Runtime::Garden, "01234567-89ab-cdef-0123-4567".into(), true, None),
        ("/system.slice/garden.service/garden/abcdef01-2345-6789-abcd-ef01/sub".into(), Runtime::Garden, "abcdef01-2345-6789-abcd-ef01".into(), false, None),
    ];
    // Under a test-owned or custom parent the same names are recognised.
    v.push((format!("/ctwatch-test-1/docker/{ID}"), Runtime::Docker, ID.into(), true, None));
    v
}

#[test]
fn recognises_every_runtime_layout() {
    for (path, runtime, id, is_root, pod_uid) in positives() {
        let c = classify(&path, &PathOnly).unwrap_or_else(|| panic!("{path} should be a container"));
        assert_eq!(c.runtime, runtime, "runtime of {path}");
        assert_eq!(c.container_id, id, "id of {path}");
        assert_eq!(c.is_root, is_root, "root flag of {path}");
        assert_eq!(c.pod_uid.as_deref(), pod_uid, "pod uid of {path}");
        assert!(path.starts_with(&c.root_path), "root {} of {path}", c.root_path);
        if is_root {
            assert_eq!(c.root_path, path.trim_end_matches('/'));
        }
    }
}

#[test]
fn ordinary_cgroups_are_not_containers() {
    let negatives = [
        "/".to_string(),
        String::new(),
        "/user.slice".into(),
        "/user.slice/user-1000.slice/session-3.scope".into(),
        "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-1234.scope".into(),
        "/system.slice/ssh.service".into(),
        "/system.slice/docker.service".into(),
        "/system.slice/containerd.service".into(),
        "/system.slice/snap.lxd.daemon.service".into(),
        "/system.slice/snap-core20-1234.mount".into(),
        "/user.slice/user-1000.slice/user@1000.service/app.slice/snap.firefox.firefox-0b1c2d3e.scope".into(),
        "/init.scope".into(),
        "/docker".into(),
        "/kubepods".into(),
        "/kubepods/besteffort".into(),
        format!("/kubepods/besteffort/pod{POD}"),
        format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_US}.slice"),
        // The runtimes' helpers are not containers.
        format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_US}.slice/crio-conmon-{ID}.scope"
        ),
        format!("/machine.slice/libpod-conmon-{ID}.scope"),
        "/libpod_parent/conmon".to_string(),
        // A bare ID with nothing to confirm it.
        format!("/process_api/{ID}"),
        format!("/{ID}"),
        // Almost-IDs.
        format!("/docker/{}", &ID[..63]),
        format!("/docker/{}", ID.to_uppercase()),
        format!("/system.slice/docker-{}.scope", &ID[..12]),
        "/garden/01234567-89ab-cdef-0123".into(),
        "/somename".into(),
        "/default/mycontainer".into(),
    ];
    for path in negatives {
        assert_eq!(classify(&path, &PathOnly), None, "{path:?} is not a container");
    }
}

#[test]
fn state_dirs_confirm_ambiguous_names() {
    let root = tempfile::tempdir().unwrap();
    let dirs = HostStateDirs::under(root.path());
    fs::create_dir_all(dirs.runc.join("myrunc")).unwrap();
    fs::create_dir_all(dirs.containerd.join("default").join("ctr-1")).unwrap();
    fs::create_dir_all(dirs.containerd.join("k8s.io").join(ID)).unwrap();
    fs::create_dir_all(dirs.docker.join(ID2)).unwrap();

    let c = classify("/myrunc", &dirs).expect("runc container");
    assert_eq!((c.runtime, c.container_id.as_str(), c.is_root), (Runtime::Runc, "myrunc", true));

    let c = classify("/default/ctr-1", &dirs).expect("ctr container");
    assert_eq!((c.runtime, c.container_id.as_str()), (Runtime::Containerd, "ctr-1"));

    // A custom cgroup parent: the namespace is found by looking in each.
    let c = classify("/custom/parent/ctr-1", &dirs).expect("ctr container, custom parent");
    assert_eq!(c.runtime, Runtime::Containerd);

    // CRI without a cgroup parent: /k8s.io/<id>.
    let c = classify(&format!("/k8s.io/{ID}"), &dirs).expect("CRI container");
    assert_eq!(c.runtime, Runtime::Containerd);

    // Inside a pod, the state dir tells the runtime the path does not.
    let c = classify(&format!("/kubepods/besteffort/pod{POD}/{ID}"), &dirs).expect("pod container");
    assert_eq!((c.runtime, c.pod_uid.as_deref()), (Runtime::Containerd, Some(POD)));

    // Docker with --cgroup-parent.
    let c = classify(&format!("/my-parent/{ID2}"), &dirs).expect("docker container, custom parent");
    assert_eq!(c.runtime, Runtime::Docker);

    // No state: no container; and names that could escape the state dir are refused.
    assert_eq!(classify("/other", &dirs), None);
    assert_eq!(classify("/default/..", &dirs), None);
    assert_eq!(classify("/systemd.slice/myrunc.service", &dirs), None);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_paths_never_panic(path in ".{0,300}") {
        let _ = classify(&path, &PathOnly);
    }

    #[test]
    fn arbitrary_path_like_strings_never_panic(
        parts in prop::collection::vec(prop_oneof![
            Just("docker".to_string()), Just("kubepods".to_string()), Just(ID.to_string()),
            Just(format!("docker-{ID}.scope")), Just(format!("pod{POD}")), Just(":".to_string()),
            Just("..".to_string()), Just("".to_string()), "[a-f0-9:_.-]{0,70}", "\\PC{0,20}",
        ], 0..12)
    ) {
        let path = parts.join("/");
        if let Some(c) = classify(&path, &PathOnly) {
            prop_assert!(!c.container_id.is_empty());
            prop_assert!(c.root_path.starts_with('/'));
        }
    }
}
