//! Counters and latency histograms for metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in microseconds, of the latency histogram buckets (a last, unbounded bucket
/// follows). Made to map onto a Prometheus histogram.
pub const LATENCY_BUCKETS_US: [u64; 14] =
    [10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 250_000, 1_000_000];

#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = LATENCY_BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LatencyHistogram {
        LatencyHistogram {
            counts: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// A latency histogram: `counts[i]` observations were at most `LATENCY_BUCKETS_US[i]` µs (and
/// above the previous bound); the last count is above every bound. Not cumulative.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// One count per bucket, `LATENCY_BUCKETS_US.len() + 1` of them.
    pub counts: Vec<u64>,
    /// Sum of all observations, in microseconds.
    pub sum_us: u64,
}

impl LatencyHistogram {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// A snapshot of the journal's state, for metrics.
#[derive(Debug, Clone, Default)]
pub struct JournalStats {
    /// Bytes of all segment files.
    pub bytes: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Oldest seq kept (0 if none).
    pub oldest_seq: u64,
    /// Newest seq written (readable unless retention has dropped it since; 0 if none ever).
    pub newest_seq: u64,
    /// Newest seq known to be on stable storage (fsynced).
    pub synced_seq: u64,
    /// Records accepted by `append` since open.
    pub appended: u64,
    /// Bytes waiting for the writer.
    pub pending_bytes: usize,
    /// Records dropped by retention since open.
    pub dropped_by_retention: u64,
    /// Segments dropped by retention since open.
    pub segments_dropped: u64,
    /// `append` calls refused (writer failing, backlog full, record too large) since open.
    pub append_errors: u64,
    /// Write, fsync or metadata errors of the writer since open (each retried).
    pub write_errors: u64,
    /// Bytes cut off corrupt or torn segment tails at open.
    pub recovered_truncated_bytes: u64,
    /// `history` calls answered by a scan because the in-memory index was full.
    pub history_scans: u64,
    /// Whether the writer is currently failing (appends are refused until it recovers).
    pub failing: bool,
    /// Latency of each batch `write` to a segment file.
    pub write_latency: LatencyHistogram,
    /// Latency of each `fdatasync`.
    pub fsync_latency: LatencyHistogram,
}
