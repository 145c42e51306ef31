//! ctwatch: knows every container on a Linux host from the moment its cgroup
//! is created until it is gone.
//!
//! The pipeline, one module per stage:
//!
//! ```text
//! sources (scan, inotify) ──CgroupEvent──▶ tracker ──ContainerEvent──▶ outputs
//!                                             │
//!                                             ▼
//!                                     store (by ID, prefix, cgroup ID)
//! ```
//!
//! - [`cgroupfs`]: which hierarchies exist and which one is watched.
//! - [`sources`]: the kernel sources that report cgroup mkdir/rmdir.
//! - [`classify`]: which cgroup paths are containers, and of which runtime.
//! - [`state_dirs`]: the runtimes' state directories, a second opinion.
//! - [`tracker`]: cgroup changes in, container events out, store kept.
//! - [`store`]: the containers data source's core.
//! - [`event`]: the derived events and their JSON form.
//! - [`hook`]: what the runtime hook learns before a container starts.
//! - [`clock`]: the injected clock (grace periods and deadlines are tested without sleeping).
//! - [`proc`]: which cgroup and namespaces a process is in, a container's init.
//! - [`untrusted`]: runtime files read capped, names checked, strings cleaned.
//! - [`resolve`]: paths inside a container resolved without leaving its root.

#![warn(missing_docs)]

pub mod cgroupfs;
pub mod classify;
pub mod clock;
pub mod container;
pub mod event;
pub mod hook;
pub mod proc;
pub mod resolve;
pub mod runtime;
pub mod sources;
pub mod state_dirs;
pub mod store;
pub mod tracker;
pub mod untrusted;

pub use clock::{Clock, ManualClock, SystemClock};
pub use container::{Container, ContainerState, PodInfo};
pub use ctwatch_security::SecurityProfile;
pub use event::{ContainerEvent, EventKind};
pub use runtime::Runtime;
pub use store::{LookupError, Store};
pub use tracker::{CgroupObserver, MembershipChange};
pub use tracker::{SharedStore, Tracker};
