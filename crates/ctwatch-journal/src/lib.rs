//! ctwatch's durable event journal.
//!
//! Every event `ctwatch serve` emits is appended here first and gets a `seq`: a number that only
//! grows for the life of the journal, across restarts and crashes. Readers replay from any seq
//! and then follow the tail ([`Journal::read_from`] with [`Journal::subscribe`] or
//! [`Journal::wait_beyond`]), so a Watch client that resumes from its last seq sees no gap and no
//! repeat; `history` finds every event of one container ([`Journal::history`]); the NATS sink
//! keeps its last acknowledged seq as a durable cursor ([`Journal::set_cursor`]) and uses
//! [`Journal::journal_id`] in its `Nats-Msg-Id`.
//!
//! # Following the journal
//!
//! Replay and live tail are one loop over the same log ([`Journal::follow`]), so the seam has
//! no gap and no repeat:
//!
//! ```no_run
//! use std::sync::Arc;
//! use ctwatch_journal::{Followed, Journal, JournalError, Record};
//!
//! async fn watch(j: Arc<Journal>, after_seq: u64, mut send: impl FnMut(Record)) -> Result<(), JournalError> {
//!     let mut follower = j.follow(after_seq);
//!     loop {
//!         match follower.next(512).await? {
//!             Followed::Records(records) => records.into_iter().for_each(&mut send),
//!             // Tell the client what was lost (a distinct status); the follower goes on from
//!             // the oldest record kept.
//!             Followed::Gap { after_seq, oldest_seq } => eprintln!("missed {after_seq}..{oldest_seq}"),
//!             _ => {}
//!         }
//!     }
//! }
//! ```
//!
//! The same with [`Journal::read_from`] and [`Journal::subscribe`] (or [`Journal::wait_beyond`])
//! for callers that manage their own position.
//!
//! # Why a segment log
//!
//! The journal is a directory of append-only *segment files* (`seg-<first seq>.log`), each record
//! framed by its length and a CRC32C of length and body, plus a small `meta.json` (journal ID,
//! seq lease, retention floor, cursors) that is only ever replaced atomically. This was chosen
//! over redb and SQLite because the workload is exactly a log: appends at the tail, reads in seq
//! order, whole-prefix deletion for retention. A segment log does each of those with one
//! sequential `write`, one `pread` and one `unlink`; it has no B-tree pages to rewrite, no
//! write-ahead log to checkpoint, no compaction and no space to reclaim after deleting (a
//! deleted segment is returned to the file system at once, which is what makes retention by
//! bytes exact and what lets a full disk recover). Crash recovery is simple and checkable: read
//! each segment, stop at the first record whose length or checksum is wrong (or whose seq does
//! not grow), truncate there. Nothing is needed beyond `crc32c`.
//!
//! # Durability
//!
//! [`Journal::append`] only encodes the record into an in-memory batch and returns its seq; a
//! writer thread writes each batch with one `write` (group commit: whatever accumulated while the
//! previous write ran) and calls `fdatasync` at most every [`Options::sync_interval`]
//! (default 100 ms), and on [`Journal::flush`] and close. So:
//!
//! - if the *process* dies (SIGKILL, panic elsewhere), what was lost is only what the writer had
//!   not yet `write`n: normally the last few microseconds of appends (up to
//!   [`Options::write_delay`] if that is set);
//! - if the *machine* dies, at most the last `sync_interval` of appends (plus anything the writer
//!   could not write, e.g. while the disk was full) is lost.
//!
//! Either way the journal reopens at its last good record, and a seq that was ever handed out is
//! never handed out again: seqs are leased in blocks recorded durably in `meta.json` before they
//! are used, and a journal reopened after a crash continues above the lease (so a crash leaves a
//! gap in the numbering, never a repeat). Cursors set with [`Journal::set_cursor`] become durable
//! with the next sync too.
//!
//! # Bad disks
//!
//! A write, fsync or metadata error puts the writer into a *failing* state: [`Journal::append`]
//! refuses records with [`JournalError::Unavailable`] (the caller keeps serving live events and
//! counts them), records accepted before the error stay queued (bounded by
//! [`Options::max_pending_bytes`]), a torn write is cut back to the last whole record, and the
//! writer retries every [`Options::retry_interval`] (or at once on [`Journal::flush`]) until it
//! succeeds. Opening never panics and never serves a corrupt record: a torn or corrupted segment
//! tail is truncated to the last good record, and is counted in [`JournalStats`].
//!
//! # Retention
//!
//! Oldest segments are deleted first, by total bytes ([`Options::max_bytes`], default 256 MiB)
//! and by age ([`Options::max_age`], default 7 days, judged on the records' own times against
//! [`Options::clock`]). Reading from a seq whose successors were deleted gives
//! [`JournalError::Expired`] with the oldest seq kept.

