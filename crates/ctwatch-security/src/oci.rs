//! The parts of an OCI runtime `config.json` that ctwatch reads, parsed as a
//! stream with a size cap: everything else (a huge `process.env`, hooks, ...)
//! is skipped, never held. Every field is optional and `null` is read as
//! empty, so a sparse config is a config, not an error.
//!
//! One parse serves both the hook's summary and the [`SecurityProfile`](crate::SecurityProfile).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};

use serde::{Deserialize, Deserializer};
use thiserror::Error;

/// A `config.json` larger than this is refused (64 MiB).
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024 * 1024;

/// Why a config could not be parsed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// It is larger than [`MAX_CONFIG_BYTES`].
    #[error("the config is more than {MAX_CONFIG_BYTES} bytes")]
    TooLarge,
    /// It is not an OCI config in JSON.
    #[error("not a valid OCI config: {0}")]
    Json(#[from] serde_json::Error),
}

/// `null` (or a missing field) is the empty value.
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The OCI runtime spec, as far as ctwatch reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Config {
    /// `ociVersion`.
    #[serde(deserialize_with = "nullable")]
    pub oci_version: String,
    /// `process`.
    #[serde(deserialize_with = "nullable")]
    pub process: Process,
    /// `hostname`.
    #[serde(deserialize_with = "nullable")]
    pub hostname: String,
    /// `root`.
    #[serde(deserialize_with = "nullable")]
    pub root: Root,
    /// `mounts`, in order.
    #[serde(deserialize_with = "nullable")]
    pub mounts: Vec<Mount>,
    /// `linux`.
    #[serde(deserialize_with = "nullable")]
    pub linux: Linux,
    /// `annotations`.
    #[serde(deserialize_with = "nullable")]
    pub annotations: HashMap<String, String>,
}

/// `process`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Process {
    /// `args`.
    #[serde(deserialize_with = "nullable")]
    pub args: Vec<String>,
    /// `cwd`.
    #[serde(deserialize_with = "nullable")]
    pub cwd: String,
    /// `user`.
    #[serde(deserialize_with = "nullable")]
    pub user: User,
    /// `capabilities`.
    #[serde(deserialize_with = "nullable")]
    pub capabilities: Capabilities,
    /// `noNewPrivileges`.
    #[serde(deserialize_with = "nullable")]
    pub no_new_privileges: bool,
    /// `apparmorProfile`.
    #[serde(deserialize_with = "nullable")]
    pub apparmor_profile: String,
    /// `selinuxLabel`.
    #[serde(deserialize_with = "nullable")]
    pub selinux_label: String,
}

/// `process.user`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct User {
    /// `uid`.
    #[serde(deserialize_with = "nullable")]
    pub uid: u32,
    /// `gid`.
    #[serde(deserialize_with = "nullable")]
    pub gid: u32,
    /// `additionalGids`.
    #[serde(deserialize_with = "nullable")]
    pub additional_gids: Vec<u32>,
}

/// `process.capabilities`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    /// `bounding`.
    #[serde(deserialize_with = "nullable")]
    pub bounding: Vec<String>,
    /// `effective`.
    #[serde(deserialize_with = "nullable")]
    pub effective: Vec<String>,
    /// `permitted`.
    #[serde(deserialize_with = "nullable")]
    pub permitted: Vec<String>,
    /// `ambient`.
    #[serde(deserialize_with = "nullable")]
    pub ambient: Vec<String>,
}

/// `root`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Root {
    /// `path`.
    #[serde(deserialize_with = "nullable")]
    pub path: String,
    /// `readonly`.
    #[serde(deserialize_with = "nullable")]
    pub readonly: bool,
}

/// One of `mounts`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Mount {
    /// `destination`.
    #[serde(deserialize_with = "nullable")]
    pub destination: String,
    /// `type`.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    /// `source`.
    #[serde(deserialize_with = "nullable")]
    pub source: String,
    /// `options`.
    #[serde(deserialize_with = "nullable")]
    pub options: Vec<String>,
}

/// `linux`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Linux {
    /// `cgroupsPath`.
    #[serde(deserialize_with = "nullable")]
    pub cgroups_path: String,
    /// `namespaces`.
    #[serde(deserialize_with = "nullable")]
    pub namespaces: Vec<Namespace>,
    /// `uidMappings`.
    #[serde(deserialize_with = "nullable")]
    pub uid_mappings: Vec<IdMapping>,
    /// `seccomp` (absent: no seccomp filter).
    pub seccomp: Option<Seccomp>,
    /// `devices`: device nodes created in the container.
    #[serde(deserialize_with = "nullable")]
    pub devices: Vec<Device>,
    /// `resources`.
    #[serde(deserialize_with = "nullable")]
    pub resources: Resources,
    /// `sysctl`.
    #[serde(deserialize_with = "nullable")]
    pub sysctl: BTreeMap<String, String>,
    /// `maskedPaths`.
    #[serde(deserialize_with = "nullable")]
    pub masked_paths: Vec<String>,
    /// `readonlyPaths`.
    #[serde(deserialize_with = "nullable")]
    pub readonly_paths: Vec<String>,
    /// `mountLabel`.
    #[serde(deserialize_with = "nullable")]
    pub mount_label: String,
}

