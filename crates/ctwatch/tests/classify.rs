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

/// A Fargate / ECS task ID: 32 hex digits.
const TASK: &str = "409b8b89ccd746bdb9b5e03418406d96";
/// A Nomad allocation ID.
const ALLOC: &str = "5b8e1c2d-3f4a-5b6c-7d8e-9f0a1b2c3d4e";
/// A Mesos / rkt container UUID.
const UUID: &str = "a9f41620-b165-4d24-abe0-af0af92e7b20";

/// (path, runtime, container id, is_root, pod uid); each group names where the
/// layout comes from.
fn positives() -> Vec<(String, Runtime, String, bool, Option<&'static str>)> {
    let uuid_escaped = UUID.replace('-', "\\x2d");
    let mut v = vec![
        // Docker, cgroupfs driver (Falco libsinsp container_cgroup docker_cgroupfs; Tracee containers_test).
        (format!("/docker/{ID}"), Runtime::Docker, ID.into(), true, None),
        (format!("/docker/{ID}/sub"), Runtime::Docker, ID.into(), false, None),
        // Docker, systemd driver (Tetragon procevents proc_test; moby's "system.slice:docker:<id>").
        (format!("/system.slice/docker-{ID}.scope"), Runtime::Docker, ID.into(), true, None),
        (format!("/system.slice/docker-{ID}.scope/init"), Runtime::Docker, ID.into(), false, None),
        // Docker, systemd driver with --cgroup-parent=docker.slice (Falco container plugin matchers docker_systemd).
        (format!("/docker.slice/docker-{ID}.scope"), Runtime::Docker, ID.into(), true, None),
        // Rootless Docker (rootlesskit in the user's manager; moby uses "user.slice" as the
        // systemd driver's parent when rootless).
        (format!("/user.slice/user-1000.slice/user@1000.service/docker-{ID}.scope"), Runtime::Docker, ID.into(), true, None),
        (
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{ID}.scope"),
            Runtime::Docker, ID.into(), true, None,
        ),
        // Docker-in-Docker: the innermost container wins (Tracee; Tetragon proc_test).
        (format!("/docker/{ID}/docker/{ID2}"), Runtime::Docker, ID2.into(), true, None),
        (format!("/docker/{ID}/docker/{ID2}/x/y"), Runtime::Docker, ID2.into(), false, None),
        (format!("/system.slice/docker-{ID}.scope/system.slice/docker-{ID2}.scope"), Runtime::Docker, ID2.into(), true, None),
        // Docker-in-Docker on cgroup v2 with a private cgroup namespace (docker:dind's
        // entrypoint moves itself to /init, the inner dockerd uses /docker/<id>).
        (format!("/system.slice/docker-{ID}.scope/docker/{ID2}"), Runtime::Docker, ID2.into(), true, None),
        // A systemd service inside a container is the container's (Tetragon proc_test, kind node).
        (format!("/system.slice/docker-{ID}.scope/system.slice/containerd.service"), Runtime::Docker, ID.into(), false, None),
        (format!("/system.slice/docker-{ID}.scope/system.slice/kubelet.service"), Runtime::Docker, ID.into(), false, None),
        // GitHub Actions job containers (Tracee containers.go; Tetragon proc_test).
        (format!("/actions_job/{ID}"), Runtime::Docker, ID.into(), true, None),
        // AWS ECS on EC2, cgroup v1: `/ecs/<task id>/<container id>` (amazon-ecs-agent
        // Task.BuildCgroupRoot "/ecs/task-id", Docker below it).
        (format!("/ecs/{TASK}/{ID}"), Runtime::Docker, ID.into(), true, None),
        // AWS ECS on EC2, cgroup v2: the task's slice (amazon-ecs-agent "ecstasks-$TASKID.slice").
        (format!("/ecstasks.slice/ecstasks-{TASK}.slice/docker-{ID}.scope"), Runtime::Docker, ID.into(), true, None),
        // AWS Fargate: `/ecs/<task>/<task>-<n>` (Datadog agent ptracer container_test "from-cgroup-eks").
        (format!("/ecs/{TASK}/{TASK}-3057940393"), Runtime::Ecs, format!("{TASK}-3057940393"), true, None),
        // EKS on Fargate: the pod's container inside the Fargate task (same test).
        (
            format!("/ecs/{TASK}/{TASK}-3057940393/kubepods/besteffort/pod{POD}/{ID}"),
            Runtime::Unknown, ID.into(), true, Some(POD),
        ),
        // containerd CRI, systemd driver (Falco/Tetragon/Tracee tests; also k3s, rke2, k0s,
        // Bottlerocket and EKS nodes with SystemdCgroup = true).
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
        // Tracee containers_test: the systemd names under a cgroupfs pod ("pod123" is no UID).
        (format!("/kubepods/besteffort/pod123/cri-containerd-{ID}.scope"), Runtime::Containerd, ID.into(), true, None),
        (format!("/kubepods/besteffort/pod123/docker-{ID}.scope/system.slice"), Runtime::Docker, ID.into(), false, None),
        // containerd's "slice:prefix:id" cgroupsPath used verbatim (SystemdCgroup = false
        // under a systemd kubelet: Falco containerd_unknown, Tracee, Tetragon proc_test).
        (
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_US}.slice:cri-containerd:{ID}"),
            Runtime::Containerd, ID.into(), true, None,
        ),
        (format!("/system.slice/containerd.service/kubepods-burstable-pod{POD_US}.slice:cri-containerd:{ID}"), Runtime::Containerd, ID.into(), true, None),
        (format!("/kubepods/besteffort/pod123/some:cri-containerd:{ID}"), Runtime::Containerd, ID.into(), true, None),
        // AKS-style podruntime.slice (Tetragon proc_test "Cgroupv1 Hierarchy with CgroupPath set").
        (
            format!("/podruntime.slice/containerd.service/kubepods-burstable-pod{POD_US}.slice:cri-containerd:{ID}"),
            Runtime::Containerd, ID.into(), true, None,
        ),
        // nerdctl with the systemd driver: "system.slice:nerdctl:<id>" (nerdctl
        // generateCgroupPath; Falco container plugin matchers nerdctl_systemd_scope).
        (format!("/system.slice/nerdctl-{ID}.scope"), Runtime::Containerd, ID.into(), true, None),
        // Rootless nerdctl: "user.slice:nerdctl:<id>" in the user's manager.
        (
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/nerdctl-{ID}.scope"),
            Runtime::Containerd, ID.into(), true, None,
        ),
        // nerdctl --cgroup-parent=my.slice: "<parent>:nerdctl:<id>".
        (format!("/my.slice/nerdctl-{ID}.scope"), Runtime::Containerd, ID.into(), true, None),
        // The same cgroupsPath used verbatim by runc's cgroupfs driver.
        (format!("/system.slice:nerdctl:{ID}"), Runtime::Containerd, ID.into(), true, None),
        // Kubernetes with the cgroupfs driver: every QoS class, the runtime told by enrichment
        // (Falco containerd_cgroupfs, Tetragon proc_test; k3s, rke2, k0s and microk8s default to it).
        (format!("/kubepods/besteffort/pod{POD}/{ID}"), Runtime::Unknown, ID.into(), true, Some(POD)),
        (format!("/kubepods/burstable/pod{POD}/{ID}"), Runtime::Unknown, ID.into(), true, Some(POD)),
        (format!("/kubepods/pod{POD}/{ID}"), Runtime::Unknown, ID.into(), true, Some(POD)),
        (format!("/kubepods/burstable/pod{POD}/{ID}/sub"), Runtime::Unknown, ID.into(), false, Some(POD)),
        // Static pods have 32-hex UIDs.
        (format!("/kubepods/burstable/pod0123456789abcdef0123456789abcdef/{ID}"), Runtime::Unknown, ID.into(), true, Some("0123456789abcdef0123456789abcdef")),
        // Kubernetes in a Docker node container (Tetragon proc_test: minikube, kind with
        // cgroupfs under --cgroup-root=/kubelet; k3d is the same with /kubepods).
        (format!("/system.slice/docker-{ID2}.scope/kubepods/besteffort/pod{POD}/{ID}"), Runtime::Unknown, ID.into(), true, Some(POD)),
        (
            format!("/system.slice/docker-{ID2}.scope/kubelet/kubepods/burstable/pod0123456789abcdef0123456789abcdef/{ID}"),
            Runtime::Unknown, ID.into(), true, Some("0123456789abcdef0123456789abcdef"),
        ),
        (format!("/docker/{ID2}/kubepods/besteffort/pod{POD}/{ID}"), Runtime::Unknown, ID.into(), true, Some(POD)),
        // kind with the systemd driver: kubelet.slice/kubelet-kubepods… (Tetragon
        // pkg/sensors/exec/cgroups_test kind hierarchy).
        (
            format!(
                "/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{POD_US}.slice/cri-containerd-{ID}.scope"
            ),
            Runtime::Containerd, ID.into(), true, Some(POD),
        ),
        // Kubernetes with cri-dockerd inside a Docker node (Tetragon proc_test).
        (
            format!("/system.slice/docker-{ID2}.scope/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_US}.slice/docker-{ID}.scope"),
            Runtime::Docker, ID.into(), true, Some(POD),
        ),
        // kubelet with cri-dockerd.
        (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_US}.slice/docker-{ID}.scope"), Runtime::Docker, ID.into(), true, Some(POD)),
        // CRI-O (Falco crio_systemd / crio_cgroupfs, Tracee, cAdvisor crio factory; OpenShift).
        (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_US}.slice/crio-{ID}.scope"), Runtime::Crio, ID.into(), true, Some(POD)),
        (format!("/kubepods/besteffort/pod{POD}/crio-{ID}"), Runtime::Crio, ID.into(), true, Some(POD)),
        (format!("/kubepods.slice/kubepods-pod{POD_US}.slice/crio-{ID}.scope/container"), Runtime::Crio, ID.into(), false, Some(POD)),
        // CRI-O's cgroupsPath used verbatim (libsinsp cgroup test data "pod_123-456.slice:crio:<id>").
        (format!("/pod_123.slice/pod_123-456.slice/pod_123-456.slice:crio:{ID}"), Runtime::Crio, ID.into(), true, None),
        // Podman, cgroupfs and systemd (Tetragon proc_test, Tracee, Falco matchers).
        (format!("/libpod_parent/libpod-{ID}"), Runtime::Podman, ID.into(), true, None),
        (format!("/machine.slice/libpod-{ID}.scope"), Runtime::Podman, ID.into(), true, None),
        (format!("/machine.slice/libpod-{ID}.scope/container"), Runtime::Podman, ID.into(), false, None),
        (format!("/system.slice/libpod-{ID}"), Runtime::Podman, ID.into(), true, None),
        (format!("/system.slice/libpod-{ID}.scope"), Runtime::Podman, ID.into(), true, None),
        // Rootless Podman: "user.slice:libpod:<id>"; crun's "container" subgroup below it.
        (format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"), Runtime::Podman, ID.into(), true, None),
        (
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"),
            Runtime::Podman, ID.into(), false, None,
        ),
        (format!("/user.slice/user-1000.slice/user@1000.service/libpod-{ID}"), Runtime::Podman, ID.into(), true, None),
        // Podman pods: systemd "machine-libpod_pod_<pod>.slice", cgroupfs "/libpod_parent/<pod>"
        // (podman libpod/runtime_pod_linux.go).
        (format!("/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-{ID}.scope"), Runtime::Podman, ID.into(), true, None),
        (format!("/libpod_parent/{ID2}/libpod-{ID}"), Runtime::Podman, ID.into(), true, None),
        // Podman --cgroups=split (Quadlet's default), crun with the systemd driver putting the
        // payload in its own scope (podman getOCICgroupPath "libpod-payload-<id>"; Falco
        // matchers root_libpod_cgroup_mode_split_*, from a cephadm host).
        (format!("/machine.slice/libpod-payload-{ID}.scope"), Runtime::Podman, ID.into(), true, None),
        (
            format!("/system.slice/system-ceph-f952f5be.slice/ceph-f952f5be@mon.host1.service/libpod-payload-{ID}"),
            Runtime::Podman, ID.into(), true, None,
        ),
        (
            format!("/system.slice/system-ceph-f952f5be.slice/ceph-f952f5be@mon.host1.service/libpod-payload-{ID}.scope"),
            Runtime::Podman, ID.into(), true, None,
        ),
        (format!("/system.slice/myapp.service/libpod-payload-{ID}"), Runtime::Podman, ID.into(), true, None),
        (format!("/machine.slice/libpod-payload-{ID}.scope/container"), Runtime::Podman, ID.into(), false, None),
        // Garden (Cloud Foundry; Tracee containers.go gardenContainerIdFromCgroupRegex).
        ("/garden/01234567-89ab-cdef-0123-4567".into(), Runtime::Garden, "01234567-89ab-cdef-0123-4567".into(), true, None),
        ("/system.slice/garden.service/garden/abcdef01-2345-6789-abcd-ef01/sub".into(), Runtime::Garden, "abcdef01-2345-6789-abcd-ef01".into(), false, None),
        // Cloud Foundry BOSH Process Manager: runc's systemd driver "runc-bpm-<job>[.2e<process>].scope"
        // (bpm-release test-server cgroup handler), cgroupfs "bpm-<job>" (Falco bpm matcher).
        ("/system.slice/runc-bpm-test-server.scope".into(), Runtime::Bpm, "test-server".into(), true, None),
        ("/system.slice/runc-bpm-test-server.2eworker.scope".into(), Runtime::Bpm, "test-server.2eworker".into(), true, None),
        ("/bpm-test-server".into(), Runtime::Bpm, "test-server".into(), true, None),
        // runc, crun and runsc (gVisor) with their systemd drivers and no cgroupsPath:
        // ":<runtime>:<id>" (runc docs/systemd.md, crun cgroup-systemd.c, gVisor g3doc systemd.md).
        ("/system.slice/runc-web1.scope".into(), Runtime::Runc, "web1".into(), true, None),
        ("/system.slice/crun-web1.scope".into(), Runtime::Crun, "web1".into(), true, None),
        ("/user.slice/user-1000.slice/user@1000.service/user.slice/crun-web1.scope".into(), Runtime::Crun, "web1".into(), true, None),
        ("/system.slice/runsc-web1.scope".into(), Runtime::Gvisor, "web1".into(), true, None),
        // gVisor under Docker or a CRI uses runc's layouts: the daemon's name wins (GKE Sandbox pods).
        (format!("/kubepods/burstable/pod{POD}/{ID}"), Runtime::Unknown, ID.into(), true, Some(POD)),
        // Kata Containers: the sandbox cgroup "<pod cgroup>/kata_<sandbox id>" (kata
        // docs/design/host-cgroups.md), the Rust runtime's "kata_sandboxed_pod/<sid>" and its
        // "<cgroupsPath>/sandbox" on cgroup v2 (runtime-rs resource/cgroups).
        (format!("/kubepods/besteffort/pod{POD}/kata_{ID}"), Runtime::Kata, ID.into(), true, Some(POD)),
        (format!("/kata_sandboxed_pod/{ID}"), Runtime::Kata, ID.into(), true, None),
        (
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_US}.slice/cri-containerd-{ID}.scope/sandbox"),
            Runtime::Containerd, ID.into(), false, Some(POD),
        ),
        // LXC 4+, LXD, Incus: "lxc.payload.<name>"; LXC 1-3: "/lxc/<name>"; LXC 4 on a
        // legacy layout: "/lxc.payload/<name>" (Falco lxc matcher; LXC 4.0 release notes).
        ("/lxc.payload.c1".into(), Runtime::Lxc, "c1".into(), true, None),
        ("/lxc.payload.c1/init.scope".into(), Runtime::Lxc, "c1".into(), false, None),
        ("/lxc.payload.c1/system.slice/ssh.service".into(), Runtime::Lxc, "c1".into(), false, None),
        // LXD projects: "<project>_<name>".
        ("/lxc.payload.shop_web-1".into(), Runtime::Lxc, "shop_web-1".into(), true, None),
        ("/lxc/c1".into(), Runtime::Lxc, "c1".into(), true, None),
        ("/lxc.payload/c1".into(), Runtime::Lxc, "c1".into(), true, None),
        // Docker inside an LXD container.
        (format!("/lxc.payload.c1/system.slice/docker-{ID}.scope"), Runtime::Docker, ID.into(), true, None),
        // systemd-nspawn: "machine-<name>.scope" (machined), "systemd-nspawn@<name>.service"
        // (machinectl start), the payload in "payload" (systemd nspawn-cgroup.c create_subcgroup).
        ("/machine.slice/machine-debian.scope".into(), Runtime::Nspawn, "debian".into(), true, None),
        ("/machine.slice/machine-debian.scope/payload".into(), Runtime::Nspawn, "debian".into(), false, None),
        ("/machine.slice/machine-my\\x2dbox.scope".into(), Runtime::Nspawn, "my-box".into(), true, None),
        ("/machine.slice/systemd-nspawn@debian.service".into(), Runtime::Nspawn, "debian".into(), true, None),
        ("/machine.slice/systemd-nspawn@debian.service/supervisor".into(), Runtime::Nspawn, "debian".into(), false, None),
        (format!("/machine.slice/machine-debian.scope/payload/system.slice/docker-{ID}.scope"), Runtime::Docker, ID.into(), true, None),
        // libvirt-lxc: machined "machine-lxc\x2d<pid>\x2d<name>.scope" (with its "libvirt"
        // subgroup), "/machine/<name>.libvirt-lxc", legacy "/libvirt/lxc/<name>" (Falco libvirt_lxc).
        (
            "/machine.slice/machine-lxc\\x2d2293906\\x2dlibvirt\\x2dcontainer.scope".into(),
            Runtime::LibvirtLxc, "lxc-2293906-libvirt-container".into(), true, None,
        ),
        (
            "/machine.slice/machine-lxc\\x2d2293906\\x2dlibvirt\\x2dcontainer.scope/libvirt".into(),
            Runtime::LibvirtLxc, "lxc-2293906-libvirt-container".into(), false, None,
        ),
        ("/machine/libvirt-container.libvirt-lxc".into(), Runtime::LibvirtLxc, "libvirt-container".into(), true, None),
        ("/libvirt/lxc/libvirt-container".into(), Runtime::LibvirtLxc, "libvirt-container".into(), true, None),
        // rkt pods, apps as services inside (Falco rkt matcher).
        (format!("/machine.slice/machine-rkt\\x2d{uuid_escaped}.scope"), Runtime::Rkt, UUID.into(), true, None),
        (format!("/machine.slice/machine-rkt\\x2d{uuid_escaped}.scope/system.slice/app.service"), Runtime::Rkt, UUID.into(), false, None),
        // Mesos containerizer, nested containers below their parent (Falco mesos matcher; cAdvisor mesos).
        (format!("/mesos/{UUID}"), Runtime::Mesos, UUID.into(), true, None),
        (format!("/mesos/{UUID}/mesos/{POD}"), Runtime::Mesos, POD.into(), true, None),
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
    let negatives: Vec<String> = vec![
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
        // The user's manager and its apps (Falco matchers non_container_cgroup).
        "/user.slice/user-1000.slice/user@1000.service/init.scope".into(),
        "/user.slice/user-1000.slice/user@1000.service/app.slice".into(),
        "/user.slice/user-1000.slice/user@1000.service/app.slice/docker.service".into(),
        // Podman's own processes and its pause process (rootless).
        "/user.slice/user-1000.slice/user@1000.service/user.slice/podman-4321.scope".into(),
        "/user.slice/user-1000.slice/user@1000.service/user.slice/podman-pause-0a1b2c3d.scope".into(),
        // Podman pods are not containers, their conmons neither (podman runtime_pod_linux.go).
        format!("/machine.slice/machine-libpod_pod_{ID2}.slice"),
        format!("/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-conmon-{ID}.scope"),
        format!("/libpod_parent/{ID2}"),
        format!("/libpod_parent/{ID2}/conmon"),
        // A Quadlet unit and a cephadm unit hold conmon next to the payload.
        "/system.slice/myapp.service".into(),
        "/system.slice/system-ceph-f952f5be.slice/ceph-f952f5be@mon.host1.service".into(),
        // systemd-machined's slice, and virtual machines (libvirt qemu, with and without systemd).
        "/machine.slice".into(),
        "/machine.slice/machine-qemu\\x2d1\\x2dubuntu.scope".into(),
        "/machine.slice/machine-qemu\\x2d1\\x2dubuntu.scope/libvirt/vcpu0".into(),
        "/machine.slice/machine-qemu\\x2d1\\x2dubuntu.scope/libvirt/emulator".into(),
        "/machine/qemu-1-ubuntu.libvirt-qemu".into(),
        "/machine.slice/machine-.scope".into(),
        // LXC's monitor and pivot cgroups (LXC 4.0 release notes).
        "/lxc.monitor.c1".into(),
        "/lxc.monitor/c1".into(),
        "/lxc.pivot".into(),
        "/lxc.payload".into(),
        "/lxc.payload.".into(),
        // Kata's VMM threads outside the pod (kata host-cgroups.md, runtime-rs gen_overhead_path).
        format!("/kata_overhead/{ID}"),
        format!("/kata-overhead.slice/runtime-rs-{ID}.scope"),
        "/kata_sandboxed_pod".into(),
        // Nomad makes one cgroup per task whatever its driver (raw_exec too): not
        // containers (nomad client/lib/cgroupslib editor.go scopeCG1/scopeCG2).
        format!("/nomad.slice/share.slice/{ALLOC}.redis.scope"),
        format!("/nomad.slice/reserve.slice/{ALLOC}.redis.scope"),
        format!("/nomad/{ALLOC}.redis"),
        format!("/nomad/share/{ALLOC}.redis"),
        // Bottlerocket: host and bootstrap containers join their unit's cgroup (host-ctr
        // passes its own cgroup as cgroupsPath), the host's containerd.
        "/system.slice/host-containers@admin.service".into(),
        "/system.slice/bootstrap-containers@setup.service".into(),
        "/system.slice/host-containerd.service".into(),
        // The Kubernetes distributions' daemons (k3s, rke2, k0s, microk8s).
        "/system.slice/k3s.service".into(),
        "/system.slice/k3s-agent.service".into(),
        "/system.slice/rke2-server.service".into(),
        "/system.slice/rke2-agent.service".into(),
        "/system.slice/k0sworker.service".into(),
        "/system.slice/snap.microk8s.daemon-kubelite.service".into(),
        // Kubernetes QoS levels and pods with the systemd driver, also kind's.
        "/kubepods.slice".into(),
        "/kubepods.slice/kubepods-burstable.slice".into(),
        "/kubepods.slice/kubepods-besteffort.slice".into(),
        "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice".into(),
        format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{POD_US}.slice"),
        // Mount units named after container IDs (cAdvisor docker/crio/containerd IsContainerName).
        format!("/system.slice/var-lib-docker-overlay2-{ID}-merged.mount"),
        format!("/system.slice/run-containerd-io.containerd.runtime.v2.task-k8s.io-{ID}-rootfs.mount"),
        format!("/system.slice/run-docker-runtime\\x2drunc-moby-{ID}-runc.Ab12Cd.mount"),
        format!("/system.slice/docker-{ID}.mount"),
        // ECS task cgroups themselves; a Fargate-like name of another task.
        "/ecs".into(),
        format!("/ecs/{TASK}"),
        format!("/ecstasks.slice/ecstasks-{TASK}.slice"),
        format!("/ecs/{TASK}/0000000000000000000000000000000a-12"),
        // Mesos' own cgroup and a non-UUID below it.
        "/mesos".into(),
        "/mesos/not-a-uuid".into(),
        // Runtime scopes with no ID, BPM's name on a unit.
        "/system.slice/runc-.scope".into(),
        "/system.slice/crun-.scope".into(),
        "/bpm-.service".into(),
        "/system.slice/bpm-agent.service".into(),
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

    // nerdctl with the cgroupfs driver: containerd's default "/<namespace>/<id>"
    // (nerdctl generateCgroupPath leaves it to containerd).
    fs::create_dir_all(dirs.containerd.join("default").join(ID)).unwrap();
    let c = classify(&format!("/default/{ID}"), &dirs).expect("nerdctl container, cgroupfs");
    assert_eq!((c.runtime, c.container_id.as_str()), (Runtime::Containerd, ID));

    // ctr IDs and namespaces with dots (Falco container plugin matchers
    // containerd_namespaced, containerd_short_id_with_dots_no_suffix).
    fs::create_dir_all(dirs.containerd.join("my.namespace").join("container.name")).unwrap();
    fs::create_dir_all(dirs.containerd.join("my_very_long_namespace-1.5").join("test_container")).unwrap();
    let c = classify("/my.namespace/container.name", &dirs).expect("dotted ctr container");
    assert_eq!((c.runtime, c.container_id.as_str()), (Runtime::Containerd, "container.name"));
    let c = classify("/my_very_long_namespace-1.5/test_container", &dirs).expect("ctr container, dotted namespace");
    assert_eq!((c.runtime, c.container_id.as_str()), (Runtime::Containerd, "test_container"));

    // systemd unit names are never container IDs, whatever a state dir holds
    // (Falco matchers containerd_systemd_*_filtered).
    for unit in ["some_short_id.service", "some_short_id.slice", "some_short_id.mount"] {
        fs::create_dir_all(dirs.containerd.join("default").join(unit)).unwrap();
        assert_eq!(classify(&format!("/default/{unit}"), &dirs), None, "{unit}");
    }

    // Docker with --cgroup-parent=/ : a bare ID at the root (Tetragon
    // TestLookupContainerIdPlainDocker).
    let c = classify(&format!("/{ID2}"), &dirs).expect("docker container at the root");
    assert_eq!((c.runtime, c.container_id.as_str()), (Runtime::Docker, ID2));

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
