//! Reading a bundle's OCI `config.json` while the runtime waits, safely: the
//! path is the caller's (relative to its root and working directory), the
//! file may be anything (a FIFO, a device, a huge file, bad JSON), and none of
//! that may block or crash ctwatch.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ctwatch::hook::OciSummary;
use ctwatch::untrusted::clean;
use ctwatch_security::{Config, ParseError, SecurityProfile};
use thiserror::Error;

use ctwatch::untrusted::RecordFileError;

use crate::caller::CallerFs;

/// A `config.json` larger than this is refused. Runtimes write what the
/// user gave them (a big environment makes a big config), so this is large;
/// the file is parsed as a stream and only the fields reported are kept.
pub const MAX_CONFIG_BYTES: u64 = ctwatch_security::MAX_CONFIG_BYTES;
const MAX_ARGS: usize = 64;
const MAX_STRING: usize = 512;
const MAX_ANNOTATIONS: usize = 128;

/// Why a config could not be read.
#[derive(Debug, Error)]
pub enum BundleError {
    /// It could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file (as ctwatch opened it).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a regular file (a FIFO would block the answer).
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    /// It is larger than [`MAX_CONFIG_BYTES`].
    #[error("{path} is {size} bytes, more than the {MAX_CONFIG_BYTES} read")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// It is not an OCI spec in JSON.
    #[error("{path} is not a valid OCI config: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        source: serde_json::Error,
    },
}

/// Where a path the runtime was given is, as seen from ctwatch: relative to
/// the runtime process's root (absolute paths) or working directory.
pub fn caller_path(proc_root: &Path, pid: u32, path: &str) -> PathBuf {
    // Without `.` parts: `--bundle .` is reported as the directory itself.
    let path: PathBuf = Path::new(path).components().filter(|c| *c != std::path::Component::CurDir).collect();
    let path = path.to_str().unwrap_or_default();
    let proc = proc_root.join(pid.to_string());
    let in_host_root = std::fs::read_link(proc.join("root")).is_ok_and(|r| r == Path::new("/"));
    if Path::new(path).is_absolute() {
        if in_host_root {
            PathBuf::from(path)
        } else {
            proc.join("root").join(path.trim_start_matches('/'))
        }
    } else {
        let cwd = if in_host_root { std::fs::read_link(proc.join("cwd")).ok() } else { None };
        let cwd = cwd.unwrap_or_else(|| proc.join("cwd"));
        if path.is_empty() {
            cwd
        } else {
            cwd.join(path)
        }
    }
}

/// A config that was read: the summary, the annotations in full (for pod
/// data and the policy) and what the container may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleConfig {
    /// What is reported.
    pub summary: OciSummary,
    /// Every annotation, uncut (the summary's are capped).
    pub annotations: HashMap<String, String>,
    /// Its privileges, derived from the same parse (for the Pod Security Standards).
    pub security: SecurityProfile,
}

/// Reads and summarises the OCI config at `path` without ever blocking on it.
pub fn read_config(path: &Path) -> Result<BundleConfig, BundleError> {
    let io = |source| BundleError::Io { path: path.to_path_buf(), source };
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(BundleError::NotAFile(path.to_path_buf()));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(BundleError::TooLarge { path: path.to_path_buf(), size: meta.len() });
    }
    parse_config(file.take(MAX_CONFIG_BYTES)).map_err(|e| parse_error(path, e))
}

fn parse_error(path: &Path, e: ParseError) -> BundleError {
    match e {
        ParseError::Json(source) => BundleError::Json { path: path.to_path_buf(), source },
        _ => BundleError::TooLarge { path: path.to_path_buf(), size: MAX_CONFIG_BYTES + 1 },
    }
}

/// Parses an OCI config from a stream, keeping only the fields reported and
/// those the security profile needs (a big `process.env` is skipped, never
/// held). A stream cut short (a file that grew past the cap) is malformed JSON.
fn parse_config(reader: impl Read) -> Result<BundleConfig, ParseError> {
    Ok(summarise(Config::from_reader(reader)?))
}

/// Reads and summarises the OCI config at `path` as the runtime's caller
/// would read it (inside its root, with its file access rights).
pub fn read_config_as(fs: &CallerFs, path: &Path) -> Result<BundleConfig, BundleError> {
    let text = fs.read(path, MAX_CONFIG_BYTES).map_err(|e| match e {
        RecordFileError::Io(source) => BundleError::Io { path: path.to_path_buf(), source },
        RecordFileError::NotAFile => BundleError::NotAFile(path.to_path_buf()),
        RecordFileError::TooLarge { size, .. } => BundleError::TooLarge { path: path.to_path_buf(), size },
    })?;
    Config::from_slice(&text).map(summarise).map_err(|e| parse_error(path, e))
}

