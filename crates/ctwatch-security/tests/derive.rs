//! The profile and the checks on configs the runtimes wrote here (fixtures)
//! and on hand-made ones.

use std::collections::{BTreeMap, HashMap};

use ctwatch_security::pss::{evaluate, Level, CHECKS};
use ctwatch_security::{
    Config, Exemptions, Outcome, ParseError, PrivilegeClass, PssPolicy, Seccomp, SecurityProfile, Subject,
    MAX_CONFIG_BYTES,
};
use serde_json::{json, Value};

const DOCKER: &[u8] = include_bytes!("fixtures/docker-default.json");
const CTR: &[u8] = include_bytes!("fixtures/ctr-seccomp.json");
const PODMAN: &[u8] = include_bytes!("fixtures/podman-default.json");

fn profile(v: &Value) -> SecurityProfile {
    SecurityProfile::from_config_bytes(&serde_json::to_vec(v).unwrap()).unwrap()
}

fn docker() -> Value {
    serde_json::from_slice(DOCKER).unwrap()
}

fn checks(p: &SecurityProfile, level: Level) -> Vec<String> {
    evaluate(p, level).into_iter().map(|v| format!("{}|{}", v.check, v.field)).collect()
}

#[test]
fn runtime_defaults_pass_baseline_and_fail_restricted_on_root_caps_and_nnp() {
    for (name, bytes) in [("docker", DOCKER), ("ctr", CTR), ("podman", PODMAN)] {
        let p = SecurityProfile::from_config_bytes(bytes).unwrap();
        assert!(!p.privileged, "{name}");
        assert_eq!(p.seccomp, Seccomp::RuntimeDefault, "{name}");
        assert!(p.capabilities_added.is_empty(), "{name}: {:?}", p.capabilities_added);
        assert!(p.host_mounts.is_empty(), "{name}: runtime-made binds are not host mounts: {:?}", p.host_mounts);
        assert!(!p.host_namespaces.iter().any(|n| n == "pid" || n == "network" || n == "ipc"), "{name}");
        assert!(p.run_as_root && !p.proc_unmasked && !p.read_only_rootfs, "{name}");
        assert_eq!(checks(&p, Level::Baseline), Vec::<String>::new(), "{name}");
        assert_eq!(p.privilege_class(), PrivilegeClass::Baseline, "{name}");
        let r = checks(&p, Level::Restricted);
        assert!(r.contains(&"Running as Non-root|run_as_uid".to_string()), "{name}: {r:?}");
        assert!(r.contains(&"Capabilities|capabilities_bounding".to_string()), "{name}: {r:?}");
    }
    // docker and ctr do not set no_new_privileges by default; ctr does
    let d = SecurityProfile::from_config_bytes(DOCKER).unwrap();
    assert!(!d.no_new_privileges && d.host_namespaces == ["user", "cgroup", "time"], "{:?}", d.host_namespaces);
    assert_eq!(d.sysctls["net.ipv4.ip_unprivileged_port_start"], "0");
    let pm = SecurityProfile::from_config_bytes(PODMAN).unwrap();
    assert!(pm.joined_namespaces["network"].starts_with("/run/netns/"), "{:?}", pm.joined_namespaces);
    assert_eq!(pm.capabilities_dropped, ["CAP_AUDIT_WRITE", "CAP_MKNOD", "CAP_NET_RAW"]);
}

