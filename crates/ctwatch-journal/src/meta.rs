//! `meta.json`: the journal's identity, seq lease, retention floor and cursors, rewritten
//! atomically (temporary file, fsync, rename, fsync of the directory).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::JournalError;

pub(crate) const META_FILE: &str = "meta.json";
const META_TMP: &str = "meta.json.tmp";
pub(crate) const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Meta {
    pub format: u32,
    pub journal_id: String,
    pub created_ns: i64,
    /// No seq at or above this was ever handed out.
    pub seq_lease: u64,
    /// Every record with a seq at or below this was dropped by retention.
    pub dropped_through: u64,
    pub cursors: BTreeMap<String, u64>,
}

pub(crate) fn read(dir: &Path) -> Result<Option<Meta>, JournalError> {
    let path = dir.join(META_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(JournalError::io("read", path, e)),
    };
    let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| JournalError::BadMeta {
        path: path.clone(),
        reason: format!("not valid journal metadata: {e}"),
    })?;
    if meta.format != FORMAT {
        return Err(JournalError::BadMeta {
            path,
            reason: format!("format {} is not supported (this build reads {FORMAT})", meta.format),
        });
    }
    Ok(Some(meta))
}

pub(crate) fn write(dir: &Path, meta: &Meta) -> Result<(), JournalError> {
    let tmp = dir.join(META_TMP);
    let path = dir.join(META_FILE);
    let bytes = serde_json::to_vec_pretty(meta).unwrap_or_default();
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| JournalError::io("create", &tmp, e))?;
    f.write_all(&bytes).map_err(|e| JournalError::io("write", &tmp, e))?;
    f.sync_all().map_err(|e| JournalError::io("fsync", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(|e| JournalError::io("rename", &path, e))?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| JournalError::io("fsync", dir, e))
}

pub(crate) fn new_journal_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::getrandom(&mut b).is_err() {
        // No entropy source: fall back on time and pid, still unique enough per host.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        b[..8].copy_from_slice(&(t as u64).to_le_bytes());
        b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