//!
//! # Limits
//!
//! - Age retention works on whole segments: a record can outlive `max_age` until the newest
//!   record of its segment is old too (the active segment is closed when it is all old).
//! - Corruption is handled as a torn tail: a bad record in an older segment (bit rot, not a
//!   crash) loses the rest of *that* segment; later segments are kept. Damage after open is
//!   caught on read ([`JournalError::Corrupt`], never a bad record); readers cannot step over
//!   it until the next open cuts it off.
//! - An `fdatasync` error is reported and retried like any write error, but (as for every
//!   program on Linux) the kernel may already have dropped the unsynced pages: what the failed
//!   sync covered may be lost without a further error.
//! - Opening scans every segment (checksums included) to rebuild the indexes: about 0.1–0.2 s
//!   per 100 MiB here.

#![warn(missing_docs)]

mod error;
mod follow;
mod meta;
mod record;
mod segment;
mod stats;
mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

pub use error::JournalError;
pub use follow::{Followed, Follower};
pub use record::{JournalRecordInput, Record};
pub use stats::{JournalStats, LatencyHistogram, LATENCY_BUCKETS_US};

use meta::Meta;
use record::SEGMENT_MAGIC;
use segment::{Segment, SegmentView};
use stats::Histogram;

/// Seqs are leased (recorded durably as used) this many at a time.
const LEASE_BLOCK: u64 = 1 << 20;
const LOCK_FILE: &str = "LOCK";
/// Most cursors a journal keeps.
pub const MAX_CURSORS: usize = 64;
/// Longest cursor name, in bytes.
pub const MAX_CURSOR_NAME: usize = 128;

/// Where the journal gets "now" from, for age retention. Tests inject a fake one.
pub trait Clock: Send + Sync {
    /// Now, in nanoseconds since the Unix epoch.
    fn now_ns(&self) -> i64;
}

/// The system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
            .unwrap_or_default()
    }
}

/// How a journal is kept.
#[derive(Clone)]
pub struct Options {
    /// Retention by size: oldest segments are deleted while the segments total more than this
    /// (minus one segment, so the disk use stays at or under it). Default 256 MiB.
    pub max_bytes: u64,
    /// Retention by age: segments whose newest record is older than this are deleted. `None`
    /// keeps records whatever their age. Default 7 days.
    pub max_age: Option<Duration>,
    /// Size at which a segment is closed and a new one started; 0 (the default) picks
    /// `max_bytes / 8`, between 64 KiB and 64 MiB.
    pub segment_bytes: u64,
    /// At most this long between an append and its `fdatasync`. Default 100 ms.
    pub sync_interval: Duration,
    /// Bytes of appended records that may wait for the writer; beyond it `append` returns
    /// [`JournalError::Backlog`]. Default 64 MiB.
    pub max_pending_bytes: usize,
    /// Largest record body accepted. Default 1 MiB.
    pub max_record_bytes: usize,
    /// Entries (16 bytes each, one per record with a container ID) of the in-memory `history`
    /// index; past it, `history` scans the segments instead. Default 2 Mi (32 MiB): more than
    /// 256 MiB of events of 130 bytes or more hold.
    pub max_history_entries: usize,
    /// How often a failing writer retries. Default 1 s.
    pub retry_interval: Duration,
    /// How long the writer lets appends gather into one batch before writing it (fewer, larger
    /// writes: less CPU per event at steady rates), at the cost of records becoming readable
    /// (and followers seeing them) that much later. Default 0: write as soon as woken.
    pub write_delay: Duration,
    /// Now, for age retention.
    pub clock: Arc<dyn Clock>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_bytes: 256 << 20,
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            segment_bytes: 0,
            sync_interval: Duration::from_millis(100),
            max_pending_bytes: 64 << 20,
            max_record_bytes: 1 << 20,
            max_history_entries: 2 << 20,
            retry_interval: Duration::from_secs(1),
            write_delay: Duration::ZERO,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("max_bytes", &self.max_bytes)
            .field("max_age", &self.max_age)
            .field("segment_bytes", &self.segment_bytes)
            .field("sync_interval", &self.sync_interval)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("max_history_entries", &self.max_history_entries)
            .field("retry_interval", &self.retry_interval)
            .field("write_delay", &self.write_delay)
            .finish_non_exhaustive()
    }
}