fn summarise(spec: Config) -> BundleConfig {
    let short = |s: &str| clean(s, MAX_STRING);
    let annotations: BTreeMap<String, String> =
        spec.annotations.iter().take(MAX_ANNOTATIONS).map(|(k, v)| (short(k), short(v))).collect();
    let summary = OciSummary {
        oci_version: short(&spec.oci_version),
        args: spec.process.args.iter().take(MAX_ARGS).map(|a| short(a)).collect(),
        cwd: short(&spec.process.cwd),
        uid: spec.process.user.uid,
        gid: spec.process.user.gid,
        hostname: short(&spec.hostname),
        root_path: short(&spec.root.path),
        root_readonly: spec.root.readonly,
        cgroups_path: short(&spec.linux.cgroups_path),
        // A namespace with a path joins an existing one: only new ones are listed.
        namespaces: spec
            .linux
            .namespaces
            .iter()
            .filter(|n| n.path.is_empty())
            .take(16)
            .map(|n| short(&n.kind))
            .collect(),
        mounts: spec.mounts.len(),
        capabilities: spec.process.capabilities.bounding.iter().take(64).map(|c| short(c)).collect(),
        annotations,
    };
    let mut security = SecurityProfile::from_config(&spec);
    // A pod's containers join its sandbox's namespaces by path: the host's for a hostNetwork/hostPID pod.
    security
        .resolve_joined_namespaces(|kind, path| ctwatch_security::joins_host_namespace(Path::new("/proc"), kind, path));
    BundleConfig { summary, annotations: spec.annotations, security }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_a_runc_spec() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"ociVersion":"1.0.2","process":{"args":["sh","-c","x"],"cwd":"/","user":{"uid":0,"gid":0},
            "capabilities":{"bounding":["CAP_KILL"]}},"root":{"path":"rootfs","readonly":true},"hostname":"h",
            "mounts":[{},{}],"linux":{"cgroupsPath":"/x","namespaces":[{"type":"pid"},{"type":"network","path":"/proc/1/ns/net"}]},
            "annotations":{"io.kubernetes.cri.sandbox-name":"web","a":"b\u001b[31m"},"unknownField":1}"#,
        )
        .unwrap();
        let c = read_config(&path).unwrap();
        assert_eq!(c.summary.args, ["sh", "-c", "x"]);
        assert_eq!(c.summary.namespaces, ["pid"]);
        assert_eq!(c.summary.mounts, 2);
        assert!(c.summary.root_readonly);
        assert_eq!(c.summary.annotations["a"], "b\u{fffd}[31m");
        assert_eq!(c.annotations["io.kubernetes.cri.sandbox-name"], "web");
    }

    #[test]
    fn bad_files_are_errors_not_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(read_config(&fifo), Err(BundleError::NotAFile(_))));
        assert!(matches!(read_config(dir.path()), Err(BundleError::NotAFile(_))));
        assert!(matches!(read_config(&dir.path().join("none")), Err(BundleError::Io { .. })));
        let bad = dir.path().join("bad.json");
        for text in ["{", "null", "7", r#"{"process":{"args":"notalist"}}"#, "\u{0}"] {
            std::fs::write(&bad, text).unwrap();
            assert!(matches!(read_config(&bad), Err(BundleError::Json { .. })), "{text}");
        }
        let big = dir.path().join("big.json");
        std::fs::File::create(&big).unwrap().set_len(MAX_CONFIG_BYTES + 1).unwrap();
        assert!(matches!(read_config(&big), Err(BundleError::TooLarge { .. })));
    }

    #[test]
    fn a_config_with_a_huge_environment_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let env: Vec<String> = (0..5000).map(|i| format!("V{i}={}", "x".repeat(1000))).collect();
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "env": env},
            "annotations": {"io.podman.annotations.privileged": "TRUE"},
        });
        std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 4_800_000);
        let c = read_config(&path).unwrap();
        assert_eq!(c.annotations["io.podman.annotations.privileged"], "TRUE");
        assert_eq!(c.summary.args, ["sh"]);
        // Cut short: malformed, not an empty config.
        let text = std::fs::read(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        assert!(matches!(read_config(&path), Err(BundleError::Json { .. })));
    }

    #[test]
    fn caller_paths_follow_the_callers_cwd() {
        let me = std::process::id();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(caller_path(Path::new("/proc"), me, "b"), cwd.join("b"));
        assert_eq!(caller_path(Path::new("/proc"), me, "/x/b"), PathBuf::from("/x/b"));
        assert_eq!(caller_path(Path::new("/proc"), me, "."), cwd);
        assert_eq!(caller_path(Path::new("/proc"), me, "./b/."), cwd.join("b"));
    }
}
