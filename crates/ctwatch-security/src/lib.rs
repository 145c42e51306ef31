//! What a container may do, and the Kubernetes Pod Security Standards on it.
//!
//! - [`oci`]: the OCI `config.json`, stream-parsed with a 64 MiB cap (one
//!   parse for the hook's summary and for the profile).
//! - [`profile`]: [`SecurityProfile`], derived from a config by a pure function;
//!   [`SecurityProfile::privilege_class`] for metrics and
//!   [`SecurityProfile::matches_filter`] for `--filter privileged=true`, `host_ns=pid`, `cap=SYS_ADMIN`.
//! - [`pss`]: the upstream checks (baseline, restricted) with their names, and
//!   which of them a node can decide.
//! - [`policy`]: a level plus exemptions (pod namespace, label, image, runtime).
//!
//! ```
//! use ctwatch_security::{pss, SecurityProfile};
//! let config = br#"{"process":{"user":{"uid":0},"capabilities":{"bounding":["CAP_SYS_ADMIN"]}},
//!                   "linux":{"namespaces":[{"type":"mount"},{"type":"network"}]}}"#;
//! let profile = SecurityProfile::from_config_bytes(config).unwrap();
//! assert!(profile.matches_filter("host_ns", "pid").unwrap());
//! let checks: Vec<String> = pss::evaluate(&profile, pss::Level::Baseline).into_iter().map(|v| v.check).collect();
//! assert!(checks.contains(&"Host Namespaces".to_string()) && checks.contains(&"Capabilities".to_string()));
//! ```

#![warn(missing_docs)]

pub mod oci;
pub mod policy;
pub mod profile;
pub mod pss;

pub use oci::{Config, ParseError, MAX_CONFIG_BYTES};
pub use policy::{glob_match, Exemptions, Outcome, PssPolicy, Subject};
pub use profile::{joins_host_namespace, FilterError, HostMount, Limits, PrivilegeClass, Seccomp, SecurityProfile};
pub use pss::{Level, Violation};
