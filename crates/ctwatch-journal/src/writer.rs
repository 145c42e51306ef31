//! The writer thread: writes batches, rolls segments, syncs, extends the seq lease, persists
//! cursors and applies retention. No lock is held during any I/O.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::meta::{self, Meta};
use crate::record::{decode_trusted as decode, Decoded, SEGMENT_MAGIC};
use crate::segment::{self, Segment};
use crate::{JournalError, Shared, LEASE_BLOCK};

/// The segment being appended to.
pub(crate) struct Active {
    pub file: File,
    pub path: PathBuf,
}

/// Creates a new, empty segment for records from `first_seq` on, durably.
pub(crate) fn create_segment(dir: &Path, first_seq: u64) -> Result<(Active, Segment), JournalError> {
    let path = dir.join(segment::file_name(first_seq));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| JournalError::io("create", &path, e))?;
    let res = file
        .write_all_at(SEGMENT_MAGIC, 0)
        .and_then(|_| file.sync_data())
        .map_err(|e| JournalError::io("write", &path, e))
        .and_then(|_| meta::sync_dir(dir));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    let read = File::open(&path).map_err(|e| JournalError::io("open", &path, e))?;
    let seg = Segment::new(path.clone(), Arc::new(read));
    Ok((Active { file, path }, seg))
}

/// A gathering batch is written at once when it reaches this size.
const GATHER_BYTES: usize = 256 << 10;

pub(crate) struct Writer {
    shared: Arc<Shared>,
    active: Active,
    active_len: u64,
    meta: Meta,
    last_sync: Instant,
    unsynced: bool,
    last_housekeeping: Instant,
    last_meta_write: Instant,
    /// The seq in the newest segment file's name (names strictly increase).
    last_name: u64,
}

