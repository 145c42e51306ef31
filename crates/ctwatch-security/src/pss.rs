//! The Kubernetes Pod Security Standards (<https://kubernetes.io/docs/concepts/security/pod-security-standards/>)
//! as checks on a [`SecurityProfile`], each named as upstream names it.
//!
//! A node sees a container's OCI config, not its pod spec: each check is
//! decided from what the runtime was told to do. [`CHECKS`] says, for every
//! upstream check, whether that is possible:
//!
//! - **HostProcess** (baseline): Windows only; never violated on Linux.
//! - **Host Namespaces** (baseline): `host_namespaces` contains pid, network or ipc.
//! - **Privileged Containers** (baseline): `privileged`.
//! - **Capabilities** (baseline): `capabilities_added` outside the baseline list
//!   (AUDIT_WRITE, CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, MKNOD,
//!   NET_BIND_SERVICE, SETFCAP, SETGID, SETPCAP, SETUID, SYS_CHROOT).
//! - **HostPath Volumes** (baseline): any `host_mounts` (bind mounts of host
//!   paths other than those the runtimes and kubelet make).
//! - **Host Ports** (baseline): *not decidable*: port publishing is done
//!   outside the OCI config (docker-proxy, iptables, CNI portmap). A container
//!   in the host's network namespace can bind any host port; that is caught by
//!   Host Namespaces.
//! - **AppArmor** (baseline): the profile is `unconfined`.
//! - **SELinux** (baseline): the label's type is not one of container_t,
//!   container_init_t, container_kvm_t, container_engine_t, or its user or role
//!   is other than the runtimes' own (`system_u`, `system_r`) — upstream
//!   forbids any user or role set in the pod, which the node cannot tell apart
//!   from the runtime's.
//! - **/proc Mount Type** (baseline): `/proc` unmasked (no masked and no
//!   read-only paths: `procMount: Unmasked`).
//! - **Seccomp** (baseline): the filter is unconfined. Upstream forbids only an
//!   *explicit* Unconfined; in an OCI config an unset profile and Unconfined
//!   are the same (no filter), so a pod that leaves `seccompProfile` unset on
//!   a kubelet without `--seccomp-default` is reported too (stricter than upstream).
//! - **Sysctls** (baseline): a sysctl outside the safe list.
//! - **Volume Types** (restricted): *not decidable* beyond hostPath: a
//!   configMap, secret, emptyDir or PVC is a bind from kubelet's directory,
//!   whatever its type; hostPath is caught by HostPath Volumes.
//! - **Privilege Escalation** (restricted): `no_new_privileges` is false.
//! - **Running as Non-root** and **Running as Non-root user** (restricted):
//!   the init's UID is 0 (the config holds the UID the image and the pod
//!   resolved to, so both checks see the same value).
//! - **Seccomp** (restricted): the filter is unconfined (RuntimeDefault and
//!   Localhost pass).
//! - **Capabilities** (restricted): the bounding set holds anything but
//!   `CAP_NET_BIND_SERVICE` ("drop ALL", add at most NET_BIND_SERVICE).

use serde::{Deserialize, Serialize};

use crate::profile::{Seccomp, SecurityProfile};

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// No restriction (nothing is checked).
    Privileged,
    /// Prevents known privilege escalations.
    Baseline,
    /// Baseline plus current hardening practice.
    Restricted,
}

impl Level {
    /// `privileged`, `baseline` or `restricted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }

    /// Parses a level's name.
    pub fn parse(name: &str) -> Option<Level> {
        match name {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }
}

/// Whether a check can be decided from an OCI config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decidable {
    /// Fully.
    Yes,
    /// In part (the check's doc says which part).
    Partly,
    /// Not at all: never reported as a violation.
    No,
}

/// One upstream check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckInfo {
    /// Its upstream name (`Host Namespaces`).
    pub name: &'static str,
    /// The level that introduces it.
    pub level: Level,
    /// Whether a node can decide it.
    pub decidable: Decidable,
    /// The profile field it reads.
    pub field: &'static str,
}

const fn check(name: &'static str, level: Level, decidable: Decidable, field: &'static str) -> CheckInfo {
    CheckInfo { name, level, decidable, field }
}

