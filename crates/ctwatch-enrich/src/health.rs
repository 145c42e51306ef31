//! Whether a daemon answers: an outage is logged once, and so is the recovery.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ctwatch::Runtime;
use tracing::{info, warn};

use crate::EnrichError;

/// The health of one daemon at one socket.
pub struct DaemonHealth {
    runtime: Runtime,
    socket: PathBuf,
    down: AtomicBool,
}

impl DaemonHealth {
    /// A daemon of `runtime` at `socket`, assumed up.
    pub fn new(runtime: Runtime, socket: &Path) -> Self {
        DaemonHealth { runtime, socket: socket.to_path_buf(), down: AtomicBool::new(false) }
    }

    /// Which runtime it is.
    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// Where it answers.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Records a request's outcome; returns true when it failed (the caller
    /// should drop its connection).
    pub fn record<T>(&self, result: &Result<T, EnrichError>) -> bool {
        match result {
            Err(e) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    warn!(runtime = %self.runtime, socket = %self.socket.display(), "not answering: {e}; retrying in the background");
                }
                true
            }
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    info!(runtime = %self.runtime, socket = %self.socket.display(), "answering again");
                }
                false
            }
        }
    }

    /// The error for a failed request.
    pub fn unavailable(&self, e: &dyn std::fmt::Display) -> EnrichError {
        EnrichError::Unavailable { runtime: self.runtime, socket: self.socket.clone(), reason: e.to_string() }
    }
}
