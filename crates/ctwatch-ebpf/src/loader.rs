//! Loading the eBPF programs: what the kernel must allow, and a clear reason
//! when it does not.

use std::fs;
use std::path::Path;

use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use thiserror::Error;

/// The compiled cgroup event programs (rebuilt by `scripts/build-ebpf.sh`).
pub static CGROUP_EVENTS_OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/cgroup_events.bpf.o");
/// The compiled pinned-map object.
pub static CONTAINERS_MAP_OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/containers_map.bpf.o");
/// The compiled exec argv capture (on the execve/execveat syscalls' entry).
pub static EXEC_ARGV_OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/exec_argv.bpf.o");
/// The compiled process events of container cgroups (exec, exit, OOM kill).
pub static PROCESS_EVENTS_OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/process_events.bpf.o");

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const LOCKDOWN_PATH: &str = "/sys/kernel/security/lockdown";
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Why the eBPF source cannot run here.
#[derive(Debug, Error)]
pub enum EbpfUnavailable {
    /// The kernel has no BTF, which the programs need to find kernel fields.
    #[error("no BTF at {BTF_PATH}: the kernel was built without CONFIG_DEBUG_INFO_BTF; use --source inotify")]
    NoBtf,
    /// Missing capabilities.
    #[error("missing capabilities: eBPF needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); run as root or grant them")]
    NoCapability,
    /// Kernel lockdown forbids reading kernel memory from eBPF.
    #[error("kernel lockdown ({0}) forbids eBPF tracing; use --source inotify")]
    Lockdown(String),
    /// The kernel refused to load or attach the programs.
    #[error("the kernel refused the eBPF programs: {0}")]
    Refused(String),
}

/// Checks what the kernel and our privileges allow, before trying to load.
pub fn preflight() -> Result<(), EbpfUnavailable> {
    if !Path::new(BTF_PATH).exists() {
        return Err(EbpfUnavailable::NoBtf);
    }
    let effective = effective_capabilities().unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        return Err(EbpfUnavailable::NoCapability);
    }
    if let Ok(lockdown) = fs::read_to_string(LOCKDOWN_PATH) {
        if lockdown.contains("[confidentiality]") {
            return Err(EbpfUnavailable::Lockdown("confidentiality".into()));
        }
    }
    Ok(())
}

/// This process's effective capability set, from `/proc/self/status`.
fn effective_capabilities() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// One error line from an aya error and its causes.
pub(crate) fn refused(context: &str, e: &dyn std::error::Error) -> EbpfUnavailable {
    let mut text = format!("{context}: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        // The verifier log is long: keep its last meaningful line.
        let line = s_text.lines().rev().find(|l| !l.trim().is_empty() && !l.contains("processed")).unwrap_or("");
        text.push_str(": ");
        text.push_str(line.trim());
        source = s.source();
    }
    EbpfUnavailable::Refused(text)
}

/// The running kernel's BTF.
pub(crate) fn kernel_btf() -> Result<Btf, EbpfUnavailable> {
    Btf::from_sys_fs().map_err(|e| refused("cannot read kernel BTF", &e))
}

/// Loads `object` with `loader` (already given `btf`) and attaches its BTF tracepoint programs.
pub(crate) fn load_and_attach(
    loader: &mut EbpfLoader<'_>,
    btf: &Btf,
    object: &[u8],
    programs: &[(&str, &str)],
) -> Result<Ebpf, EbpfUnavailable> {
    let mut ebpf = loader.load(object).map_err(|e| refused("load", &e))?;
    for (program, tracepoint) in programs {
        let prog: &mut BtfTracePoint = ebpf
            .program_mut(program)
            .ok_or_else(|| EbpfUnavailable::Refused(format!("program {program} missing from the object")))?
            .try_into()
            .map_err(|e| refused(program, &e))?;
        prog.load(tracepoint, btf).map_err(|e| refused(&format!("verify {program}"), &e))?;
        prog.attach().map_err(|e| refused(&format!("attach {program}"), &e))?;
    }
    Ok(ebpf)
}

/// Where tracefs is mounted when it is not yet (the tracepoints' IDs are read from it).
const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs at [`TRACEFS`] when neither it nor debugfs's copy is mounted.
fn ensure_tracefs() -> Result<(), EbpfUnavailable> {
    let mounted = |p: &str| fs::read_dir(p).is_ok_and(|mut d| d.next().is_some());
    if mounted(TRACEFS) || mounted("/sys/kernel/debug/tracing") {
        return Ok(());
    }
    nix::mount::mount(Some("nodev"), TRACEFS, Some("tracefs"), nix::mount::MsFlags::empty(), None::<&str>).map_err(
        |e| EbpfUnavailable::Refused(format!("tracefs is not mounted and mounting it at {TRACEFS} failed: {e}")),
    )
}

/// Loads `object` with `loader` and attaches its tracepoint programs, each
/// `(program, category, tracepoint)`; mounts tracefs first if needed.
pub(crate) fn load_and_attach_tracepoints(
    loader: &mut EbpfLoader<'_>,
    object: &[u8],
    programs: &[(&str, &str, &str)],
) -> Result<Ebpf, EbpfUnavailable> {
    ensure_tracefs()?;
    let mut ebpf = loader.load(object).map_err(|e| refused("load", &e))?;
    for (program, category, name) in programs {
        let prog: &mut TracePoint = ebpf
            .program_mut(program)
            .ok_or_else(|| EbpfUnavailable::Refused(format!("program {program} missing from the object")))?
            .try_into()
            .map_err(|e| refused(program, &e))?;
        prog.load().map_err(|e| refused(&format!("verify {program}"), &e))?;
        prog.attach(category, name).map_err(|e| refused(&format!("attach {program} to {category}/{name}"), &e))?;
    }
    Ok(ebpf)
}
