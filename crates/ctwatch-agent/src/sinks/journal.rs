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
//! refusals, and the recovery is logged too.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use ctwatch::ContainerEvent;
use ctwatch_journal::Journal;
use tracing::{info, warn};

/// Appends events to the journal and stamps their seq.
pub struct JournalStage {
    journal: Arc<Journal>,
    /// Refusals since the last accepted append (logged once, at the first).
    refusing: u64,
}

impl JournalStage {
    /// A stage appending to `journal`.
    pub fn new(journal: Arc<Journal>) -> Self {
        JournalStage { journal, refusing: 0 }
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Appends each event (its JSON, with its seq in it) and sets its `seq`;
    /// an event the journal refuses keeps `seq` 0 and goes on.
    pub fn stamp(&mut self, events: &mut [ContainerEvent]) {
        for event in events {
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
                        warn!("the journal refused an event; events go on live without seq: {e}");
                    }
                    self.refusing += 1;
                }
            }
        }
    }
}
