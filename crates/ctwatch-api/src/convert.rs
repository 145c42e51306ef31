//! Records and events to and from their protobuf messages.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ctwatch::hook::{HookInfo, OciSummary, PolicyVerdict};
use ctwatch::{Container, ContainerEvent, ContainerState, EventKind, PodInfo, Runtime};
use ctwatch_agent::{ContainerFilter, ContainerRecord, DataSourceError, SubscriptionError};
use ctwatch_security::profile::DeviceNode;
use ctwatch_security::{HostMount, Limits, Seccomp, SecurityProfile};
use tonic::Status;

use crate::pb;

/// A record as a message. Every field is named (no `..`): a field added to
/// the model reaches the record, and fails to compile here until it is sent.
pub fn container_message(r: ContainerRecord) -> pb::Container {
    let ContainerRecord {
        container_id,
        container_ctime,
        container_name,
        container_image,
        container_image_digest,
        runtime,
        k8s_pod_id,
        k8s_pod_name,
        k8s_pod_namespace,
        k8s_pod_sandbox,
        cgroup_id,
        cgroup_path,
        cgroup_path_bytes: _, // JSON only: the message's path carries the bytes itself
        init_pid,
        mount_ns,
        net_ns,
        labels,
        annotations,
        hook,
        state,
        security,
        started_at,
        finished_at,
        exit_code,
        exit_signal,
        oom_killed,
        oom_kills,
        exe,
        argv0,
    } = r;
    pb::Container {
        container_id,
        container_ctime,
        container_name,
        container_image,
        container_image_digest,
        runtime: runtime.as_str().to_string(),
        k8s_pod_id,
        k8s_pod_name,
        k8s_pod_namespace,
        k8s_pod_sandbox,
        cgroup_id,
        cgroup_path,
        init_pid,
        mount_ns,
        net_ns,
        labels: labels.into_iter().collect(),
        state: state_message(state) as i32,
        annotations: annotations.into_iter().collect(),
        hook: hook.as_deref().map(hook_message),
        security: security.as_deref().map(security_message),
        started_at_unix_nano: started_at.map(|ns| i64::try_from(ns).unwrap_or(i64::MAX)),
        finished_at_unix_nano: finished_at.map(|ns| i64::try_from(ns).unwrap_or(i64::MAX)),
        exit_code,
        exit_signal,
        oom_killed,
        oom_kills,
        exe,
        argv0,
    }
}

/// A security profile as a message (every field named: one added to the profile fails to compile here).
pub fn security_message(p: &SecurityProfile) -> pb::Security {
    let SecurityProfile {
        privileged,
        capabilities_added,
        capabilities_dropped,
        capabilities_bounding,
        capabilities_effective,
        host_namespaces,
        joined_namespaces,
        run_as_uid,
        run_as_gid,
        additional_gids,
        run_as_root,
        root_remapped,
        no_new_privileges,
        read_only_rootfs,
        seccomp,
        apparmor,
        selinux,
        proc_unmasked,
        host_mounts,
        devices,
        all_devices_allowed,
        sysctls,
        limits: Limits { memory_bytes, cpu_millis, cpu_shares, cpuset, pids },
    } = p;
    pb::Security {
        privileged: *privileged,
        capabilities_added: capabilities_added.clone(),
        capabilities_dropped: capabilities_dropped.clone(),
        capabilities_bounding: capabilities_bounding.clone(),
        capabilities_effective: capabilities_effective.clone(),
        host_namespaces: host_namespaces.clone(),
        joined_namespaces: joined_namespaces.clone().into_iter().collect(),
        run_as_uid: *run_as_uid,
        run_as_gid: *run_as_gid,
        additional_gids: additional_gids.clone(),
        run_as_root: *run_as_root,
        root_remapped: *root_remapped,
        no_new_privileges: *no_new_privileges,
        read_only_rootfs: *read_only_rootfs,
        seccomp: seccomp.as_str().to_string(),
        apparmor: apparmor.clone(),
        selinux: selinux.clone(),
        proc_unmasked: *proc_unmasked,
        host_mounts: host_mounts
            .iter()
            .map(|m| pb::SecurityHostMount {
                source: m.source.clone(),
                destination: m.destination.clone(),
                read_only: m.read_only,
                sensitive: m.sensitive,
            })
            .collect(),
        devices: devices
            .iter()
            .map(|d| pb::SecurityDevice { path: d.path.clone(), kind: d.kind.clone(), major: d.major, minor: d.minor })
            .collect(),
        all_devices_allowed: *all_devices_allowed,
        sysctls: sysctls.clone().into_iter().collect(),
        limits: Some(pb::SecurityLimits {
            memory_bytes: *memory_bytes,
            cpu_millis: *cpu_millis,
            cpu_shares: *cpu_shares,
            cpuset: cpuset.clone(),
            pids: *pids,
        }),
    }
}

