//! The runtime hook as a source: what it sees (precreates, init start/exit)
//! goes into the inbox as [`SourceMessage::Hook`].

use crossbeam_channel::Sender;
use ctwatch::sources::SourceMessage;
use ctwatch_hook::{Hook, HookConfig};
use tracing::{info, warn};

use crate::agent::AgentError;
use crate::config::AgentConfig;

/// Starts the runtime hook when configured: a failure is an error when it is
/// required (or the only source), else a warning and no hook.
pub fn start(config: &AgentConfig, hook_only: bool, tx: Sender<SourceMessage>) -> Result<Option<Hook>, AgentError> {
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
