//! The outbox the sink publishes from: the journal, behind a small interface.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::watch;

/// One journal record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Its journal sequence number (strictly increasing, from 1).
    pub seq: u64,
    /// The event kind (`container_create`, ...): the subject's last token.
    pub kind: String,
    /// The container's ID (empty when the event has none: then the key-value
    /// bucket is left alone).
    pub container_id: String,
    /// The event as JSON: the message's payload.
    pub payload_json: Bytes,
    /// The container's data-source record (JSON) for the key-value bucket:
    /// put under `<node>.<container id>` when `Some`; when `None` the key is
    /// deleted if `kind` is `container_remove`, else left alone.
    pub record_json: Option<Bytes>,
}

/// The outbox's own failure, in its words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("outbox: {0}")]
pub struct OutboxError(pub String);

/// Where the sink reads what to publish and keeps how far NATS has acked:
/// the journal implements it. Calls may do blocking I/O (the sink makes them
/// from a blocking thread).
pub trait Outbox: Send + Sync + 'static {
    /// Up to `limit` records with `seq > after`, oldest first. A record that
    /// retention dropped is simply absent (the sink counts the gap).
    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxRecord>, OutboxError>;
    /// The last seq NATS acked, as kept durably (0 when none).
    fn acked(&self) -> u64;
    /// Keeps `seq` as the last acked one, durably (it only moves forward).
    fn set_acked(&self, seq: u64) -> Result<(), OutboxError>;
    /// This journal's identity: a new journal gets a new one, so that its
    /// seqs are never taken for an old journal's re-sends.
    fn journal_id(&self) -> String;
    /// The last seq appended, updated on every append (to wait for new records).
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// The node's live containers now, as (container ID, data-source record
    /// JSON), for the sink to reconcile the bucket with: their records are
    /// put and every other key of this node is deleted. `None` while that is
    /// not known yet (the agent's scan at start is not done: the sink asks
    /// again at each heartbeat) or when the outbox does not know it (then no
    /// reconciliation). The default is `None`.
    fn live(&self) -> Result<Option<Vec<(String, Bytes)>>, OutboxError> {
        Ok(None)
    }
}

/// An in-memory outbox for tests and benches: nothing survives the process,
/// and it holds at most `capacity` records (the oldest are dropped and counted).
pub struct MemoryOutbox {
    id: String,
    capacity: usize,
    inner: Mutex<MemoryInner>,
    last: watch::Sender<u64>,
    live: Mutex<Option<Vec<(String, Bytes)>>>,
}

struct MemoryInner {
    records: VecDeque<OutboxRecord>,
    next_seq: u64,
    acked: u64,
    dropped: u64,
}

impl MemoryOutbox {
    /// An empty outbox called `journal_id`, holding at most `capacity` records.
    pub fn new(journal_id: impl Into<String>, capacity: usize) -> MemoryOutbox {
        MemoryOutbox {
            id: journal_id.into(),
            capacity: capacity.max(1),
            inner: Mutex::new(MemoryInner { records: VecDeque::new(), next_seq: 1, acked: 0, dropped: 0 }),
            last: watch::channel(0).0,
            live: Mutex::new(None),
        }
    }

    /// Appends an event; returns its seq.
    pub fn append(&self, kind: &str, container_id: &str, payload_json: Bytes, record_json: Option<Bytes>) -> u64 {
        let seq = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let seq = inner.next_seq;
            inner.next_seq += 1;
            if inner.records.len() == self.capacity {
                inner.records.pop_front();
                inner.dropped += 1;
            }
            inner.records.push_back(OutboxRecord {
                seq,
                kind: kind.to_string(),
                container_id: container_id.to_string(),
                payload_json,
                record_json,
            });
            seq
        };
        self.last.send_replace(seq);
        seq
    }

    /// Sets what [`Outbox::live`] answers (`None`: no reconciliation).
    pub fn set_live(&self, live: Option<Vec<(String, Bytes)>>) {
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = live;
    }

    /// Records dropped because the outbox was full.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).dropped
    }
}

impl Outbox for MemoryOutbox {
    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxRecord>, OutboxError> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let first = inner.records.front().map_or(0, |r| r.seq);
        let skip = after.saturating_add(1).saturating_sub(first) as usize;
        Ok(inner.records.iter().skip(skip).take(limit).cloned().collect())
    }

    fn acked(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).acked
    }

    fn set_acked(&self, seq: u64) -> Result<(), OutboxError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.acked = inner.acked.max(seq);
        Ok(())
    }

    fn journal_id(&self) -> String {
        self.id.clone()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }

    fn live(&self) -> Result<Option<Vec<(String, Bytes)>>, OutboxError> {
        Ok(self.live.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_after_a_seq_and_drops_the_oldest_when_full() {
        let o = MemoryOutbox::new("j", 3);
        for i in 0..5 {
            o.append("container_create", &format!("c{i}"), Bytes::from_static(b"{}"), None);
        }
        assert_eq!(o.dropped(), 2);
        let seqs = |after, limit| o.read_after(after, limit).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(0, 10), [3, 4, 5]);
        assert_eq!(seqs(3, 10), [4, 5]);
        assert_eq!(seqs(4, 1), [5]);
        assert!(seqs(5, 10).is_empty());
        assert_eq!(*o.subscribe().borrow(), 5);
        o.set_acked(4).unwrap();
        o.set_acked(2).unwrap();
        assert_eq!(o.acked(), 4);
    }
}