/// A message back as a security profile. An unknown seccomp name from a
/// newer agent reads as `custom` (a filter, of a kind this client does not name).
pub fn security_from_message(m: &pb::Security) -> SecurityProfile {
    let seccomp = match m.seccomp.as_str() {
        "unconfined" => Seccomp::Unconfined,
        "runtime_default" => Seccomp::RuntimeDefault,
        _ => Seccomp::Custom,
    };
    let limits = m.limits.as_ref().map_or_else(Limits::default, |l| Limits {
        memory_bytes: l.memory_bytes,
        cpu_millis: l.cpu_millis,
        cpu_shares: l.cpu_shares,
        cpuset: l.cpuset.clone(),
        pids: l.pids,
    });
    SecurityProfile {
        privileged: m.privileged,
        capabilities_added: m.capabilities_added.clone(),
        capabilities_dropped: m.capabilities_dropped.clone(),
        capabilities_bounding: m.capabilities_bounding.clone(),
        capabilities_effective: m.capabilities_effective.clone(),
        host_namespaces: m.host_namespaces.clone(),
        joined_namespaces: m.joined_namespaces.clone().into_iter().collect(),
        run_as_uid: m.run_as_uid,
        run_as_gid: m.run_as_gid,
        additional_gids: m.additional_gids.clone(),
        run_as_root: m.run_as_root,
        root_remapped: m.root_remapped,
        no_new_privileges: m.no_new_privileges,
        read_only_rootfs: m.read_only_rootfs,
        seccomp,
        apparmor: m.apparmor.clone(),
        selinux: m.selinux.clone(),
        proc_unmasked: m.proc_unmasked,
        host_mounts: m
            .host_mounts
            .iter()
            .map(|h| HostMount {
                source: h.source.clone(),
                destination: h.destination.clone(),
                read_only: h.read_only,
                sensitive: h.sensitive,
            })
            .collect(),
        devices: m
            .devices
            .iter()
            .map(|d| DeviceNode { path: d.path.clone(), kind: d.kind.clone(), major: d.major, minor: d.minor })
            .collect(),
        all_devices_allowed: m.all_devices_allowed,
        sysctls: m.sysctls.clone().into_iter().collect(),
        limits,
    }
}

fn state_message(state: ContainerState) -> pb::ContainerState {
    match state {
        ContainerState::Existing => pb::ContainerState::Existing,
        ContainerState::Created => pb::ContainerState::Created,
        ContainerState::Removed => pb::ContainerState::Removed,
    }
}