/// Every upstream check, in the upstream document's order.
pub const CHECKS: [CheckInfo; 17] = [
    check("HostProcess", Level::Baseline, Decidable::Yes, "(Windows only)"),
    check("Host Namespaces", Level::Baseline, Decidable::Yes, "host_namespaces"),
    check("Privileged Containers", Level::Baseline, Decidable::Yes, "privileged"),
    check("Capabilities", Level::Baseline, Decidable::Yes, "capabilities_added"),
    check("HostPath Volumes", Level::Baseline, Decidable::Partly, "host_mounts"),
    check("Host Ports", Level::Baseline, Decidable::No, "(not in the OCI config)"),
    check("AppArmor", Level::Baseline, Decidable::Yes, "apparmor"),
    check("SELinux", Level::Baseline, Decidable::Partly, "selinux"),
    check("/proc Mount Type", Level::Baseline, Decidable::Yes, "proc_unmasked"),
    check("Seccomp", Level::Baseline, Decidable::Partly, "seccomp"),
    check("Sysctls", Level::Baseline, Decidable::Yes, "sysctls"),
    check("Volume Types", Level::Restricted, Decidable::No, "(host_mounts only)"),
    check("Privilege Escalation", Level::Restricted, Decidable::Yes, "no_new_privileges"),
    check("Running as Non-root", Level::Restricted, Decidable::Yes, "run_as_uid"),
    check("Running as Non-root user", Level::Restricted, Decidable::Yes, "run_as_uid"),
    check("Seccomp", Level::Restricted, Decidable::Yes, "seccomp"),
    check("Capabilities", Level::Restricted, Decidable::Yes, "capabilities_bounding"),
];

/// Capabilities baseline allows adding (upstream list, with `CAP_`).
pub const BASELINE_ALLOWED_CAPABILITIES: [&str; 13] = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// Sysctls baseline allows (upstream's safe set, as of Kubernetes 1.32).
pub const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// SELinux types baseline allows.
pub const ALLOWED_SELINUX_TYPES: [&str; 4] =
    ["container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

/// One failed check: which, on what field, with what value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The upstream check's name (`Privileged Containers`).
    pub check: String,
    /// The level the check belongs to.
    pub level: Level,
    /// The [`SecurityProfile`] field (`privileged`).
    pub field: String,
    /// Its value (`true`; lists comma-separated).
    pub value: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} = {}", self.check, self.field, self.value)
    }
}

/// Every check of `level` (and of the levels below it) that the profile fails, in upstream order.
pub fn evaluate(p: &SecurityProfile, level: Level) -> Vec<Violation> {
    let mut out = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    let mut fail = |check: &str, level: Level, field: &str, value: String| {
        out.push(Violation { check: check.into(), level, field: field.into(), value })
    };
    let b = Level::Baseline;
    let host: Vec<&str> =
        p.host_namespaces.iter().map(String::as_str).filter(|n| matches!(*n, "pid" | "network" | "ipc")).collect();
    if !host.is_empty() {
        fail("Host Namespaces", b, "host_namespaces", host.join(","));
    }
    if p.privileged {
        fail("Privileged Containers", b, "privileged", "true".into());
    }
    let added: Vec<&str> = p
        .capabilities_added
        .iter()
        .map(String::as_str)
        .filter(|c| !BASELINE_ALLOWED_CAPABILITIES.contains(c))
        .collect();
    if !added.is_empty() {
        fail("Capabilities", b, "capabilities_added", added.join(","));
    }
    if !p.host_mounts.is_empty() {
        let sources: Vec<&str> = p.host_mounts.iter().map(|m| m.source.as_str()).collect();
        fail("HostPath Volumes", b, "host_mounts", sources.join(","));
    }
    if p.apparmor == "unconfined" {
        fail("AppArmor", b, "apparmor", p.apparmor.clone());
    }
    if !p.selinux.is_empty() {
        let mut parts = p.selinux.split(':');
        let (user, role, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let ok =
            ALLOWED_SELINUX_TYPES.contains(&kind) && matches!(user, "" | "system_u") && matches!(role, "" | "system_r");
        if !ok {
            fail("SELinux", b, "selinux", p.selinux.clone());
        }
    }
    if p.proc_unmasked {
        fail("/proc Mount Type", b, "proc_unmasked", "true".into());
    }
    let unconfined = p.seccomp == Seccomp::Unconfined;
    if unconfined {
        // Restricted's Seccomp fails on the same value: reported once, at the higher level.
        let at = if level == Level::Restricted { Level::Restricted } else { b };
        fail("Seccomp", at, "seccomp", p.seccomp.as_str().into());
    }
    let unsafe_sysctls: Vec<String> = p
        .sysctls
        .iter()
        .filter(|(k, _)| !SAFE_SYSCTLS.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !unsafe_sysctls.is_empty() {
        fail("Sysctls", b, "sysctls", unsafe_sysctls.join(","));
    }
    if level < Level::Restricted {
        return out;
    }
    let r = Level::Restricted;
    if !p.no_new_privileges {
        fail("Privilege Escalation", r, "no_new_privileges", "false".into());
    }
    if p.run_as_uid == 0 {
        fail("Running as Non-root", r, "run_as_uid", "0".into());
        fail("Running as Non-root user", r, "run_as_uid", "0".into());
    }
    let kept: Vec<&str> =
        p.capabilities_bounding.iter().map(String::as_str).filter(|c| *c != "CAP_NET_BIND_SERVICE").collect();
    if !kept.is_empty() {
        fail("Capabilities", r, "capabilities_bounding", kept.join(","));
    }
    out
}