#[test]
fn privileged_is_all_caps_all_devices_no_confinement() {
    let all: Vec<String> = ctwatch_security::profile::ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    let mut c = docker();
    c["process"]["capabilities"]["bounding"] = json!(all);
    c["process"]["capabilities"]["effective"] = json!(all);
    c["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
    c["linux"].as_object_mut().unwrap().remove("seccomp");
    c["linux"]["maskedPaths"] = json!([]);
    c["linux"]["readonlyPaths"] = Value::Null;
    let p = profile(&c);
    assert!(p.privileged && p.all_devices_allowed && p.proc_unmasked);
    assert_eq!(p.privilege_class(), PrivilegeClass::Privileged);
    let b = checks(&p, Level::Baseline);
    for expect in [
        "Privileged Containers|privileged",
        "Capabilities|capabilities_added",
        "/proc Mount Type|proc_unmasked",
        "Seccomp|seccomp",
    ] {
        assert!(b.contains(&expect.to_string()), "{expect} in {b:?}");
    }
    assert!(p.matches_filter("privileged", "true").unwrap());
    // Any one confinement left makes it not privileged.
    let mut confined = c.clone();
    confined["process"]["apparmorProfile"] = json!("docker-default");
    assert!(!profile(&confined).privileged);
    let mut some_devices = c.clone();
    some_devices["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}, {"allow": false, "type": "c", "major": 10, "minor": 229, "access": "rwm"}]);
    assert!(!profile(&some_devices).privileged);
}

#[test]
fn each_field_from_its_oci_place() {
    let mut c = docker();
    c["process"]["capabilities"]["bounding"].as_array_mut().unwrap().push(json!("CAP_SYS_ADMIN"));
    c["process"]["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [5]});
    c["process"]["noNewPrivileges"] = json!(true);
    c["process"]["apparmorProfile"] = json!("unconfined");
    c["process"]["selinuxLabel"] = json!("system_u:system_r:spc_t:s0");
    c["root"]["readonly"] = json!(true);
    c["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "uts"}, {"type": "network", "path": "/proc/1/ns/net"}, {"type": "ipc", "path": "/proc/77/ns/ipc"}]);
    c["linux"]["resources"]["memory"] = json!({"limit": 67108864});
    c["linux"]["resources"]["cpu"] = json!({"quota": 50000, "period": 100000, "shares": 512, "cpus": "0"});
    c["linux"]["resources"]["pids"] = json!({"limit": 100});
    c["linux"]["sysctl"] = json!({"net.ipv4.tcp_syncookies": "1", "kernel.msgmax": "65536"});
    c["linux"]["devices"] = json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]);
    c["mounts"].as_array_mut().unwrap().extend([
        json!({"destination": "/var/run/docker.sock", "type": "bind", "source": "/var/run/docker.sock", "options": ["rbind"]}),
        json!({"destination": "/host", "type": "bind", "source": "/", "options": ["rbind", "ro"]}),
        json!({"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind"]}),
        json!({"destination": "/v", "type": "bind", "source": "/var/lib/docker/volumes/v/_data", "options": ["rbind"]}),
        json!({"destination": "/sneaky", "type": "bind", "source": "/var/lib/docker/volumes/../../../../etc", "options": ["rbind"]}),
    ]);
    let p = profile(&c);
    assert_eq!(p.capabilities_added, ["CAP_SYS_ADMIN"]);
    assert_eq!((p.run_as_uid, p.run_as_gid, p.additional_gids.clone(), p.run_as_root), (1000, 1001, vec![5], false));
    assert!(p.no_new_privileges && p.read_only_rootfs);
    assert_eq!(p.host_namespaces, ["pid", "network", "user", "cgroup", "time"]);
    assert_eq!(p.joined_namespaces["ipc"], "/proc/77/ns/ipc");
    assert_eq!(p.limits.memory_bytes, Some(64 << 20));
    assert_eq!((p.limits.cpu_millis, p.limits.cpu_shares, p.limits.pids), (Some(500), Some(512), Some(100)));
    assert_eq!(p.devices[0].path, "/dev/fuse");
    let mounts: Vec<(&str, bool, bool)> =
        p.host_mounts.iter().map(|m| (m.source.as_str(), m.read_only, m.sensitive)).collect();
    assert_eq!(
        mounts,
        [
            ("/var/run/docker.sock", false, true),
            ("/", true, true),
            ("/srv/data", false, false),
            ("/var/lib/docker/volumes/../../../../etc", false, true)
        ]
    );
    let b: Vec<String> = evaluate(&p, Level::Baseline).iter().map(ToString::to_string).collect();
    assert_eq!(
        b,
        [
            "Host Namespaces: host_namespaces = pid,network",
            "Capabilities: capabilities_added = CAP_SYS_ADMIN",
            "HostPath Volumes: host_mounts = /var/run/docker.sock,/,/srv/data,/var/lib/docker/volumes/../../../../etc",
            "AppArmor: apparmor = unconfined",
            "SELinux: selinux = system_u:system_r:spc_t:s0",
            "Sysctls: sysctls = kernel.msgmax=65536",
        ]
    );
    assert!(p.matches_filter("host_ns", "pid").unwrap() && p.matches_filter("host_ns", "net").unwrap());
    assert!(!p.matches_filter("host_ns", "ipc").unwrap());
    assert!(p.matches_filter("cap", "sys_admin").unwrap() && p.matches_filter("cap", "CAP_SYS_ADMIN").unwrap());
    assert!(!p.matches_filter("cap", "NET_ADMIN").unwrap());
    assert!(p.matches_filter("host_mount", "/run/docker.sock").unwrap());
    assert!(p.matches_filter("host_mount", "sensitive").unwrap());
    assert!(p.matches_filter("privileged", "false").unwrap());
    assert!(p.matches_filter("privileged", "maybe").is_err() && p.matches_filter("colour", "x").is_err());
}

#[test]
fn joined_namespaces_that_are_the_hosts_move_to_host_namespaces() {
    let mut c = docker();
    c["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "network", "path": "/proc/42/ns/net"}, {"type": "pid", "path": "/proc/42/ns/pid"}]);
    let mut p = profile(&c);
    assert!(!p.host_namespaces.contains(&"network".to_string()));
    p.resolve_joined_namespaces(|kind, path| kind == "network" && path == "/proc/42/ns/net");
    assert_eq!(p.host_namespaces, ["network", "ipc", "uts", "user", "cgroup", "time"]);
    assert_eq!(p.joined_namespaces.keys().collect::<Vec<_>>(), ["pid"]);
    // The real check: this process's own namespace file is the host's (or PID 1's); a missing one is not.
    let me = format!("/proc/{}/ns/net", std::process::id());
    let proc_root = std::path::Path::new("/proc");
    let init_net = std::fs::metadata("/proc/1/ns/net").ok();
    if init_net.is_none() || std::fs::read_link(&me).ok() == std::fs::read_link("/proc/1/ns/net").ok() {
        assert!(ctwatch_security::joins_host_namespace(proc_root, "network", &me));
    }
    assert!(!ctwatch_security::joins_host_namespace(proc_root, "network", "/proc/0/ns/net"));
}

#[test]
fn seccomp_classes() {
    let mut c = docker();
    assert_eq!(profile(&c).seccomp, Seccomp::RuntimeDefault);
    c["linux"]["seccomp"]["syscalls"]
        .as_array_mut()
        .unwrap()
        .push(json!({"names": ["kexec_load"], "action": "SCMP_ACT_ALLOW"}));
    assert_eq!(profile(&c).seccomp, Seccomp::Custom);
    c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW"});
    assert_eq!(profile(&c).seccomp, Seccomp::Unconfined);
    c["linux"]["seccomp"] =
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["ptrace"], "action": "SCMP_ACT_ERRNO"}]});
    assert_eq!(profile(&c).seccomp, Seccomp::Custom);
    c["linux"]["seccomp"] = Value::Null;
    assert_eq!(profile(&c).seccomp, Seccomp::Unconfined);
}

