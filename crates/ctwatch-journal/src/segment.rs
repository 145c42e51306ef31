//! Segment files: scanning (and recovering) them at open, and reading records back.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::record::{decode, Decoded, RecordRef, SEGMENT_MAGIC};
use crate::JournalError;

/// A sparse index entry is added every this many bytes of a segment.
pub(crate) const SPARSE_EVERY: u64 = 4096;
const CHUNK: usize = 256 << 10;

/// File name of the segment whose first record will be `first_seq`.
pub(crate) fn file_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.log")
}

/// The seq in a segment file's name, if it is one.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?.strip_suffix(".log")?.parse().ok()
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sparse {
    pub seq: u64,
    pub offset: u64,
    /// The largest record time up to and including this record.
    pub watermark: i64,
}

/// What the index knows of one segment.
#[derive(Debug)]
pub(crate) struct Segment {
    pub path: PathBuf,
    /// A read handle (stays valid after retention unlinks the file).
    pub file: Arc<File>,
    /// Bytes written and readable (header included).
    pub len: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
    pub max_time: i64,
    pub sparse: Vec<Sparse>,
}

impl Segment {
    pub(crate) fn new(path: PathBuf, file: Arc<File>) -> Self {
        Segment {
            path,
            file,
            len: SEGMENT_MAGIC.len() as u64,
            first_seq: 0,
            last_seq: 0,
            count: 0,
            max_time: i64::MIN,
            sparse: Vec::new(),
        }
    }

    /// Accounts for one record written at `offset` (with framed length `n`).
    pub(crate) fn add(&mut self, r: &RecordRef<'_>, offset: u64, n: usize) {
        if self.count == 0 {
            self.first_seq = r.seq;
        }
        self.last_seq = r.seq;
        self.count += 1;
        self.max_time = self.max_time.max(r.time_ns);
        if self.sparse.last().is_none_or(|s| offset - s.offset >= SPARSE_EVERY) {
            self.sparse.push(Sparse { seq: r.seq, offset, watermark: self.max_time });
        }
        self.len = offset + n as u64;
    }

    /// Offset to start scanning at for the first record with seq > `after_seq`.
    pub(crate) fn start_for_seq(&self, after_seq: u64) -> u64 {
        let i = self.sparse.partition_point(|s| s.seq <= after_seq);
        if i == 0 {
            SEGMENT_MAGIC.len() as u64
        } else {
            self.sparse[i - 1].offset
        }
    }

    /// Offset to start scanning at for the first record with time >= `t`.
    pub(crate) fn start_for_time(&self, t: i64) -> u64 {
        let i = self.sparse.partition_point(|s| s.watermark < t);
        if i == 0 {
            SEGMENT_MAGIC.len() as u64
        } else {
            self.sparse[i - 1].offset
        }
    }

    /// What a reader needs, taken under the index lock so the read itself happens without it.
    pub(crate) fn view(&self, start: u64) -> SegmentView {
        SegmentView { path: self.path.clone(), file: Arc::clone(&self.file), start, end: self.len }
    }
}

/// A byte range of one segment to read records from.
#[derive(Debug, Clone)]
pub(crate) struct SegmentView {
    pub path: PathBuf,
    pub file: Arc<File>,
    pub start: u64,
    pub end: u64,
}

impl SegmentView {
    /// Calls `f` with each record in the range, in order, until it returns `false`.
    pub(crate) fn for_each(&self, mut f: impl FnMut(RecordRef<'_>) -> bool) -> Result<(), JournalError> {
        let mut buf: Vec<u8> = Vec::new();
        let mut off = self.start; // file offset of buf[0]
        let mut pos = 0usize;
        let mut want = CHUNK;
        loop {
            let cur = off + pos as u64;
            if cur >= self.end {
                return Ok(());
            }
            match decode(&buf[pos..]) {
                Decoded::Record(r, n) => {
                    if cur + n as u64 > self.end {
                        return Ok(());
                    }
                    pos += n;
                    if !f(r) {
                        return Ok(());
                    }
                }
                Decoded::Incomplete => {
                    buf.drain(..pos);
                    off += pos as u64;
                    pos = 0;
                    let have = buf.len();
                    let to_read = ((self.end - off) as usize - have).min(want.max(CHUNK));
                    if to_read == 0 {
                        return Err(self.corrupt(off, "record runs past the written end"));
                    }
                    buf.resize(have + to_read, 0);
                    let mut filled = 0;
                    while filled < to_read {
                        match self.file.read_at(&mut buf[have + filled..], off + (have + filled) as u64) {
                            Ok(0) => return Err(self.corrupt(off, "segment shorter than indexed")),
                            Ok(k) => filled += k,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(JournalError::io("read", &self.path, e)),
                        }
                    }
                    want = want.saturating_mul(2);
                }
                Decoded::Corrupt(reason) => return Err(self.corrupt(cur, reason)),
            }
        }
    }

    fn corrupt(&self, offset: u64, reason: &'static str) -> JournalError {
        JournalError::Corrupt { path: self.path.clone(), offset, reason }
    }
}

/// Why a scan stops at a record whose seq does not grow.
pub(crate) const SEQ_NOT_ABOVE: &str = "seq not above the previous record's";

/// The result of scanning one segment file at open.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Bytes of good data (header and whole, valid records); 0 if even the header is bad.
    pub valid_len: u64,
    /// The file's length.
    pub file_len: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped: Option<&'static str>,
}

/// Reads a segment file from the start, calling `f(record, offset, framed_len)` for every good
/// record whose seq is above the previous one (starting from `after_seq`); stops at the first bad,
/// torn or out-of-order record. Never panics on any content.
pub(crate) fn scan(
    path: &Path,
    mut after_seq: u64,
    mut f: impl FnMut(&RecordRef<'_>, u64, usize),
) -> Result<Scan, JournalError> {
    let mut file = File::open(path).map_err(|e| JournalError::io("open", path, e))?;
    let file_len = file.metadata().map_err(|e| JournalError::io("stat", path, e))?.len();
    let mut magic = [0u8; 8];
    if file_len < magic.len() as u64 || file.read_exact(&mut magic).is_err() || &magic != SEGMENT_MAGIC {
        return Ok(Scan { valid_len: 0, file_len, stopped: (file_len > 0).then_some("bad segment header") });
    }
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut off = magic.len() as u64;
    let mut pos = 0usize;
    let mut eof = false;
    loop {
        match decode(&buf[pos..]) {
            Decoded::Record(r, n) => {
                if r.seq <= after_seq {
                    return Ok(Scan { valid_len: off + pos as u64, file_len, stopped: Some(SEQ_NOT_ABOVE) });
                }
                after_seq = r.seq;
                f(&r, off + pos as u64, n);
                pos += n;
            }
            Decoded::Incomplete if !eof => {
                buf.drain(..pos);
                off += pos as u64;
                pos = 0;
                let have = buf.len();
                buf.resize(have + CHUNK, 0);
                let k = loop {
                    match file.read(&mut buf[have..]) {
                        Ok(k) => break k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(JournalError::io("read", path, e)),
                    }
                };
                buf.truncate(have + k);
                eof = k == 0;
            }
            Decoded::Incomplete => {
                let valid_len = off + pos as u64;
                return Ok(Scan {
                    valid_len,
                    file_len,
                    stopped: (valid_len < file_len).then_some("torn record at the end"),
                });
            }
            Decoded::Corrupt(why) => return Ok(Scan { valid_len: off + pos as u64, file_len, stopped: Some(why) }),
        }
    }
}
