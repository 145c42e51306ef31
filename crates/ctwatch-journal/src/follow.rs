//! Following the journal: replay from a seq, then the live tail, with no gap and no repeat.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{Journal, JournalError, Record};

/// What a [`Follower`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Followed {
    /// The next records, in seq order (never empty).
    Records(Vec<Record>),
    /// Retention dropped the records after `after_seq`: the follower goes on from `oldest_seq`
    /// (tell the consumer, e.g. with a distinct status, that it missed some).
    Gap {
        /// Where the follower was.
        after_seq: u64,
        /// Where it goes on from.
        oldest_seq: u64,
    },
}

/// Reads a journal from a position on, then waits for and reads what is appended: replay and
/// live tail from the same log, so there is no seam to lose or repeat a record at. Made by
/// [`Journal::follow`].
#[derive(Debug)]
pub struct Follower {
    journal: Arc<Journal>,
    after: u64,
    rx: tokio::sync::watch::Receiver<u64>,
}

impl Follower {
    pub(crate) fn new(journal: Arc<Journal>, after_seq: u64) -> Self {
        let rx = journal.subscribe();
        Follower { journal, after: after_seq, rx }
    }

    /// The seq of the last record returned (or the starting position).
    pub fn position(&self) -> u64 {
        self.after
    }

    fn read(&mut self, limit: usize) -> Result<Option<Followed>, JournalError> {
        match self.journal.read_from(self.after, limit.max(1)) {
            Ok(records) => Ok(records.last().map(|r| r.seq).map(|last| {
                self.after = last;
                Followed::Records(records)
            })),
            Err(JournalError::Expired { after_seq, oldest_seq }) => {
                self.after = oldest_seq.saturating_sub(1);
                Ok(Some(Followed::Gap { after_seq, oldest_seq }))
            }
            Err(e) => Err(e),
        }
    }

    /// The next records (up to `limit`) or gap, waiting as long as it takes for one.
    /// [`JournalError::Closed`] once the journal is closed and everything was read. Reads the
    /// segment files in the calling task (from the page cache, normally microseconds); wrap in
    /// `spawn_blocking` where that matters.
    pub async fn next(&mut self, limit: usize) -> Result<Followed, JournalError> {
        loop {
            if let Some(f) = self.read(limit)? {
                return Ok(f);
            }
            if self.journal.is_closed() {
                return Err(JournalError::Closed);
            }
            let after = self.after;
            let journal = &self.journal;
            // Wakes when a newer record is readable, or when the journal closes.
            if self.rx.wait_for(|&newest| newest > after || journal.is_closed()).await.is_err() {
                return Err(JournalError::Closed);
            }
        }
    }

    /// Like [`Follower::next`] for threads: `Ok(None)` if nothing came within `timeout`.
    pub fn next_blocking(&mut self, limit: usize, timeout: Duration) -> Result<Option<Followed>, JournalError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.read(limit)? {
                return Ok(Some(f));
            }
            if self.journal.is_closed() {
                return Err(JournalError::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.journal.wait_beyond(self.after, left);
        }
    }
}

impl Journal {
    /// A [`Follower`] that returns every record after `after_seq` (0: from the oldest kept), then
    /// every record appended later, each once, in seq order.
    pub fn follow(self: &Arc<Self>, after_seq: u64) -> Follower {
        Follower::new(Arc::clone(self), after_seq)
    }
}