#[test]
fn restricted_passes_a_hardened_container() {
    let mut c = docker();
    c["process"]["capabilities"] = json!({"bounding": [], "effective": []});
    c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    c["process"]["noNewPrivileges"] = json!(true);
    c["root"]["readonly"] = json!(true);
    let p = profile(&c);
    assert_eq!(evaluate(&p, Level::Restricted), vec![]);
    assert_eq!(p.privilege_class(), PrivilegeClass::Restricted);
    assert_eq!(p.capabilities_dropped.len(), 14);
    c["process"]["capabilities"]["bounding"] = json!(["CAP_NET_BIND_SERVICE"]);
    assert_eq!(evaluate(&profile(&c), Level::Restricted), vec![], "NET_BIND_SERVICE may be kept");
    c["process"]["noNewPrivileges"] = json!(false);
    assert_eq!(checks(&profile(&c), Level::Restricted), ["Privilege Escalation|no_new_privileges"]);
}

#[test]
fn exemptions_by_namespace_label_image_runtime() {
    let policy = PssPolicy { level: Level::Baseline, exempt: toml_like() };
    let mut c = docker();
    c["linux"]["namespaces"] = json!([{"type": "mount"}]);
    let p = profile(&c);
    let labels = BTreeMap::from([("team".to_string(), "infra".to_string())]);
    let none = BTreeMap::new();
    let annotations = HashMap::from([("exempt".to_string(), "yes".to_string())]);
    let no_ann = HashMap::new();
    let s =
        |ns, labels, annotations, image, runtime| Subject { pod_namespace: ns, labels, annotations, image, runtime };
    assert!(
        matches!(policy.check(&p, s("", &none, &no_ann, "x:1", "docker")), Outcome::Violations(v) if v[0].check == "Host Namespaces")
    );
    assert!(
        matches!(policy.check(&p, s("kube-system", &none, &no_ann, "x:1", "containerd")), Outcome::Exempt(w) if w.contains("kube-system"))
    );
    assert!(
        matches!(policy.check(&p, s("", &labels, &no_ann, "x:1", "docker")), Outcome::Exempt(w) if w.contains("team"))
    );
    assert!(
        matches!(policy.check(&p, s("", &none, &annotations, "x:1", "docker")), Outcome::Exempt(w) if w.contains("exempt"))
    );
    assert!(matches!(
        policy.check(&p, s("", &none, &no_ann, "registry.example.com/agent:2", "docker")),
        Outcome::Exempt(_)
    ));
    assert!(
        matches!(policy.check(&p, s("", &none, &no_ann, "x:1", "podman")), Outcome::Exempt(w) if w == "runtime podman")
    );
    assert_eq!(
        policy.check(&SecurityProfile::from_config_bytes(DOCKER).unwrap(), s("", &none, &no_ann, "x", "docker")),
        Outcome::Allowed
    );
}

