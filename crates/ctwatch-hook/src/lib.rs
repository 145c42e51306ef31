//! ctwatch's runtime hook: fanotify `FAN_OPEN_EXEC_PERM` marks on runc, crun
//! and conmon hold each exec of a runtime until ctwatch has read what it is
//! about to create (the OCI bundle's `config.json`, the runtime's records),
//! reported it as `container_precreate`, and, under an enforcing policy,
//! refused it.
//!
//! - [`binaries`]: which runtime binaries exist here, to be marked.
//! - [`exec_args`]: the argv of an exec that is still waiting.
//! - [`invocation`]: what the runtime was asked to do.
//! - [`caller`]: who executed the runtime, and reading its files as it would.
//! - [`bundle`]: the OCI config, read safely.
//! - [`identity`]: name, image, digest and pod, without a daemon that may be the one waiting.
//! - [`policy`]: the admission rules.
//! - [`hook`]: the fanotify group, the reader, the workers and the deadline.
//! - [`lifecycle`]: the init PID and its end (pidfd, or /proc polling).

#![warn(missing_docs)]

pub mod binaries;
pub mod bundle;
pub mod caller;
pub mod exec_args;
pub mod hook;
pub mod identity;
pub mod invocation;
pub mod lifecycle;
pub mod policy;

pub use exec_args::{ArgvCapture, CapturedArgv};
pub use hook::{Hook, HookConfig, HookError, HookStats, DEFAULT_DEADLINE};
pub use policy::{OnUnverifiable, Policy, PolicyError, PolicyMode};
