//! The journal's errors.

use std::path::PathBuf;

/// Everything the journal can fail with. Each variant's `Display` is one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A file system call on one of the journal's files failed.
    #[error("journal: {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("create", "write", "fsync", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another process (or another `Journal` in this one) has the directory open.
    #[error("journal: {} is in use by another process", path.display())]
    Locked {
        /// The journal directory.
        path: PathBuf,
    },
    /// The directory holds something this version cannot read.
    #[error("journal: {}: {reason}", path.display())]
    BadMeta {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The writer cannot write at the moment (disk full, read-only, I/O error); the record was not
    /// accepted. The writer retries by itself; appends succeed again once it has caught up.
    #[error("journal unavailable: {reason}")]
    Unavailable {
        /// The writer's last error.
        reason: String,
    },
    /// Too many records are waiting for the writer (`Options::max_pending_bytes`); the record was
    /// not accepted.
    #[error("journal: writer backlog full ({pending_bytes} bytes pending)")]
    Backlog {
        /// Bytes waiting to be written.
        pending_bytes: usize,
    },
    /// One record is larger than `Options::max_record_bytes` (or a field does not fit its length).
    #[error("journal: record of {size} bytes exceeds the limit of {limit}")]
    RecordTooLarge {
        /// The encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Records after `after_seq` were dropped by retention. Read again after `oldest_seq - 1` to
    /// start at the oldest record kept (if retention dropped every record, `oldest_seq` is one
    /// above the last dropped, and that read waits for new records).
    #[error("journal: records after seq {after_seq} were dropped by retention; oldest kept is {oldest_seq}")]
    Expired {
        /// What the reader asked for.
        after_seq: u64,
        /// The oldest seq still kept (or one above the last dropped, if none is kept).
        oldest_seq: u64,
    },
    /// A record that was good when written no longer reads back as good (the disk changed it).
    #[error("journal: corrupt record in {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A cursor name is empty or too long, or there are too many cursors.
    #[error("journal: invalid cursor: {reason}")]
    InvalidCursor {
        /// What is wrong.
        reason: String,
    },
    /// The journal was closed.
    #[error("journal: closed")]
    Closed,
}

impl JournalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        JournalError::Io { op, path: path.into(), source }
    }
}
