//! What runtimes, and whoever controls their directories, hand ctwatch:
//! files read with ONE size cap and never blocking, names checked before
//! they are joined onto a path, strings cleaned before they are printed.
//! Shared by enrichment and the runtime hook.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

/// The largest runtime file read (state.json, config.json, config.v2.json,
/// repositories.json, daemon.json, pid files): one cap for all of them.
pub const MAX_RUNTIME_FILE: u64 = 64 << 20;

/// A name that is safe to join onto a directory (no traversal, no separators, no NUL).
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// An untrusted string made safe to print: at most `max` characters, control
/// characters replaced by U+FFFD (so no terminal escapes or fake lines).
pub fn clean(value: &str, max: usize) -> String {
    value.chars().take(max).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect()
}

/// Why a record file was not read.
#[derive(Debug, Error)]
pub enum RecordFileError {
    /// It could not be opened or read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// It is not a regular file (a FIFO or device could block or never end).
    #[error("not a regular file")]
    NotAFile,
    /// It is larger than the caller reads.
    #[error("{size} bytes, more than the {max} read")]
    TooLarge {
        /// Its size (at least).
        size: u64,
        /// The cap.
        max: u64,
    },
}

/// Reads a file a runtime (or whoever controls its directories) wrote, never
/// blocking: opened non-blocking, so a FIFO in its place cannot hang the
/// caller; only a regular file; at most `max_bytes`.
pub fn read_capped(path: &Path, max_bytes: u64) -> Result<Vec<u8>, RecordFileError> {
    let file =
        File::options().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(RecordFileError::NotAFile);
    }
    if meta.len() > max_bytes {
        return Err(RecordFileError::TooLarge { size: meta.len(), max: max_bytes });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        // It grew while being read.
        return Err(RecordFileError::TooLarge { size: bytes.len() as u64, max: max_bytes });
    }
    Ok(bytes)
}

/// Reads a runtime's JSON record file with [`read_capped`]; invalid UTF-8 is
/// replaced, not fatal; anything unreadable is `None` (and logged at debug).
pub fn read_json_capped<T: for<'de> Deserialize<'de>>(path: &Path, max_bytes: u64) -> Option<T> {
    let bytes = read_capped(path, max_bytes)
        .map_err(|e| tracing::debug!(path = %path.display(), error = %e, "record file not read"))
        .ok()?;
    serde_json::from_str(&String::from_utf8_lossy(&bytes))
        .map_err(|e| tracing::debug!(path = %path.display(), error = %e, "unreadable record"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_traversal_separators_or_nul_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
        assert!(is_safe_name("abc-1.2_x"));
    }

    #[test]
    fn a_fifo_is_not_read_and_a_big_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(read_capped(&fifo, 10), Err(RecordFileError::NotAFile)));
        let big = dir.path().join("big");
        std::fs::write(&big, [b'x'; 11]).unwrap();
        assert!(matches!(read_capped(&big, 10), Err(RecordFileError::TooLarge { size: 11, max: 10 })));
        assert_eq!(read_capped(&big, 11).unwrap().len(), 11);
    }
}