/// One of `linux.namespaces`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Namespace {
    /// `type`: pid, network, mount, ipc, uts, user, cgroup, time.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    /// `path`: an existing namespace to join ("" makes a new one).
    #[serde(deserialize_with = "nullable")]
    pub path: String,
}

/// One of `linux.uidMappings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct IdMapping {
    /// `containerID`.
    #[serde(rename = "containerID", deserialize_with = "nullable")]
    pub container_id: u32,
    /// `hostID`.
    #[serde(rename = "hostID", deserialize_with = "nullable")]
    pub host_id: u32,
    /// `size`.
    #[serde(deserialize_with = "nullable")]
    pub size: u32,
}

/// `linux.seccomp`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Seccomp {
    /// `defaultAction` (`SCMP_ACT_ERRNO`, `SCMP_ACT_ALLOW`, ...).
    #[serde(deserialize_with = "nullable")]
    pub default_action: String,
    /// `syscalls`.
    #[serde(deserialize_with = "nullable")]
    pub syscalls: Vec<SyscallRule>,
}

/// One of `linux.seccomp.syscalls` (its `args` are not read).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SyscallRule {
    /// Those of its `names` that are in
    /// [`NEVER_ALLOWED_BY_DEFAULT_PROFILES`](crate::profile::NEVER_ALLOWED_BY_DEFAULT_PROFILES)
    /// (the others are read without being kept: a default profile names ~400).
    #[serde(rename = "names", deserialize_with = "never_allowed_names")]
    pub never_allowed: Vec<&'static str>,
    /// `action`.
    #[serde(deserialize_with = "nullable")]
    pub action: String,
}

/// Reads a list of syscall names, keeping only the never-allowed ones, without allocating the rest.
fn never_allowed_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<&'static str>, D::Error> {
    struct Names;
    impl<'de> serde::de::Visitor<'de> for Names {
        type Value = Vec<&'static str>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of syscall names")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut kept = Vec::new();
            while let Some(Name(name)) = seq.next_element()? {
                kept.extend(name);
            }
            Ok(kept)
        }
    }
    struct Name(Option<&'static str>);
    impl<'de> Deserialize<'de> for Name {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Name;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a syscall name")
                }
                fn visit_str<E>(self, v: &str) -> Result<Name, E> {
                    Ok(Name(crate::profile::NEVER_ALLOWED_BY_DEFAULT_PROFILES.iter().copied().find(|n| *n == v)))
                }
            }
            d.deserialize_str(V)
        }
    }
    d.deserialize_any(Names)
}

/// One of `linux.devices`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Device {
    /// `path` in the container.
    #[serde(deserialize_with = "nullable")]
    pub path: String,
    /// `type`: c, b, u, p.
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    /// `major`.
    #[serde(deserialize_with = "nullable")]
    pub major: i64,
    /// `minor`.
    #[serde(deserialize_with = "nullable")]
    pub minor: i64,
}

/// `linux.resources`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// `devices`: the device cgroup's rules, in order.
    #[serde(deserialize_with = "nullable")]
    pub devices: Vec<DeviceRule>,
    /// `memory`.
    #[serde(deserialize_with = "nullable")]
    pub memory: Memory,
    /// `cpu`.
    #[serde(deserialize_with = "nullable")]
    pub cpu: Cpu,
    /// `pids`.
    #[serde(deserialize_with = "nullable")]
    pub pids: Pids,
}

/// One of `linux.resources.devices`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DeviceRule {
    /// `allow`.
    #[serde(deserialize_with = "nullable")]
    pub allow: bool,
    /// `type` (absent or `a`: all).
    pub r#type: Option<String>,
    /// `major` (absent or -1: all).
    pub major: Option<i64>,
    /// `minor` (absent or -1: all).
    pub minor: Option<i64>,
    /// `access`: r, w, m.
    #[serde(deserialize_with = "nullable")]
    pub access: String,
}

/// `linux.resources.memory`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Memory {
    /// `limit` in bytes.
    pub limit: Option<i64>,
}

/// `linux.resources.cpu`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Cpu {
    /// `shares`.
    pub shares: Option<u64>,
    /// `quota` in µs per period.
    pub quota: Option<i64>,
    /// `period` in µs.
    pub period: Option<u64>,
    /// `cpus`: the cpuset.
    #[serde(deserialize_with = "nullable")]
    pub cpus: String,
}

/// `linux.resources.pids`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Pids {
    /// `limit`.
    pub limit: Option<i64>,
}

impl Config {
    /// Parses a config from a stream of at most [`MAX_CONFIG_BYTES`]: a stream
    /// that is longer, or cut short, is an error, never a partial config.
    pub fn from_reader(reader: impl Read) -> Result<Config, ParseError> {
        let mut limited = reader.take(MAX_CONFIG_BYTES + 1);
        let parsed = {
            let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(64 * 1024, &mut limited));
            Config::deserialize(&mut de).and_then(|config| de.end().map(|()| config))
        };
        // More than the cap was read: too large, whatever the parser made of it.
        if limited.limit() == 0 {
            return Err(ParseError::TooLarge);
        }
        Ok(parsed?)
    }

    /// Parses a config held in memory (faster than a stream: strings are read in place).
    pub fn from_slice(bytes: &[u8]) -> Result<Config, ParseError> {
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ParseError::TooLarge);
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let config = Config::deserialize(&mut de)?;
        de.end()?;
        Ok(config)
    }
}
