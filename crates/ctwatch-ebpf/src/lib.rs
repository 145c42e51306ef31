//! ctwatch's eBPF source: programs on the `cgroup_mkdir`/`cgroup_rmdir`
//! tracepoints (C, compiled with clang, committed as objects and rebuilt by
//! `scripts/build-ebpf.sh`), their loader (aya), and the pinned map of
//! container cgroups that other eBPF programs can read.
//!
//! - [`source`]: the kernel source the tracker reads, with loss repair.
//! - [`pinned_map`]: the map pinned at `/sys/fs/bpf/ctwatch/ctwatch_containers`.
//! - [`abi`]: the record and map layouts shared with the C programs.
//! - [`loader`]: what the kernel must allow, and why it refused.
//! - [`exec_argv`]: a hooked runtime's exec argv, captured without faulting.
//! - [`process`]: exec, exit and OOM kill events of container processes.

#![warn(missing_docs)]

pub mod abi;
pub mod exec_argv;
pub mod loader;
pub mod pinned_map;
pub mod process;
pub mod source;

pub use abi::{CapturedExec, ProcessEvent};
pub use exec_argv::ExecArgvCapture;
pub use loader::{preflight, EbpfUnavailable};
pub use pinned_map::ContainersMap;
pub use process::{ProcessEventSource, ProcessEventsConfig};
pub use source::{EbpfConfig, EbpfSource, EbpfStats, DEFAULT_RING_BUFFER_BYTES};
