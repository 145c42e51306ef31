//! The NATS sink: every journaled event into NATS JetStream, and the live
//! containers into its key-value bucket (see `ctwatch_nats`).
//!
//! The journal is the sink's outbox ([`JournalOutbox`]): the sink reads the
//! journal after its durable cursor `nats` (the last seq NATS acked), so it
//! never sits on the event path. It runs on a thread of its own with its own
//! tokio runtime ([`NatsStage`]): when NATS is down or slow, the pipeline,
//! the journal and the API go on, the backlog grows in the journal (bounded
//! by the journal's retention; what retention drops before it is sent is
//! counted as a gap), and it is sent in order when NATS is back. Re-sends
//! after a restart carry the same `Nats-Msg-Id` (`<node>.<journal id>.<seq>`),
//! so the server drops those it already has.
//!
//! The bucket gets each container's data-source record (what `ctwatch get`
//! shows, from the store when the event is read) on every event but a remove,
//! which deletes the key. Once the scan at start is done, the sink
//! reconciles the bucket with the live containers (keys of containers gone
//! while no agent published are deleted).

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use ctwatch::EventKind;
use ctwatch_journal::{Journal, JournalError};
use ctwatch_nats::{NatsSink, Outbox, OutboxError, OutboxRecord, SinkConfig, SinkStats};
use tokio::sync::watch;

use crate::agent::AgentError;
use crate::datasource::DataSource;

/// The journal cursor that holds the last seq NATS acked.
pub const CURSOR: &str = "nats";

/// The journal as the NATS sink's outbox, with the data source for the records.
pub struct JournalOutbox {
    journal: Arc<Journal>,
    data_source: DataSource,
}

impl JournalOutbox {
    /// An outbox over `journal`; records come from `data_source`'s store.
    pub fn new(journal: Arc<Journal>, data_source: DataSource) -> Self {
        JournalOutbox { journal, data_source }
    }

    /// The record of a live container as JSON (what `ctwatch get` shows).
    fn record_json(&self, id: &str) -> Option<Bytes> {
        let record = self.data_source.live_record(id)?;
        serde_json::to_vec(&record).ok().map(Bytes::from)
    }
}

fn outbox_error(e: JournalError) -> OutboxError {
    OutboxError(e.to_string())
}

impl Outbox for JournalOutbox {
    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxRecord>, OutboxError> {
        let records = match self.journal.read_from(after, limit) {
            Ok(r) => r,
            // Retention dropped what follows `after`: go on from the oldest kept (the sink counts the gap).
            Err(JournalError::Expired { oldest_seq, .. }) => {
                self.journal.read_from(oldest_seq.saturating_sub(1), limit).map_err(outbox_error)?
            }
            Err(e) => return Err(outbox_error(e)),
        };
        Ok(records
            .into_iter()
            .map(|r| {
                let record_json = if r.container_id.is_empty() || r.kind == EventKind::ContainerRemove.as_str() {
                    None
                } else {
                    self.record_json(&r.container_id)
                };
                OutboxRecord {
                    seq: r.seq,
                    kind: r.kind,
                    container_id: r.container_id,
                    payload_json: Bytes::from(r.payload),
                    record_json,
                }
            })
            .collect())
    }

    fn acked(&self) -> u64 {
        self.journal.cursor(CURSOR).unwrap_or(0)
    }

    fn set_acked(&self, seq: u64) -> Result<(), OutboxError> {
        self.journal.set_cursor(CURSOR, seq).map_err(outbox_error)
    }

    fn journal_id(&self) -> String {
        self.journal.journal_id().to_string()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.journal.subscribe()
    }

    fn live(&self) -> Result<Option<Vec<(String, Bytes)>>, OutboxError> {
        if !self.data_source.wait_scanned(Duration::ZERO) {
            return Ok(None);
        }
        let ids: Vec<String> = self.data_source.store().read().live().map(|c| c.id.clone()).collect();
        Ok(Some(ids.into_iter().filter_map(|id| self.record_json(&id).map(|json| (id, json))).collect()))
    }
}

/// The NATS sink running on its own thread and tokio runtime; stopped (its
/// acked cursor written to the journal) when dropped or [`NatsStage::stop`]ped.
pub struct NatsStage {
    stats: Arc<SinkStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl NatsStage {
    /// Starts publishing `journal` as `config` says. Fails on a node name
    /// that cannot be used or when the thread cannot start; NATS being down
    /// is not an error (the sink keeps trying, with backoff).
    pub fn start(config: SinkConfig, journal: Arc<Journal>, data_source: DataSource) -> Result<NatsStage, AgentError> {
        let io = |what| move |source| AgentError::Io { what, source };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("cannot start the NATS sink's runtime"))?;
        let outbox = Arc::new(JournalOutbox::new(journal, data_source));
        let sink = runtime
            .block_on(async move { NatsSink::spawn(config, outbox) })
            .map_err(|e| AgentError::Config(format!("NATS sink: {e}")))?;
        let stats = sink.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("nats".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let _ = stopped.await;
                    sink.shutdown().await;
                });
            })
            .map_err(io("cannot start the NATS sink's thread"))?;
        Ok(NatsStage { stats, stop: Some(stop), thread: Some(thread) })
    }

    /// The sink's counters and gauges.
    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    /// Stops the sink and waits for it (it writes its acked cursor first).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for NatsStage {
    fn drop(&mut self) {
        self.stop();
    }
}