enum Step {
    Ok,
    Failed(JournalError),
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>, active: Active, meta: Meta) -> Self {
        let active_len = shared.index().segments.back().map_or(0, |s| s.len);
        let last_name = active.path.file_name().and_then(|n| segment::parse_name(n.to_str()?)).unwrap_or(0);
        Writer {
            shared,
            active,
            active_len,
            meta,
            last_sync: Instant::now(),
            unsynced: false,
            last_housekeeping: Instant::now(),
            last_meta_write: Instant::now(),
            last_name,
        }
    }

    pub(crate) fn run(mut self) {
        let sync_interval = self.shared.opts.sync_interval;
        let retry = self.shared.opts.retry_interval.max(Duration::from_millis(10));
        let write_delay = self.shared.opts.write_delay;
        let mut batch: Vec<u8> = Vec::with_capacity(64 << 10);
        let mut retry_at = Instant::now();
        loop {
            // Wait for work, then take it.
            let (flush_gen, cursors, closing) = {
                let mut inner = self.shared.inner();
                loop {
                    if inner.closing || inner.flush_requested > inner.flush_done {
                        break;
                    }
                    let wait = if inner.failing.is_some() {
                        // Only a retry (or a flush, or close) ends the wait.
                        retry_at.saturating_duration_since(Instant::now())
                    } else {
                        if !inner.pending.is_empty() {
                            break;
                        }
                        let mut wait = Duration::from_secs(1).saturating_sub(self.last_housekeeping.elapsed());
                        if self.unsynced {
                            wait = wait.min(sync_interval.saturating_sub(self.last_sync.elapsed()));
                        }
                        if inner.cursors_dirty {
                            wait = wait.min(sync_interval.saturating_sub(self.last_meta_write.elapsed()));
                        }
                        wait
                    };
                    if wait.is_zero() {
                        break;
                    }
                    inner = self.shared.wake_writer.wait_timeout(inner, wait).unwrap_or_else(|p| p.into_inner()).0;
                }
                // Let a batch gather for up to `write_delay` (fewer, larger writes), unless a
                // flush or close is waiting or the batch is already large.
                let gather_until = Instant::now() + write_delay;
                while !write_delay.is_zero()
                    && !inner.closing
                    && inner.flush_requested <= inner.flush_done
                    && inner.failing.is_none()
                    && inner.pending.len() < GATHER_BYTES
                {
                    let left = gather_until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    inner = self.shared.wake_writer.wait_timeout(inner, left).unwrap_or_else(|p| p.into_inner()).0;
                }
                std::mem::swap(&mut batch, &mut inner.pending);
                let cursors_due = inner.closing
                    || inner.flush_requested > inner.flush_done
                    || self.last_meta_write.elapsed() >= sync_interval;
                let cursors = (inner.cursors_dirty && cursors_due).then(|| {
                    inner.cursors_dirty = false;
                    inner.cursors.clone()
                });
                (inner.flush_requested, cursors, inner.closing)
            };
            let force_sync = closing || flush_gen > self.shared.inner().flush_done;
            self.last_housekeeping = Instant::now();

            let mut result = self.write_batch(&mut batch);
            if let Step::Failed(_) = result {
                // Put back what was not written, ahead of what came since.
                let mut inner = self.shared.inner();
                batch.extend_from_slice(&inner.pending);
                std::mem::swap(&mut batch, &mut inner.pending);
            }
            batch.clear();

            if let Step::Ok = result {
                if self.unsynced && (force_sync || cursors.is_some() || self.last_sync.elapsed() >= sync_interval) {
                    result = self.sync();
                }
            }
            if let Step::Ok = result {
                result = self.persist_meta(cursors.as_ref(), closing);
            } else if cursors.is_some() {
                self.shared.inner().cursors_dirty = true;
            }
            if let Step::Ok = result {
                result = self.retention();
            }
            if let Step::Failed(_) = result {
                retry_at = Instant::now() + retry;
            }

            // Report.
            let done = {
                let mut inner = self.shared.inner();
                match result {
                    Step::Ok => {
                        if let Some(reason) = inner.failing.take() {
                            tracing::info!(was = %reason, "journal writer recovered");
                        }
                    }
                    Step::Failed(e) => {
                        self.shared.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                        let msg = e.to_string();
                        if inner.failing.as_deref() != Some(msg.as_str()) {
                            tracing::error!(error = %msg, "journal writer failing; appends refused until it recovers");
                        }
                        inner.failing = Some(msg);
                    }
                }
                if !self.unsynced {
                    inner.synced_seq = inner.written_seq;
                }
                inner.flush_done = inner.flush_done.max(flush_gen);
                if closing && !inner.pending.is_empty() {
                    tracing::error!(
                        bytes = inner.pending.len(),
                        last_written_seq = inner.written_seq,
                        "journal closed with records it could not write; they are lost"
                    );
                }
                closing
            };
            self.shared.progress.notify_all();
            if done {
                return;
            }
        }
    }

    /// Writes the batch, rolling segments at `segment_bytes`. On error, `batch` keeps what was
    /// not written (what was is drained from it).
    fn write_batch(&mut self, batch: &mut Vec<u8>) -> Step {
        let mut start = 0usize;
        let res = self.write_records(batch, &mut start);
        batch.drain(..start);
        match res {
            Ok(()) => Step::Ok,
            Err(e) => Step::Failed(e),
        }
    }

    fn write_records(&mut self, batch: &[u8], done: &mut usize) -> Result<(), JournalError> {
        let seg_bytes = self.shared.segment_bytes;
        while *done < batch.len() {
            if self.active_len >= seg_bytes && self.active_len > SEGMENT_MAGIC.len() as u64 {
                let first = match decode(&batch[*done..]) {
                    Decoded::Record(r, _) => r.seq,
                    _ => return Err(self.internal("undecodable pending record")),
                };
                self.roll(first)?;
            }
            // Records that fit in this segment (at least one).
            let room = seg_bytes.saturating_sub(self.active_len) as usize;
            let mut end = *done;
            while end < batch.len() {
                let n = match decode(&batch[end..]) {
                    Decoded::Record(_, n) => n,
                    _ => return Err(self.internal("undecodable pending record")),
                };
                if end > *done && end - *done + n > room {
                    break;
                }
                end += n;
            }
            let chunk = &batch[*done..end];
            let t = Instant::now();
            if let Err(e) = self.active.file.write_all_at(chunk, self.active_len) {
                // Cut a torn write back to the last whole record.
                let _ = self.active.file.set_len(self.active_len);
                return Err(JournalError::io("write", &self.active.path, e));
            }
            self.shared.counters.write_latency.observe(t.elapsed());
            self.unsynced = true;
            let base = self.active_len;
            self.active_len += chunk.len() as u64;
            // Index what was written, then publish it.
            let mut last = 0;
            {
                let mut index = self.shared.index_mut();
                let max_hist = self.shared.opts.max_history_entries;
                let mut pos = 0;
                while pos < chunk.len() {
                    let Decoded::Record(r, n) = decode(&chunk[pos..]) else {
                        break;
                    };
                    if let Some(seg) = index.segments.back_mut() {
                        seg.add(&r, base + pos as u64, n);
                    }
                    index.add_history(r.container_id, r.seq, max_hist);
                    last = r.seq;
                    pos += n;
                }
                index.total_bytes += chunk.len() as u64;
            }
            *done = end;
            if last > 0 {
                self.shared.inner().written_seq = last;
                self.shared.readable_tx.send_replace(last);
            }
            self.shared.progress.notify_all();
        }
        Ok(())
    }

    fn internal(&self, what: &str) -> JournalError {
        JournalError::io("write", &self.active.path, std::io::Error::other(what.to_owned()))
    }

    fn roll(&mut self, first_seq: u64) -> Result<(), JournalError> {
        if self.unsynced {
            if let Step::Failed(e) = self.sync() {
                return Err(e);
            }
        }
        let name = first_seq.max(self.last_name + 1);
        let (active, seg) = create_segment(&self.shared.dir, name)?;
        self.last_name = name;
        self.active = active;
        self.active_len = seg.len;
        let mut index = self.shared.index_mut();
        index.total_bytes += seg.len;
        index.segments.push_back(seg);
        Ok(())
    }

    fn sync(&mut self) -> Step {
        let t = Instant::now();
        match self.active.file.sync_data() {
            Ok(()) => {
                self.shared.counters.fsync_latency.observe(t.elapsed());
                self.unsynced = false;
                self.last_sync = Instant::now();
                Step::Ok
            }
            Err(e) => Step::Failed(JournalError::io("fsync", &self.active.path, e)),
        }
    }

    /// Extends the seq lease when half used, saves changed cursors, and on close records the
    /// exact next seq (so a clean restart leaves no gap).
    fn persist_meta(&mut self, cursors: Option<&std::collections::BTreeMap<String, u64>>, closing: bool) -> Step {
        let (next_seq, lease) = {
            let inner = self.shared.inner();
            (inner.next_seq, inner.lease)
        };
        let mut want = self.meta.clone();
        if let Some(c) = cursors {
            want.cursors = c.clone();
        }
        let clean_close = closing && !self.unsynced && self.shared.inner().pending.is_empty();
        if clean_close {
            want.seq_lease = next_seq;
        } else if next_seq + LEASE_BLOCK / 2 > lease {
            want.seq_lease = next_seq + LEASE_BLOCK;
        }
        if want == self.meta {
            return Step::Ok;
        }
        self.last_meta_write = Instant::now();
        match meta::write(&self.shared.dir, &want) {
            Ok(()) => {
                if want.seq_lease > lease && !clean_close {
                    self.shared.inner().lease = want.seq_lease;
                }
                self.meta = want;
                Step::Ok
            }
            Err(e) => {
                if cursors.is_some() {
                    self.shared.inner().cursors_dirty = true;
                }
                Step::Failed(e)
            }
        }
    }

    /// Drops the oldest segments while over `max_bytes` or older than `max_age`.
    fn retention(&mut self) -> Step {
        let opts = &self.shared.opts;
        let seg_bytes = self.shared.segment_bytes;
        let budget = opts.max_bytes.saturating_sub(seg_bytes);
        let cutoff =
            opts.max_age.map(|age| opts.clock.now_ns().saturating_sub(age.as_nanos().min(i64::MAX as u128) as i64));
        // Age also applies to the active segment: roll it so it can go.
        let active_expired = {
            let index = self.shared.index();
            index.segments.back().is_some_and(|s| s.count > 0 && cutoff.is_some_and(|c| s.max_time < c))
        };
        if active_expired {
            let next = self.shared.inner().next_seq;
            if let Err(e) = self.roll(next) {
                return Step::Failed(e);
            }
        }
        loop {
            let victim = {
                let index = self.shared.index();
                if index.segments.len() < 2 {
                    return Step::Ok;
                }
                let Some(s) = index.segments.front() else {
                    return Step::Ok;
                };
                let over = index.total_bytes > budget;
                let old = s.count == 0 || cutoff.is_some_and(|c| s.max_time < c);
                if !(over || old) {
                    return Step::Ok;
                }
                (s.path.clone(), s.last_seq, s.count)
            };
            let (path, last_seq, count) = victim;
            // Record the new floor first: a crash before the unlink only leaves a segment that
            // the next open removes.
            if count > 0 && last_seq > self.meta.dropped_through {
                let mut want = self.meta.clone();
                want.dropped_through = last_seq;
                if let Err(e) = meta::write(&self.shared.dir, &want) {
                    return Step::Failed(e);
                }
                self.meta = want;
            }
            {
                let mut index = self.shared.index_mut();
                if let Some(s) = index.segments.pop_front() {
                    index.total_bytes -= s.len;
                }
                index.dropped_through = index.dropped_through.max(self.meta.dropped_through);
                let through = index.dropped_through;
                index.prune_history(through);
            }
            let c = &self.shared.counters;
            c.dropped_records.fetch_add(count, Ordering::Relaxed);
            c.dropped_segments.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Step::Failed(JournalError::io("remove", &path, e));
                }
            }
            tracing::debug!(segment = %path.display(), records = count, "journal retention dropped a segment");
        }
    }
}