/// A message back as a container (what the CLI prints). Unknown runtimes
/// and states from a newer agent become `unknown` and `created`.
pub fn container_from_message(m: &pb::Container) -> Container {
    let pb::Container {
        container_id,
        container_ctime,
        container_name,
        container_image,
        container_image_digest,
        runtime,
        k8s_pod_id,
        k8s_pod_name,
        k8s_pod_namespace,
        k8s_pod_sandbox,
        cgroup_id,
        cgroup_path,
        init_pid, // the record's (from /proc, else the container_start's)
        mount_ns: _,
        net_ns: _,
        labels,
        state,
        annotations,
        hook,
        security,
        started_at_unix_nano,
        finished_at_unix_nano,
        exit_code,
        exit_signal,
        oom_killed,
        oom_kills,
        exe,
        argv0,
    } = m;
    let state = match pb::ContainerState::try_from(*state) {
        Ok(pb::ContainerState::Existing) => ContainerState::Existing,
        Ok(pb::ContainerState::Removed) => ContainerState::Removed,
        _ => ContainerState::Created,
    };
    Container {
        id: container_id.clone(),
        runtime: Runtime::from_name(runtime).unwrap_or(Runtime::Unknown),
        cgroup_id: *cgroup_id,
        cgroup_path: cgroup_path.clone(),
        image: container_image.clone(),
        image_digest: container_image_digest.clone(),
        name: container_name.clone(),
        pod: PodInfo {
            name: k8s_pod_name.clone(),
            namespace: k8s_pod_namespace.clone(),
            uid: k8s_pod_id.clone(),
            sandbox: *k8s_pod_sandbox,
        },
        labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        annotations: annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        hook: hook.as_ref().map(|h| Arc::new(hook_from_message(h))),
        security: security.as_ref().map(|s| Arc::new(security_from_message(s))),
        ctime_ns: *container_ctime,
        state,
        started_at_ns: started_at_unix_nano.map(|ns| ns.max(0) as u64),
        finished_at_ns: finished_at_unix_nano.map(|ns| ns.max(0) as u64),
        exit_code: *exit_code,
        exit_signal: *exit_signal,
        oom_killed: *oom_killed,
        oom_kills: *oom_kills,
        init_pid: *init_pid,
        start_exe: exe.clone(),
        start_argv0: argv0.clone(),
    }
}

