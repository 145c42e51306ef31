//! The kernel source: the scan at start, then cgroup mkdir/rmdir from eBPF
//! or inotify, on its own thread. When it ends while the agent runs, it says
//! so with a [`SourceMessage::Ended`] (the hook's clones of the inbox sender
//! would otherwise hide its end), and the agent falls back to inotify
//! (`--source auto`) or stops with the reason (an explicit source).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::Sender;
use ctwatch::sources::inotify::InotifySource;
use ctwatch::sources::{scan, Origin, SourceMessage};
use ctwatch_ebpf::{EbpfConfig, EbpfSource};
use tracing::info;

use crate::agent::AgentError;
use crate::config::{AgentConfig, SourceChoice, WatchedTree};

/// Test-only: ends the eBPF source this many milliseconds after it starts,
/// as if it had failed (the fallback test uses it; nothing else should).
pub const TEST_END_EBPF_AFTER_MS: &str = "CTWATCH_TEST_END_EBPF_AFTER_MS";

/// The kernel source picked for this run.
pub enum KernelSource {
    /// eBPF programs on the cgroup tracepoints.
    Ebpf(Box<EbpfSource>),
    /// inotify on cgroupfs.
    Inotify(Box<InotifySource>),
    /// A scan at start only (the hook reports the rest).
    ScanOnly,
}

impl KernelSource {
    /// Its name, as `--source` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            KernelSource::Ebpf(_) => "ebpf",
            KernelSource::Inotify(_) => "inotify",
            KernelSource::ScanOnly => "hook",
        }
    }
}

/// Picks and loads the kernel source `config` asks for. `mirror` is the
/// unified hierarchy's ID on a hybrid host (for the pinned map).
pub fn choose(config: &AgentConfig, mirror: Option<u32>) -> Result<KernelSource, AgentError> {
    let tree = &config.tree;
    let ebpf = EbpfConfig {
        tracked_hierarchy: tree.hierarchy.hierarchy_id,
        mirror_hierarchy: mirror,
        ring_buffer_bytes: config.ring_buffer_bytes,
    };
    let root = tree.start.display();
    match config.source {
        SourceChoice::HookOnly => {
            info!(%root, "source: the runtime hook alone (--source hook), after a scan at start");
            Ok(KernelSource::ScanOnly)
        }
        SourceChoice::Inotify => {
            info!(%root, "source: inotify (--source inotify)");
            inotify(tree)
        }
        SourceChoice::Ebpf => {
            let source = EbpfSource::load(ebpf)?;
            info!(%root, hierarchy_id = tree.hierarchy.hierarchy_id, "source: ebpf (--source ebpf)");
            Ok(KernelSource::Ebpf(Box::new(source)))
        }
        SourceChoice::Auto => match EbpfSource::load(ebpf) {
            Ok(source) => {
                info!(%root, hierarchy_id = tree.hierarchy.hierarchy_id, "source: ebpf (kernel and privileges allow it)");
                Ok(KernelSource::Ebpf(Box::new(source)))
            }
            Err(why) => {
                info!(%root, "source: inotify, because eBPF is unavailable: {why}");
                inotify(tree)
            }
        },
    }
}

fn inotify(tree: &WatchedTree) -> Result<KernelSource, AgentError> {
    Ok(KernelSource::Inotify(Box::new(InotifySource::new(&tree.hierarchy.mount_point, &tree.start)?)))
}

/// A kernel source's running thread.
pub struct Running {
    /// Its name (`ebpf`, `inotify`, `hook`).
    pub name: &'static str,
    /// Set by the agent when it stops the source (so its end is not a failure).
    asked: Arc<AtomicBool>,
    /// What the source's loop watches.
    run_stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Running {
    /// Stops the source and waits for its thread.
    pub fn stop(mut self) -> Result<(), AgentError> {
        self.asked.store(true, Ordering::Relaxed);
        self.run_stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Err(_)) => Err(AgentError::Panicked("cgroup source")),
            _ => Ok(()),
        }
    }
}

/// Starts `source` on its own thread: the scan at start (as `Existing`),
/// then live changes, into `tx`.
pub fn spawn(source: KernelSource, tree: &WatchedTree, tx: Sender<SourceMessage>) -> Result<Running, AgentError> {
    spawn_with(source, tree, tx, false)
}

/// Starts inotify after the previous source ended: what exists now is sent
/// as a resync, then live changes.
pub fn spawn_fallback(tree: &WatchedTree, tx: Sender<SourceMessage>) -> Result<Running, AgentError> {
    spawn_with(inotify(tree)?, tree, tx, true)
}

fn spawn_with(
    source: KernelSource,
    tree: &WatchedTree,
    tx: Sender<SourceMessage>,
    after_loss: bool,
) -> Result<Running, AgentError> {
    let name = source.name();
    let asked = Arc::new(AtomicBool::new(false));
    let run_stop = Arc::new(AtomicBool::new(false));
    let injected = match (&source, std::env::var(TEST_END_EBPF_AFTER_MS).ok().and_then(|v| v.parse().ok())) {
        (KernelSource::Ebpf(_), Some(ms)) => Some(test_trigger(run_stop.clone(), Duration::from_millis(ms))),
        _ => None,
    };
    let (mount_point, start): (PathBuf, PathBuf) = (tree.hierarchy.mount_point.clone(), tree.start.clone());
    let (thread_asked, thread_stop) = (asked.clone(), run_stop.clone());
    let thread = thread::Builder::new()
        .name("cgroup-source".into())
        .spawn(move || {
            let result = match source {
                KernelSource::Ebpf(s) => s.run(&mount_point, &start, tx.clone(), thread_stop),
                KernelSource::Inotify(s) if after_loss => s.run_after_loss(tx.clone(), thread_stop),
                KernelSource::Inotify(s) => s.run(tx.clone(), thread_stop),
                // The scan, then nothing: the hook (which holds its own sender) reports the rest.
                KernelSource::ScanOnly => {
                    let found = scan::scan(&mount_point, &start, Origin::Existing);
                    let _ = tx.send(SourceMessage::Events(found)).and_then(|()| tx.send(SourceMessage::ScanComplete));
                    return;
                }
            };
            if thread_asked.load(Ordering::Relaxed) {
                return;
            }
            let why = match (result, injected.as_ref().is_some_and(|i| i.load(Ordering::Relaxed))) {
                (Err(e), _) => e.to_string(),
                (Ok(()), true) => format!("ended by {TEST_END_EBPF_AFTER_MS}"),
                (Ok(()), false) => "it stopped reading".to_string(),
            };
            let _ = tx.send(SourceMessage::Ended { source: name, why });
        })
        .map_err(|source| AgentError::Io { what: "cannot start the source thread", source })?;
    Ok(Running { name, asked, run_stop, thread: Some(thread) })
}

fn test_trigger(run_stop: Arc<AtomicBool>, after: Duration) -> Arc<AtomicBool> {
    let fired = Arc::new(AtomicBool::new(false));
    let flag = fired.clone();
    let _ = thread::Builder::new().name("test-trigger".into()).spawn(move || {
        thread::sleep(after);
        flag.store(true, Ordering::Relaxed);
        run_stop.store(true, Ordering::Relaxed);
    });
    fired
}
