//! The journal, at the head of the sinks: every event is appended to the
//! journal and given its `seq` before any other sink (hub, NATS) sees it, so
//! what a Watch client gets live carries the same seq it would get replayed.
//!
//! It cannot be an ordinary [`super::Sink`] (those only read what goes out):
//! the loop calls [`JournalStage::stamp`] on each batch of events first.
//!
//! Overflow and errors: appending only encodes into the journal's bounded
//! batch (its writer thread does the I/O and the fsyncs), so the event path
//! never waits on the disk. When the journal refuses an event (its writer is
//! failing, its backlog is full, or the event is too large) the event goes
//! on live with `seq` 0; the refusal is counted
//! (`ctwatch_journal_append_errors_total`) and logged once per run of
//! refusals (when the writer is failing, its own error line says why, so the
//! refusal is only a debug line), and the recovery is logged too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ctwatch::{Container, ContainerEvent, EventKind, Runtime, SharedStore};
use ctwatch_journal::{Journal, JournalError};
use tracing::{debug, info, warn};

/// Records read at a time when the journal's last state is rebuilt.
const READ_BATCH: usize = 4096;

/// Appends events to the journal and stamps their seq.
///
/// Restart reconciliation: at start it reads the journal's last state (every
/// container whose last event is not a `container_remove`). During the scan
/// at start, an `existing_container` for one of those is not journaled (the
/// journal said it before, so a resuming client does not get it twice); it
/// still goes to the hub with `seq` 0, so a new Watch's current state, List
/// and Get show the container. One for any other container is journaled as
/// usual. When the scan is complete, each container the journal last saw
/// alive that the scan did not find gets a `container_remove` with
/// `"late": true` (timed at the restart: the real time is unknown).
pub struct JournalStage {
    journal: Arc<Journal>,
    /// Refusals since the last accepted append (logged once, at the first).
    refusing: u64,
    /// Until the scan at start is complete: the containers the journal last
    /// saw alive, by ID, with the runtime and cgroup ID it said.
    alive: Option<HashMap<String, (Runtime, u64)>>,
    /// Of those, the ones whose `existing_container` has not come yet.
    repeated: HashSet<String>,
    /// What the scan found (the tracker's store).
    store: SharedStore,
}

/// The containers whose last journaled event is not a removal.
fn last_state(journal: &Journal) -> Result<HashMap<String, (Runtime, u64)>, JournalError> {
    let mut alive: HashMap<String, (Runtime, u64)> = HashMap::new();
    let mut after = 0;
    loop {
        let records = match journal.read_from(after, READ_BATCH) {
            Ok(r) => r,
            Err(JournalError::Expired { oldest_seq, .. }) => {
                after = oldest_seq.saturating_sub(1);
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(last) = records.last() else { break };
        after = last.seq;
        for r in records {
            if r.container_id.is_empty() {
                continue;
            }
            if r.kind == EventKind::ContainerRemove.as_str() {
                alive.remove(&r.container_id);
            } else if r.kind != EventKind::ContainerPrecreate.as_str() && !alive.contains_key(&r.container_id) {
                let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap_or_default();
                let runtime = v["args"]["runtime"].as_str().and_then(Runtime::from_name).unwrap_or(Runtime::Unknown);
                let cgroup_id = v["cgroup_id"].as_u64().unwrap_or_default();
                alive.insert(r.container_id, (runtime, cgroup_id));
            }
        }
    }
    Ok(alive)
}

impl JournalStage {
    /// A stage appending to `journal`, which reads the journal's last state
    /// for the restart's reconciliation.
    /// `store` is the tracker's (what the scan at start found).
    pub fn new(journal: Arc<Journal>, store: SharedStore) -> Self {
        let alive = match last_state(&journal) {
            Ok(alive) => Some(alive),
            Err(e) => {
                warn!("cannot read the journal's last state; no reconciliation at start: {e}");
                None
            }
        };
        let repeated = alive.iter().flat_map(|a| a.keys().cloned()).collect();
        JournalStage { journal, refusing: 0, alive, repeated, store }
    }

    /// Whether `event` is the scan's `existing_container` for a container the
    /// journal already shows alive (see the type's doc): not journaled again.
    fn repeated(&mut self, event: &ContainerEvent) -> bool {
        // Only the scan makes `existing_container`.
        event.kind == EventKind::ExistingContainer && self.repeated.remove(&event.container.id)
    }

    /// The scan at start is complete: a late `container_remove` (stamped)
    /// for each container the journal last saw alive that the scan did not
    /// find. Only the first call returns any.
    pub fn scan_complete(&mut self) -> Vec<ContainerEvent> {
        let Some(alive) = self.alive.take() else { return Vec::new() };
        let found: HashSet<String> = self.store.read().live().map(|c| c.id.clone()).collect();
        let now = SystemTime::now();
        let mut late: Vec<ContainerEvent> = alive
            .into_iter()
            .filter(|(id, _)| !found.contains(id))
            .map(|(id, (runtime, cgroup_id))| {
                let mut container = Container::new(id, runtime);
                container.cgroup_id = cgroup_id;
                ContainerEvent {
                    time: now,
                    kind: EventKind::ContainerRemove,
                    cgroup_id,
                    container: Arc::new(container),
                    kernel_time: None,
                    enriched: None,
                    seq: 0,
                    late: true,
                }
            })
            .collect();
        if !late.is_empty() {
            info!(containers = late.len(), "removed while the agent was down: late container_remove events");
        }
        for e in &late {
            self.repeated.remove(&e.container.id);
        }
        self.stamp(&mut late);
        late
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Appends each event (its JSON, with its seq in it) and sets its `seq`;
    /// an event the journal refuses keeps `seq` 0 and goes on.
    pub fn stamp(&mut self, events: &mut [ContainerEvent]) {
        for event in events {
            if self.repeated(event) {
                event.seq = 0;
                continue;
            }
            let time_ns = event
                .time
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
                .unwrap_or_default();
            let container = event.container.clone();
            let kind = event.kind.as_str();
            let appended = self.journal.append_with(time_ns, &container.id, kind, |seq, buf| {
                event.seq = seq;
                // Serializing to a Vec cannot fail (no I/O, string keys).
                let _ = serde_json::to_writer(&mut *buf, &*event);
            });
            match appended {
                Ok(seq) => {
                    event.seq = seq;
                    if self.refusing > 0 {
                        info!(refused = self.refusing, "the journal accepts events again");
                        self.refusing = 0;
                    }
                }
                Err(e) => {
                    event.seq = 0;
                    if self.refusing == 0 {
                        if matches!(e, JournalError::Unavailable { .. }) {
                            // The journal's writer has said what is wrong, in one line.
                            debug!("the journal refused an event; events go on live without seq: {e}");
                        } else {
                            warn!("the journal refused an event; events go on live without seq: {e}");
                        }
                    }
                    self.refusing += 1;
                }
            }
        }
    }
}