fn unix_nanos(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn from_unix_nanos(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
}

/// An event as a message (`ns` fills the container's namespaces when known).
///
/// The hook's findings go once, in `Event.hook` (where clients always found
/// them), not again in `Event.container.hook`.
pub fn event_message(e: &ContainerEvent, record: ContainerRecord) -> pb::Event {
    let mut container = container_message(record);
    container.hook = None;
    pb::Event {
        event: e.kind.as_str().to_string(),
        time_unix_nano: unix_nanos(e.time),
        kernel_time_unix_nano: e.kernel_time.map(unix_nanos),
        cgroup_id: e.cgroup_id,
        enriched: e.enriched,
        container: Some(container),
        hook: e.hook().map(|h| hook_message(h)),
        seq: e.seq,
        late: e.late,
    }
}

/// The runtime hook's findings as a message.
pub fn hook_message(h: &HookInfo) -> pb::HookInfo {
    pb::HookInfo {
        runtime_binary: h.runtime_binary.clone(),
        runtime_pid: h.runtime_pid,
        command: h.command.clone(),
        bundle: h.bundle.clone(),
        pid_file: h.pid_file.clone(),
        state_root: h.state_root.clone(),
        oci: h.oci.as_ref().map(|o| pb::OciSummary {
            oci_version: o.oci_version.clone(),
            args: o.args.clone(),
            cwd: o.cwd.clone(),
            uid: o.uid,
            gid: o.gid,
            hostname: o.hostname.clone(),
            root_path: o.root_path.clone(),
            root_readonly: o.root_readonly,
            cgroups_path: o.cgroups_path.clone(),
            namespaces: o.namespaces.clone(),
            mounts: o.mounts as u64,
            capabilities: o.capabilities.clone(),
            annotations: o.annotations.clone().into_iter().collect(),
        }),
        oci_error: h.oci_error.clone(),
        verdict: h.verdict.as_ref().map(|v| pb::PolicyVerdict {
            mode: v.mode.clone(),
            denied: v.denied,
            rule: v.rule.clone(),
            reason: v.reason.clone(),
        }),
        answer_us: h.answer_us,
        answered_by_deadline: h.answered_by_deadline,
        init_pid: h.init_pid,
        untrusted: !h.trusted,
        caller_uid: h.caller_uid,
    }
}

/// A hook message back as the hook's findings.
pub fn hook_from_message(m: &pb::HookInfo) -> HookInfo {
    HookInfo {
        runtime_binary: m.runtime_binary.clone(),
        runtime_pid: m.runtime_pid,
        command: m.command.clone(),
        bundle: m.bundle.clone(),
        pid_file: m.pid_file.clone(),
        state_root: m.state_root.clone(),
        oci: m.oci.as_ref().map(|o| OciSummary {
            oci_version: o.oci_version.clone(),
            args: o.args.clone(),
            cwd: o.cwd.clone(),
            uid: o.uid,
            gid: o.gid,
            hostname: o.hostname.clone(),
            root_path: o.root_path.clone(),
            root_readonly: o.root_readonly,
            cgroups_path: o.cgroups_path.clone(),
            namespaces: o.namespaces.clone(),
            mounts: usize::try_from(o.mounts).unwrap_or(usize::MAX),
            capabilities: o.capabilities.clone(),
            annotations: o.annotations.clone().into_iter().collect(),
        }),
        oci_error: m.oci_error.clone(),
        verdict: m.verdict.as_ref().map(|v| PolicyVerdict {
            mode: v.mode.clone(),
            denied: v.denied,
            rule: v.rule.clone(),
            reason: v.reason.clone(),
        }),
        answer_us: m.answer_us,
        answered_by_deadline: m.answered_by_deadline,
        init_pid: m.init_pid,
        trusted: !m.untrusted,
        caller_uid: m.caller_uid,
        security: None, // sent as Container.security
    }
}

/// A message back as an event; `None` for an event kind this client does not know.
pub fn event_from_message(m: &pb::Event) -> Option<ContainerEvent> {
    let kind = match m.event.as_str() {
        "container_create" => EventKind::ContainerCreate,
        "container_remove" => EventKind::ContainerRemove,
        "existing_container" => EventKind::ExistingContainer,
        "container_update" => EventKind::ContainerUpdate,
        "container_precreate" => EventKind::ContainerPrecreate,
        "container_policy_violation" => EventKind::ContainerPolicyViolation,
        _ => return None,
    };
    let mut container = container_from_message(m.container.as_ref()?);
    if let Some(hook) = &m.hook {
        container.hook = Some(Arc::new(hook_from_message(hook)));
    }
    Some(ContainerEvent {
        time: from_unix_nanos(m.time_unix_nano),
        kind,
        cgroup_id: m.cgroup_id,
        container: Arc::new(container),
        kernel_time: m.kernel_time_unix_nano.map(from_unix_nanos),
        enriched: m.enriched,
        seq: m.seq,
        late: m.late,
    })
}

/// A list request as a filter.
pub fn filter_from_request(r: &pb::ListRequest) -> Result<ContainerFilter, Status> {
    let set = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let runtime = match r.runtime.as_str() {
        "" => None,
        name => Some(Runtime::from_name(name).ok_or_else(|| {
            Status::invalid_argument(format!(
                "unknown runtime {name:?} (one of: {})",
                Runtime::ALL.map(Runtime::as_str).join(", ")
            ))
        })?),
    };
    let labels = r
        .labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (l.clone(), None),
        })
        .collect();
    let security = r
        .security
        .iter()
        .map(|f| match f.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(Status::invalid_argument(format!("security filter {f:?} is not key=value"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ContainerFilter {
        name: set(&r.name),
        image: set(&r.image),
        runtime,
        pod_name: set(&r.pod_name),
        pod_namespace: set(&r.pod_namespace),
        labels,
        include_removed: r.include_removed,
        security,
    })
    .and_then(|f| f.check_security().map(|()| f).map_err(|e| Status::invalid_argument(e.to_string())))
}

/// A data source error as a gRPC status.
pub fn status(e: DataSourceError) -> Status {
    use ctwatch::resolve::ResolveError;
    let message = e.to_string();
    if e.is_not_found() {
        return Status::not_found(message);
    }
    match e {
        DataSourceError::AmbiguousPrefix { .. }
        | DataSourceError::UnsupportedKey(_)
        | DataSourceError::InvalidKey { .. }
        | DataSourceError::Resolve(ResolveError::InvalidPath(_)) => Status::invalid_argument(message),
        DataSourceError::NotRunning(_) | DataSourceError::Resolve(ResolveError::NotRegular { .. }) => {
            Status::failed_precondition(message)
        }
        DataSourceError::Resolve(ResolveError::Changed { .. }) => Status::aborted(message),
        DataSourceError::Resolve(ResolveError::Unsupported) => Status::unimplemented(message),
        _ => Status::internal(message),
    }
}

/// A subscription error as a gRPC status.
pub fn subscription_status(e: SubscriptionError) -> Status {
    Status::resource_exhausted(e.to_string())
}

/// A message back as a data source record (what `ctwatch get` prints).
pub fn record_from_message(m: &pb::Container) -> ContainerRecord {
    let c = container_from_message(m);
    let mut record = ContainerRecord::new(&c, None);
    record.init_pid = m.init_pid;
    record.mount_ns = m.mount_ns;
    record.net_ns = m.net_ns;
    record
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ctwatch::hook::OciSummary;

    use super::*;

    /// A container with every field set to something other than its default.
    fn full_container() -> Container {
        let hook = HookInfo {
            runtime_binary: "/usr/sbin/runc".into(),
            runtime_pid: 42,
            command: "create".into(),
            bundle: "/run/b".into(),
            pid_file: "/run/b/pid".into(),
            state_root: "/run/runc".into(),
            oci: Some(OciSummary {
                oci_version: "1.0.2".into(),
                args: vec!["sleep".into(), "60".into()],
                cwd: "/".into(),
                uid: 1,
                gid: 2,
                hostname: "h".into(),
                root_path: "rootfs".into(),
                root_readonly: true,
                cgroups_path: "/x".into(),
                namespaces: vec!["pid".into()],
                mounts: 3,
                capabilities: vec!["CAP_CHOWN".into()],
                annotations: BTreeMap::from([("a".into(), "1".into())]),
            }),
            oci_error: None,
            verdict: Some(PolicyVerdict {
                mode: "audit".into(),
                denied: false,
                rule: "r".into(),
                reason: "why".into(),
            }),
            answer_us: 7,
            answered_by_deadline: true,
            init_pid: Some(99),
            trusted: true,
            caller_uid: 0,
            security: None,
        };
        let mut c = Container {
            cgroup_id: 1234,
            cgroup_path: "/docker/abc".into(),
            image: "local/busybox:1".into(),
            image_digest: format!("sha256:{}", "b".repeat(64)),
            name: "web".into(),
            pod: PodInfo { name: "p".into(), namespace: "ns".into(), uid: "u".into(), sandbox: true },
            labels: BTreeMap::from([("team".into(), "blue".into())]),
            ctime_ns: 5,
            state: ContainerState::Removed,
            started_at_ns: Some(6),
            finished_at_ns: Some(7),
            exit_code: Some(3),
            exit_signal: Some(9),
            oom_killed: Some(true),
            oom_kills: Some(2),
            init_pid: Some(77),
            start_exe: Some("/bin/sleep".into()),
            start_argv0: Some("sleep".into()),
            ..Container::new("abc", Runtime::Podman)
        };
        c.set_hook(Arc::new(hook));
        c.security = Some(Arc::new(full_security()));
        c
    }

    /// A security profile with every field set to something other than its default.
    fn full_security() -> SecurityProfile {
        SecurityProfile {
            privileged: true,
            capabilities_added: vec!["CAP_SYS_ADMIN".into()],
            capabilities_dropped: vec!["CAP_MKNOD".into()],
            capabilities_bounding: vec!["CAP_CHOWN".into(), "CAP_SYS_ADMIN".into()],
            capabilities_effective: vec!["CAP_CHOWN".into()],
            host_namespaces: vec!["pid".into(), "network".into()],
            joined_namespaces: BTreeMap::from([("ipc".into(), "/proc/7/ns/ipc".into())]),
            run_as_uid: 1000,
            run_as_gid: 1001,
            additional_gids: vec![10, 20],
            run_as_root: true,
            root_remapped: true,
            no_new_privileges: true,
            read_only_rootfs: true,
            seccomp: Seccomp::RuntimeDefault,
            apparmor: "docker-default".into(),
            selinux: "system_u:system_r:container_t:s0".into(),
            proc_unmasked: true,
            host_mounts: vec![HostMount {
                source: "/var/run/docker.sock".into(),
                destination: "/var/run/docker.sock".into(),
                read_only: true,
                sensitive: true,
            }],
            devices: vec![DeviceNode { path: "/dev/null".into(), kind: "c".into(), major: 1, minor: 3 }],
            all_devices_allowed: true,
            sysctls: BTreeMap::from([("net.ipv4.ip_forward".into(), "1".into())]),
            limits: Limits {
                memory_bytes: Some(64 << 20),
                cpu_millis: Some(500),
                cpu_shares: Some(512),
                cpuset: "0-1".into(),
                pids: Some(100),
            },
        }
    }

    #[test]
    fn the_security_message_round_trips_every_field() {
        for seccomp in [Seccomp::Unconfined, Seccomp::RuntimeDefault, Seccomp::Custom] {
            let p = SecurityProfile { seccomp, ..full_security() };
            assert_eq!(security_from_message(&security_message(&p)), p);
        }
        let bare = SecurityProfile::from_config(&ctwatch_security::Config::default());
        assert_eq!(security_from_message(&security_message(&bare)), bare);
        // Through the wire bytes too, as a client decodes it.
        use prost::Message;
        let c = full_container();
        let bytes = container_message(ContainerRecord::new(&c, None)).encode_to_vec();
        let decoded = pb::Container::decode(bytes.as_slice()).unwrap();
        assert_eq!(container_from_message(&decoded).security, c.security);
    }

    #[test]
    fn list_requests_carry_security_filters_and_refuse_unknown_ones() {
        let r =
            pb::ListRequest { security: vec!["privileged=true".into(), "cap=SYS_ADMIN".into()], ..Default::default() };
        let f = filter_from_request(&r).unwrap();
        assert_eq!(f.security, vec![("privileged".into(), "true".into()), ("cap".into(), "SYS_ADMIN".into())]);
        let c = full_container();
        assert!(f.matches(&Container { state: ContainerState::Created, ..c.clone() }));
        let none = Container { security: None, state: ContainerState::Created, ..c };
        assert!(!f.matches(&none), "no profile matches no security filter");
        for bad in ["privileged=maybe", "colour=red", "privileged"] {
            let r = pb::ListRequest { security: vec![bad.into()], ..Default::default() };
            let e = filter_from_request(&r).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn the_model_survives_a_round_trip_through_protobuf() {
        let c = full_container();
        assert_eq!(c.annotations.len(), 1, "the hook's OCI annotations are the container's");
        let message = container_message(ContainerRecord::new(&c, None));
        assert_eq!(container_from_message(&message), c);
        // And through an event, whose hook travels once, as Event.hook.
        let event = ContainerEvent {
            time: UNIX_EPOCH + Duration::from_nanos(77),
            kind: EventKind::ContainerCreate,
            cgroup_id: c.cgroup_id,
            container: Arc::new(c.clone()),
            kernel_time: Some(UNIX_EPOCH + Duration::from_nanos(66)),
            enriched: Some(true),
            seq: 0,
            late: false,
        };
        let m = event_message(&event, ContainerRecord::new(&c, None));
        assert!(m.hook.is_some() && m.container.as_ref().unwrap().hook.is_none());
        assert_eq!(event_from_message(&m), Some(event));
        // The record keeps the namespaces the message carries.
        let mut record = ContainerRecord::new(&c, None);
        record.init_pid = Some(3);
        record.mount_ns = Some(4);
        record.net_ns = Some(5);
        assert_eq!(record_from_message(&container_message(record.clone())), record);
    }

    #[test]
    fn hook_findings_keep_who_called() {
        let info = HookInfo {
            runtime_binary: "/usr/sbin/runc".into(),
            runtime_pid: 7,
            command: "create".into(),
            bundle: "/b".into(),
            pid_file: String::new(),
            state_root: String::new(),
            oci: None,
            oci_error: Some("not read".into()),
            verdict: None,
            answer_us: 3,
            answered_by_deadline: false,
            init_pid: None,
            trusted: false,
            caller_uid: 1000,
            security: None,
        };
        let m = hook_message(&info);
        assert!(m.untrusted);
        assert_eq!(m.caller_uid, 1000);
        assert_eq!(hook_from_message(&m), info);
        let trusted = HookInfo { trusted: true, caller_uid: 0, ..info };
        assert!(!hook_message(&trusted).untrusted);
        assert_eq!(hook_from_message(&hook_message(&trusted)), trusted);
        // A message without the fields (an older agent) is a trusted create.
        assert!(hook_from_message(&pb::HookInfo::default()).trusted);
    }
}
