//! The eBPF process events (`ctwatch_ebpf::ProcessEventSource`): each
//! container's first exec, the exits of processes in container cgroups and
//! OOM kills, on their own thread, into the inbox as
//! [`SourceMessage::Process`] batches.
//!
//! Loaded only with the eBPF kernel source and the pinned map of container
//! cgroups (the programs read it; with `--no-pin` there are none, said once
//! at info level). When they cannot load, the agent says so once, counts it (`ctwatch_process_events_unavailable_total`) and keeps the
//! `/proc`, hook and runtime paths of the lifecycle.
//!
//! Overflow policy: like the kernel source, a full inbox blocks this thread;
//! the kernel's ring buffer then fills and what it drops is counted
//! (`ctwatch_queue_overflows_total{queue="process_events"}`). A lost start
//! is made up by the `/proc` path; a lost exit leaves the runtime's word.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::Sender;
use ctwatch::sources::{ProcessMessage, SourceMessage};
use ctwatch_ebpf::process::{exit_signal, exit_status};
use ctwatch_ebpf::{ProcessEvent, ProcessEventSource, ProcessEventsConfig};
use tracing::{info, warn};

use crate::agent::AgentError;
use crate::metrics::Metrics;

/// How long one poll of the ring buffer waits (and so how soon a stop is seen).
const POLL: Duration = Duration::from_millis(200);

/// Loads the process events with the map pinned under `pin_dir`; `None`
/// (logged once, counted) when they cannot load.
pub fn load(pin_dir: &Path, metrics: &Metrics) -> Option<ProcessEventSource> {
    let config = ProcessEventsConfig { pin_dir: pin_dir.to_path_buf(), ..ProcessEventsConfig::default() };
    match ProcessEventSource::load(&config) {
        Ok(source) => {
            info!("eBPF process events loaded: container_start and exits from the kernel");
            Some(source)
        }
        Err(e) => {
            unavailable(metrics, &e.to_string());
            None
        }
    }
}

/// Says once why there are no process events, and counts it.
pub fn unavailable(metrics: &Metrics, why: &str) {
    warn!("no eBPF process events (starts and exits come from /proc, the hook and the runtimes): {why}");
    metrics.process_events_unavailable();
}

/// The process events' running thread.
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Running {
    /// Stops the thread and waits for it.
    pub fn stop(mut self) -> Result<(), AgentError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Err(_)) => Err(AgentError::Panicked("process events")),
            _ => Ok(()),
        }
    }
}

/// Starts reading `source` on its own thread, into `tx`.
pub fn spawn(
    mut source: ProcessEventSource,
    tx: Sender<SourceMessage>,
    metrics: Arc<Metrics>,
) -> Result<Running, AgentError> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = thread::Builder::new()
        .name("process-events".into())
        .spawn(move || {
            let mut dropped = 0;
            while !thread_stop.load(Ordering::Relaxed) {
                let events = match source.poll(POLL) {
                    Ok(events) => events,
                    Err(e) => {
                        warn!("the eBPF process events stopped: {e}");
                        return;
                    }
                };
                let now = source.dropped();
                if now > dropped {
                    metrics.queue_overflow("process_events", now - dropped);
                    dropped = now;
                }
                let batch: Vec<ProcessMessage> = events.into_iter().filter_map(|e| message(&source, e)).collect();
                if !batch.is_empty() && tx.send(SourceMessage::Process(batch)).is_err() {
                    return; // the agent stopped
                }
            }
        })
        .map_err(|source| AgentError::Io { what: "cannot start the process events' thread", source })?;
    Ok(Running { stop, thread: Some(thread) })
}

/// A kernel record as the agent's message (kernel times as wall times).
fn message(source: &ProcessEventSource, event: ProcessEvent) -> Option<ProcessMessage> {
    Some(match event {
        ProcessEvent::Exec { cgroup_id, tgid, ktime_ns, filename, argv0, .. } => {
            ProcessMessage::Exec { cgroup_id, pid: tgid, time: source.wall_time(ktime_ns), exe: filename, argv0 }
        }
        ProcessEvent::Exit { cgroup_id, pid, ktime_ns, exit_code } => ProcessMessage::Exit {
            cgroup_id,
            pid,
            time: source.wall_time(ktime_ns),
            exit_code: exit_status(exit_code).map(i32::from),
            exit_signal: exit_signal(exit_code).map(i32::from),
        },
        ProcessEvent::OomKill { cgroup_id, tgid, ktime_ns, .. } => {
            ProcessMessage::OomKill { cgroup_id, pid: tgid, time: source.wall_time(ktime_ns) }
        }
        _ => return None,
    })
}