fn toml_like() -> Exemptions {
    Exemptions {
        pod_namespace: vec!["kube-*".into()],
        labels: BTreeMap::from([("team".into(), "infra".into()), ("exempt".into(), "y*".into())]),
        image: vec!["registry.example.com/agent:*".into()],
        runtime: vec!["podman".into()],
    }
}

#[test]
fn bad_configs_are_errors_never_panics() {
    for text in ["", "{", "null", "7", r#"{"process":{"user":{"uid":-1}}}"#, r#"{"mounts":{}}"#, "\u{0}"] {
        assert!(matches!(SecurityProfile::from_config_bytes(text.as_bytes()), Err(ParseError::Json(_))), "{text:?}");
    }
    // null everywhere is empty, not an error
    let p = SecurityProfile::from_config_bytes(br#"{"process":null,"linux":{"namespaces":null,"seccomp":null,"resources":{"devices":null,"memory":null}},"mounts":null}"#).unwrap();
    assert!(p.run_as_root && p.seccomp == Seccomp::Unconfined && p.host_namespaces.len() == 8);
    let big = vec![b' '; MAX_CONFIG_BYTES as usize + 10];
    assert!(matches!(Config::from_reader(&big[..]), Err(ParseError::TooLarge)));
    assert!(matches!(Config::from_slice(&big), Err(ParseError::TooLarge)));
}

#[test]
fn every_upstream_check_is_listed_once_per_level() {
    let names: Vec<(&str, Level)> = CHECKS.iter().map(|c| (c.name, c.level)).collect();
    for (name, level) in [
        ("HostProcess", Level::Baseline),
        ("Host Namespaces", Level::Baseline),
        ("Privileged Containers", Level::Baseline),
        ("Capabilities", Level::Baseline),
        ("HostPath Volumes", Level::Baseline),
        ("Host Ports", Level::Baseline),
        ("AppArmor", Level::Baseline),
        ("SELinux", Level::Baseline),
        ("/proc Mount Type", Level::Baseline),
        ("Seccomp", Level::Baseline),
        ("Sysctls", Level::Baseline),
        ("Volume Types", Level::Restricted),
        ("Privilege Escalation", Level::Restricted),
        ("Running as Non-root", Level::Restricted),
        ("Running as Non-root user", Level::Restricted),
        ("Seccomp", Level::Restricted),
        ("Capabilities", Level::Restricted),
    ] {
        assert_eq!(names.iter().filter(|n| **n == (name, level)).count(), 1, "{name}");
    }
    // The profile round-trips through JSON (for events and gRPC).
    let p = SecurityProfile::from_config_bytes(DOCKER).unwrap();
    let back: SecurityProfile = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}
