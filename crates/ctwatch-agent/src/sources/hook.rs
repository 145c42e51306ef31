//! The runtime hook as a source: what it sees (precreates, init start/exit)
//! goes into the inbox as [`SourceMessage::Hook`].

use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::Sender;
use ctwatch::sources::SourceMessage;
use ctwatch_ebpf::ExecArgvCapture;
use ctwatch_hook::{ArgvCapture, CapturedArgv, Hook, HookConfig};
use tracing::{info, warn};

use crate::agent::AgentError;
use crate::config::AgentConfig;

/// Starts the runtime hook when configured: a failure is an error when it is
/// required (or the only source), else a warning and no hook. With the eBPF
/// source loaded (`ebpf_loaded`), the hook reads runtime argvs from the eBPF capture.
pub fn start(
    config: &AgentConfig,
    hook_only: bool,
    ebpf_loaded: bool,
    tx: Sender<SourceMessage>,
) -> Result<Option<Hook>, AgentError> {
    let hook_config = match config.hook.clone() {
        Some(hook_config) => hook_config,
        // The hook as the only source needs no more than its defaults.
        None if hook_only => HookConfig::default(),
        None => return Ok(None),
    };
    let hook_config = HookConfig {
        // Always: the init's cgroup is what the hook's findings are joined on.
        hierarchy: Some(config.tree.hierarchy.clone()),
        follow_exits: hook_only,
        proc_root: config.proc_root.clone(),
        argv_capture: if ebpf_loaded { argv_capture(&hook_config) } else { None },
        ..hook_config
    };
    match Hook::start(hook_config, tx) {
        Ok(hook) => {
            let names: Vec<String> = hook.marked().iter().map(|b| b.path.display().to_string()).collect();
            info!(binaries = %names.join(", "), "runtime hook on");
            Ok(Some(hook))
        }
        Err(e) if config.hook_required || hook_only => Err(AgentError::Hook(e)),
        Err(e) => {
            warn!("runtime hook off: {e} (pass --hook off to silence this)");
            Ok(None)
        }
    }
}

/// The eBPF capture of the hooked runtimes' argvs (read without faulting, so
/// a user's FUSE page cannot hold the hook), or `None`: the hook then reads
/// them from /proc.
fn argv_capture(hook: &HookConfig) -> Option<ArgvCapture> {
    let mut paths = ctwatch_hook::binaries::candidate_paths(&hook.runtime_paths, hook.replace_default_paths);
    // runc starts `runc init` by exec'ing itself through this path.
    paths.push(PathBuf::from("/proc/self/exe"));
    match ExecArgvCapture::load(&paths) {
        Ok(capture) => {
            info!(paths = capture.watched().len(), "runtime argvs captured by eBPF");
            let capture = Arc::new(capture);
            Some(ArgvCapture::new(move |tid| {
                capture.get(tid).map(|c| CapturedArgv {
                    argv_address: c.argv_address,
                    args: c.args,
                    // Unverifiable only when a user serves the page (FUSE, userfaultfd):
                    // a page the kernel fills is read from /proc instead.
                    unreadable: c.unreadable && c.user_backed,
                    incomplete: c.incomplete || (c.unreadable && !c.user_backed),
                })
            }))
        }
        Err(e) => {
            warn!("runtime argvs are read from /proc: the eBPF argv capture cannot load: {e}");
            None
        }
    }
}