impl Options {
    fn effective_segment_bytes(&self) -> u64 {
        let auto = (self.max_bytes / 8).clamp(64 << 10, 64 << 20);
        let want = if self.segment_bytes == 0 { auto } else { self.segment_bytes };
        want.clamp(4096, self.max_bytes.max(4096))
    }
}

/// State shared by appenders and the writer thread.
pub(crate) struct Inner {
    next_seq: u64,
    /// Seqs below this may be handed out (the lease in `meta.json` is at least this).
    lease: u64,
    pending: Vec<u8>,
    failing: Option<String>,
    closing: bool,
    flush_requested: u64,
    flush_done: u64,
    cursors: BTreeMap<String, u64>,
    cursors_dirty: bool,
    written_seq: u64,
    synced_seq: u64,
}

/// The `history` index key of a container ID (SipHash with fixed keys: stable within a run).
fn id_hash(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// What readers see: the segments and the history index.
pub(crate) struct Index {
    segments: VecDeque<Segment>,
    total_bytes: u64,
    /// (hash of the container ID, seq) of every record with a container ID, in seq order: 16
    /// bytes a record, nothing per container; a lookup scans it (milliseconds for millions). A
    /// hash collision only costs reading a record that `history` then filters out.
    history: Vec<(u64, u64)>,
    history_complete: bool,
    dropped_through: u64,
}

impl Index {
    fn add_history(&mut self, id: &str, seq: u64, max: usize) {
        if id.is_empty() || !self.history_complete {
            return;
        }
        if self.history.len() >= max {
            tracing::warn!(
                entries = self.history.len(),
                "journal history index full; history() will scan the segments"
            );
            self.history_complete = false;
            self.history = Vec::new();
            return;
        }
        self.history.push((id_hash(id), seq));
    }

    fn prune_history(&mut self, through: u64) {
        let gone = self.history.partition_point(|&(_, s)| s <= through);
        self.history.drain(..gone);
    }

    fn oldest_seq(&self) -> u64 {
        self.segments.iter().find(|s| s.count > 0).map_or(0, |s| s.first_seq)
    }

    fn newest_seq(&self) -> u64 {
        self.segments.iter().rev().find(|s| s.count > 0).map_or(0, |s| s.last_seq)
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    appended: AtomicU64,
    dropped_records: AtomicU64,
    dropped_segments: AtomicU64,
    append_errors: AtomicU64,
    write_errors: AtomicU64,
    recovered_bytes: AtomicU64,
    history_scans: AtomicU64,
    write_latency: Histogram,
    fsync_latency: Histogram,
}

pub(crate) struct Shared {
    dir: PathBuf,
    opts: Options,
    segment_bytes: u64,
    journal_id: String,
    inner: Mutex<Inner>,
    wake_writer: Condvar,
    progress: Condvar,
    index: RwLock<Index>,
    readable_tx: tokio::sync::watch::Sender<u64>,
    counters: Counters,
}

impl Shared {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }
    fn index_mut(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// An open journal. Share it as `Arc<Journal>`; every method takes `&self`. Dropping it (or
/// [`Journal::close`]) writes and syncs what is pending and stops the writer thread.
pub struct Journal {
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    _lock: nix::fcntl::Flock<File>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.shared.dir)
            .field("journal_id", &self.shared.journal_id)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`: takes an exclusive lock on it, recovers
    /// every segment to its last good record (truncating torn or corrupt tails), rebuilds the
    /// in-memory indexes, leases seqs and starts the writer thread.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Journal, JournalError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| JournalError::io("create", &dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| JournalError::io("create", &lock_path, e))?;
        let lock =
            nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
                match errno {
                    nix::errno::Errno::EWOULDBLOCK => JournalError::Locked { path: dir.clone() },
                    e => JournalError::io("lock", &lock_path, e.into()),
                }
            })?;

        let stored = meta::read(&dir)?;
        let had_meta = stored.is_some();
        let mut meta = match stored {
            Some(m) => m,
            None => Meta {
                format: meta::FORMAT,
                journal_id: meta::new_journal_id(),
                created_ns: opts.clock.now_ns(),
                seq_lease: 1,
                dropped_through: 0,
                cursors: BTreeMap::new(),
            },
        };

        let mut recovered = Recovered::load(&dir, &opts, meta.dropped_through)?;
        if !had_meta && recovered.index.newest_seq() > 0 {
            // Segments without their metadata (deleted by hand?): keep the records, but what was
            // before them counts as dropped, and seqs skip a whole lease so none is reused.
            let oldest = recovered.index.oldest_seq();
            meta.dropped_through = oldest.saturating_sub(1);
            recovered.index.dropped_through = meta.dropped_through;
            meta.seq_lease = recovered.index.newest_seq() + 1 + LEASE_BLOCK;
            tracing::warn!(
                dir = %dir.display(),
                journal_id = %meta.journal_id,
                "journal metadata missing: kept the segments under a new journal ID; cursors are lost"
            );
        }
        let next_seq = (recovered.index.newest_seq().max(meta.dropped_through) + 1).max(meta.seq_lease).max(1);
        let segment_bytes = opts.effective_segment_bytes();

        // The active segment: the last one if it has room, else a new one.
        let mut index = recovered.index;
        let reuse_last = index.segments.back().is_some_and(|s| s.len < segment_bytes);
        let active = if reuse_last {
            let seg = index.segments.back().map(|s| s.path.clone());
            let path = seg.unwrap_or_default();
            let file = OpenOptions::new().write(true).open(&path).map_err(|e| JournalError::io("open", &path, e))?;
            writer::Active { file, path: path.clone() }
        } else {
            let last_name =
                index.segments.back().and_then(|s| segment::parse_name(s.path.file_name()?.to_str()?)).unwrap_or(0);
            let (active, seg) = writer::create_segment(&dir, next_seq.max(last_name + 1))?;
            index.total_bytes += seg.len;
            index.segments.push_back(seg);
            active
        };

        meta.seq_lease = next_seq + LEASE_BLOCK;
        meta::write(&dir, &meta)?;

        let written = index.newest_seq();
        let (readable_tx, _) = tokio::sync::watch::channel(written);
        let counters = Counters::default();
        counters.recovered_bytes.store(recovered.truncated_bytes, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            segment_bytes,
            journal_id: meta.journal_id.clone(),
            inner: Mutex::new(Inner {
                next_seq,
                lease: meta.seq_lease,
                pending: Vec::with_capacity(64 << 10),
                failing: None,
                closing: false,
                flush_requested: 0,
                flush_done: 0,
                cursors: meta.cursors.clone(),
                cursors_dirty: false,
                written_seq: written,
                synced_seq: written,
            }),
            wake_writer: Condvar::new(),
            progress: Condvar::new(),
            index: RwLock::new(index),
            readable_tx,
            counters,
            dir,
            opts,
        });
        let w = writer::Writer::new(Arc::clone(&shared), active, meta);
        let handle = std::thread::Builder::new()
            .name("ctwatch-journal".into())
            .spawn(move || w.run())
            .map_err(|e| JournalError::io("spawn writer for", &shared.dir, e))?;
        tracing::info!(
            dir = %shared.dir.display(),
            journal_id = %shared.journal_id,
            next_seq,
            "journal open"
        );
        Ok(Journal { shared, writer: Mutex::new(Some(handle)), _lock: lock })
    }

    /// The journal's ID: random, made when the journal was created, kept for its life (for the
    /// NATS `Nats-Msg-Id: <node>.<journal id>.<seq>`). 32 hex digits.
    pub fn journal_id(&self) -> &str {
        &self.shared.journal_id
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Appends one record and returns its seq. Cheap: encodes into the writer's batch and
    /// returns; the record is readable once the writer has written it (microseconds; see
    /// [`Journal::subscribe`]) and durable after the next sync. Refused (nothing appended, no seq
    /// used) while the writer is failing, when the backlog is full or the record too large.
    pub fn append(&self, input: JournalRecordInput<'_>) -> Result<u64, JournalError> {
        let limit = self.record_limit();
        match record::framed_len(&input) {
            Some(n) if n - record::FRAME_HEADER <= limit => {}
            other => {
                self.count_append_error();
                return Err(JournalError::RecordTooLarge { size: other.unwrap_or(usize::MAX), limit });
            }
        }
        self.append_with(input.time_ns, input.container_id, input.kind, |_, buf| buf.extend_from_slice(input.payload))
    }

    /// Like [`Journal::append`], but the payload is written by `payload`, which is given the
    /// record's seq and the buffer to append the payload to: so the stored event can carry its
    /// own seq (e.g. serialize the event with `seq` set straight into the buffer). `payload` runs
    /// under the journal's append lock: it must only serialize (no I/O, no blocking).
    pub fn append_with(
        &self,
        time_ns: i64,
        container_id: &str,
        kind: &str,
        payload: impl FnOnce(u64, &mut Vec<u8>),
    ) -> Result<u64, JournalError> {
        let limit = self.record_limit();
        if container_id.len() > u16::MAX as usize || kind.len() > u16::MAX as usize {
            self.count_append_error();
            return Err(JournalError::RecordTooLarge {
                size: container_id.len().max(kind.len()),
                limit: u16::MAX as usize,
            });
        }
        let mut inner = self.shared.inner();
        let refused = if inner.closing {
            Some(JournalError::Closed)
        } else if let Some(reason) = &inner.failing {
            Some(JournalError::Unavailable { reason: reason.clone() })
        } else if inner.next_seq >= inner.lease {
            Some(JournalError::Unavailable { reason: "seq lease not yet extended".into() })
        } else {
            None
        };
        if let Some(e) = refused {
            drop(inner);
            self.count_append_error();
            return Err(e);
        }
        let seq = inner.next_seq;
        let start = inner.pending.len();
        // A panicking `payload` must not leave half a record in the batch.
        let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            record::encode_with(&mut inner.pending, seq, time_ns, container_id, kind, payload)
        }));
        let body_len = match encoded {
            Ok(n) => n,
            Err(panic) => {
                inner.pending.truncate(start);
                drop(inner);
                std::panic::resume_unwind(panic);
            }
        };
        let refused = if body_len > limit {
            Some(JournalError::RecordTooLarge { size: body_len, limit })
        } else if start > 0 && inner.pending.len() > self.shared.opts.max_pending_bytes {
            Some(JournalError::Backlog { pending_bytes: start })
        } else {
            None
        };
        if let Some(e) = refused {
            inner.pending.truncate(start);
            drop(inner);
            self.count_append_error();
            return Err(e);
        }
        inner.next_seq += 1;
        drop(inner);
        self.shared.counters.appended.fetch_add(1, Ordering::Relaxed);
        if start == 0 {
            self.shared.wake_writer.notify_one();
        }
        Ok(seq)
    }

    fn record_limit(&self) -> usize {
        self.shared.opts.max_record_bytes.min(record::HARD_MAX_BODY)
    }

    fn count_append_error(&self) {
        self.shared.counters.append_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes and syncs everything appended so far (and the cursors), waiting for it. Also makes
    /// a failing writer retry at once. Returns the writer's error if it is still failing.
    pub fn flush(&self) -> Result<(), JournalError> {
        let mut inner = self.shared.inner();
        if inner.closing {
            return Err(JournalError::Closed);
        }
        inner.flush_requested += 1;
        let want = inner.flush_requested;
        self.shared.wake_writer.notify_one();
        while inner.flush_done < want && !inner.closing {
            inner = self.shared.progress.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
        match &inner.failing {
            Some(reason) => Err(JournalError::Unavailable { reason: reason.clone() }),
            None if inner.flush_done < want => Err(JournalError::Closed),
            None => Ok(()),
        }
    }

    /// Oldest seq kept (0 if the journal holds no record).
    pub fn first_seq(&self) -> u64 {
        self.shared.index().oldest_seq()
    }

    /// Newest seq readable (0 if none yet). Appended records become readable once written.
    pub fn last_seq(&self) -> u64 {
        self.shared.inner().written_seq
    }

    /// A channel whose value is the newest readable seq: a reader that has read through seq `s`
    /// waits for the value to exceed `s`, then reads again with `read_from(s, ..)`. Because the
    /// replay and the live tail come from the same log, there is no gap and no repeat.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.readable_tx.subscribe()
    }

    /// Blocks until a record after `after_seq` is readable, the journal closes, or `timeout`
    /// passes; returns the newest readable seq (for threads that are not async).
    pub fn wait_beyond(&self, after_seq: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut inner = self.shared.inner();
        while inner.written_seq <= after_seq && !inner.closing {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            inner = self.shared.progress.wait_timeout(inner, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        inner.written_seq
    }

    /// Up to `limit` records with seq above `after_seq`, in seq order (fewer, or none, at the
    /// tail). [`JournalError::Expired`] if retention dropped records after `after_seq`: start
    /// again after `oldest_seq - 1` to read from the oldest kept.
    pub fn read_from(&self, after_seq: u64, limit: usize) -> Result<Vec<Record>, JournalError> {
        let views = {
            let index = self.shared.index();
            if after_seq < index.dropped_through {
                let oldest = index.oldest_seq();
                let oldest_seq = if oldest == 0 { index.dropped_through + 1 } else { oldest };
                return Err(JournalError::Expired { after_seq, oldest_seq });
            }
            let i = index.segments.partition_point(|s| s.count > 0 && s.last_seq <= after_seq);
            index.segments.range(i..).map(|s| s.view(s.start_for_seq(after_seq))).collect::<Vec<_>>()
        };
        let mut out = Vec::new();
        for v in views {
            if out.len() >= limit {
                break;
            }
            v.for_each(|r| {
                if r.seq > after_seq {
                    out.push(r.to_owned());
                }
                out.len() < limit
            })?;
        }
        Ok(out)
    }

    /// The seq of the first record whose time is at or after `time_ns` (by the records' running
    /// maximum time, so a record a little out of order does not hide later ones), or `None` if
    /// every record kept is older. For `--since TIME`: read from the answer minus one.
    pub fn find_by_time(&self, time_ns: i64) -> Result<Option<u64>, JournalError> {
        let view = {
            let index = self.shared.index();
            let Some(seg) = index.segments.iter().find(|s| s.count > 0 && s.max_time >= time_ns) else {
                return Ok(None);
            };
            seg.view(seg.start_for_time(time_ns))
        };
        let mut found = None;
        view.for_each(|r| {
            if r.time_ns >= time_ns {
                found = Some(r.seq);
                false
            } else {
                true
            }
        })?;
        Ok(found)
    }

    /// Every record kept about one container (by exact container ID), in seq order. Uses the
    /// in-memory index (rebuilt at open); if the index outgrew
    /// [`Options::max_history_entries`], scans the segments.
    pub fn history(&self, container_id: &str) -> Result<Vec<Record>, JournalError> {
        if container_id.is_empty() {
            return Ok(Vec::new());
        }
        let plan: Vec<(SegmentView, Vec<u64>)> = {
            let index = self.shared.index();
            if index.history_complete {
                let h = id_hash(container_id);
                let mut plan: Vec<(SegmentView, Vec<u64>)> = Vec::new();
                for seq in index.history.iter().filter(|e| e.0 == h).map(|e| e.1) {
                    let i = index.segments.partition_point(|s| s.count > 0 && s.last_seq < seq);
                    let Some(seg) = index.segments.get(i) else {
                        continue;
                    };
                    match plan.last_mut() {
                        Some((v, list)) if v.path == seg.path => list.push(seq),
                        _ => plan.push((seg.view(seg.start_for_seq(seq - 1)), vec![seq])),
                    }
                }
                plan
            } else {
                self.shared.counters.history_scans.fetch_add(1, Ordering::Relaxed);
                index.segments.iter().map(|s| (s.view(SEGMENT_MAGIC.len() as u64), Vec::new())).collect()
            }
        };
        let mut out = Vec::new();
        for (view, seqs) in plan {
            if seqs.is_empty() {
                view.for_each(|r| {
                    if r.container_id == container_id {
                        out.push(r.to_owned());
                    }
                    true
                })?;
            } else {
                let mut want = seqs.iter().peekable();
                view.for_each(|r| {
                    while want.next_if(|&&s| s < r.seq).is_some() {}
                    if want.next_if(|&&s| s == r.seq).is_some() && r.container_id == container_id {
                        out.push(r.to_owned());
                    }
                    want.peek().is_some()
                })?;
            }
        }
        Ok(out)
    }

    /// Sets a named cursor (e.g. `"nats"` → last acknowledged seq). Durable with the next sync
    /// (at most [`Options::sync_interval`] later) or [`Journal::flush`]. At most
    /// [`MAX_CURSORS`] cursors, names of 1 to [`MAX_CURSOR_NAME`] bytes.
    pub fn set_cursor(&self, name: &str, seq: u64) -> Result<(), JournalError> {
        if name.is_empty() || name.len() > MAX_CURSOR_NAME {
            return Err(JournalError::InvalidCursor { reason: format!("name of {} bytes", name.len()) });
        }
        let mut inner = self.shared.inner();
        if inner.cursors.get(name) == Some(&seq) {
            return Ok(());
        }
        if !inner.cursors.contains_key(name) && inner.cursors.len() >= MAX_CURSORS {
            return Err(JournalError::InvalidCursor { reason: format!("already {MAX_CURSORS} cursors") });
        }
        inner.cursors.insert(name.to_owned(), seq);
        inner.cursors_dirty = true;
        Ok(())
    }

    /// Deletes a named cursor (durable like [`Journal::set_cursor`]).
    pub fn remove_cursor(&self, name: &str) {
        let mut inner = self.shared.inner();
        if inner.cursors.remove(name).is_some() {
            inner.cursors_dirty = true;
        }
    }

    /// A named cursor's value, if it was ever set.
    pub fn cursor(&self, name: &str) -> Option<u64> {
        self.shared.inner().cursors.get(name).copied()
    }

    /// Deletes segments that retention no longer keeps, now (the writer also does it after
    /// every write and every second).
    pub fn enforce_retention(&self) -> Result<(), JournalError> {
        self.flush()
    }

    /// Counters and gauges for metrics.
    pub fn stats(&self) -> JournalStats {
        let c = &self.shared.counters;
        let (pending_bytes, written_seq, synced_seq, failing) = {
            let inner = self.shared.inner();
            (inner.pending.len(), inner.written_seq, inner.synced_seq, inner.failing.is_some())
        };
        let index = self.shared.index();
        JournalStats {
            bytes: index.total_bytes,
            segments: index.segments.len(),
            oldest_seq: index.oldest_seq(),
            newest_seq: written_seq,
            synced_seq,
            appended: c.appended.load(Ordering::Relaxed),
            pending_bytes,
            dropped_by_retention: c.dropped_records.load(Ordering::Relaxed),
            segments_dropped: c.dropped_segments.load(Ordering::Relaxed),
            append_errors: c.append_errors.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            recovered_truncated_bytes: c.recovered_bytes.load(Ordering::Relaxed),
            history_scans: c.history_scans.load(Ordering::Relaxed),
            failing,
            write_latency: c.write_latency.snapshot(),
            fsync_latency: c.fsync_latency.snapshot(),
        }
    }

    /// Writes and syncs what is pending, records a clean shutdown and stops the writer. Appends
    /// fail with [`JournalError::Closed`] afterwards. Also done on drop.
    pub fn close(&self) {
        {
            let mut inner = self.shared.inner();
            inner.closing = true;
        }
        self.shared.wake_writer.notify_all();
        self.shared.progress.notify_all();
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("journal writer thread panicked");
            }
        }
        // Wake followers so they see the close.
        self.shared.readable_tx.send_modify(|_| {});
    }

    /// Whether [`Journal::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.inner().closing
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

/// The segments found at open, recovered.
struct Recovered {
    index: Index,
    truncated_bytes: u64,
}

impl Recovered {
    fn load(dir: &Path, opts: &Options, dropped_through: u64) -> Result<Recovered, JournalError> {
        let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(|e| JournalError::io("list", dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                segment::parse_name(name.to_str()?).map(|seq| (seq, e.path()))
            })
            .collect();
        names.sort();
        let mut index = Index {
            segments: VecDeque::new(),
            total_bytes: 0,
            history: Vec::new(),
            history_complete: true,
            dropped_through,
        };
        let mut truncated_bytes = 0;
        let mut prev = dropped_through;
        let n = names.len();
        for (i, (_, path)) in names.into_iter().enumerate() {
            let is_last = i + 1 == n;
            let file = Arc::new(File::open(&path).map_err(|e| JournalError::io("open", &path, e))?);
            let mut seg = Segment::new(path.clone(), Arc::clone(&file));
            let max_hist = opts.max_history_entries;
            let scan = segment::scan(&path, prev, |r, off, len| {
                seg.add(r, off, len);
                index.add_history(r.container_id, r.seq, max_hist);
            })?;
            if seg.count == 0 && !is_last && prev == dropped_through && scan.stopped == Some(segment::SEQ_NOT_ABOVE) {
                // Retention recorded this segment as dropped but the process died before
                // deleting it: finish the job.
                tracing::debug!(segment = %path.display(), "journal removing a segment retention had dropped");
                std::fs::remove_file(&path).map_err(|e| JournalError::io("remove", &path, e))?;
                continue;
            }
            if let Some(why) = scan.stopped {
                tracing::warn!(
                    segment = %path.display(),
                    valid_bytes = scan.valid_len,
                    file_bytes = scan.file_len,
                    reason = why,
                    "journal segment recovered to its last good record"
                );
            }
            if scan.valid_len < scan.file_len {
                truncated_bytes += scan.file_len - scan.valid_len;
            }
            if seg.count == 0 && !is_last {
                // Nothing good in a segment before the last: remove it.
                std::fs::remove_file(&path).map_err(|e| JournalError::io("remove", &path, e))?;
                continue;
            }
            if scan.valid_len < SEGMENT_MAGIC.len() as u64 {
                // The last segment has no good header (crash while creating it): rewrite it.
                let f = OpenOptions::new().write(true).open(&path).map_err(|e| JournalError::io("open", &path, e))?;
                f.set_len(0)
                    .and_then(|_| f.write_all_at(SEGMENT_MAGIC, 0))
                    .and_then(|_| f.sync_data())
                    .map_err(|e| JournalError::io("rewrite header of", &path, e))?;
                seg.len = SEGMENT_MAGIC.len() as u64;
            } else if scan.valid_len < scan.file_len {
                let f = OpenOptions::new().write(true).open(&path).map_err(|e| JournalError::io("open", &path, e))?;
                f.set_len(scan.valid_len)
                    .and_then(|_| f.sync_data())
                    .map_err(|e| JournalError::io("truncate", &path, e))?;
                seg.len = scan.valid_len;
            }
            if seg.count > 0 {
                prev = seg.last_seq;
            }
            index.total_bytes += seg.len;
            index.segments.push_back(seg);
        }
        Ok(Recovered { index, truncated_bytes })
    }
}
