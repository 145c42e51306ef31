//! The journal's metrics, read from [`ctwatch_journal::Journal::stats`] at
//! each scrape (appending costs the event path nothing for them).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use ctwatch_journal::{Journal, LatencyHistogram, LATENCY_BUCKETS_US};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Encodes the journal's stats, once there is a journal (or that it could not
/// be opened).
#[derive(Debug)]
pub(crate) struct JournalCollector {
    /// The journal, once the agent has it.
    pub(crate) journal: Arc<OnceLock<Arc<Journal>>>,
    /// Set when the journal could not be opened.
    pub(crate) open_failed: Arc<AtomicBool>,
}

/// A latency histogram of the journal as a Prometheus histogram in seconds.
#[derive(Debug)]
struct ConstHistogram<'a>(&'a LatencyHistogram);

impl EncodeMetric for ConstHistogram<'_> {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = LATENCY_BUCKETS_US.iter().map(|&us| us as f64 / 1e6).chain(std::iter::once(f64::MAX));
        let buckets: Vec<(f64, u64)> = bounds.zip(self.0.counts.iter().copied()).collect();
        encoder.encode_histogram::<NoLabelSet>(self.0.sum_us as f64 / 1e6, self.0.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for JournalCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(journal) = self.journal.get() else {
            if self.open_failed.load(Ordering::Relaxed) {
                // No journal: say it is failing, and why (it could not be opened).
                let gauge = ConstGauge::new(1i64);
                gauge.encode(encoder.encode_descriptor(
                    "ctwatch_journal_failing",
                    "1 while the journal's writer is failing",
                    None,
                    gauge.metric_type(),
                )?)?;
                let counter = ConstCounter::new(1u64);
                counter.encode(encoder.encode_descriptor(
                    "ctwatch_journal_open_errors",
                    "1 if the journal could not be opened (the agent runs without one)",
                    None,
                    counter.metric_type(),
                )?)?;
            }
            return Ok(());
        };
        let s = journal.stats();
        let gauges = [
            ("ctwatch_journal", "Bytes of the journal's segment files", Some(Unit::Bytes), s.bytes),
            ("ctwatch_journal_oldest_seq", "Oldest seq the journal keeps (0: none)", None, s.oldest_seq),
            ("ctwatch_journal_newest_seq", "Newest seq the journal wrote (0: none)", None, s.newest_seq),
            ("ctwatch_journal_synced_seq", "Newest seq known to be on stable storage", None, s.synced_seq),
            ("ctwatch_journal_failing", "1 while the journal's writer is failing", None, u64::from(s.failing)),
        ];
        for (name, help, unit, value) in gauges {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())?)?;
        }
        let counters = [
            ("ctwatch_journal_appended", "Events appended to the journal since start", s.appended),
            (
                "ctwatch_journal_dropped_by_retention",
                "Events the journal's retention dropped since start",
                s.dropped_by_retention,
            ),
            (
                "ctwatch_journal_append_errors",
                "Events the journal refused (they went out live without seq)",
                s.append_errors,
            ),
            ("ctwatch_journal_write_errors", "Journal write, fsync or metadata errors (each retried)", s.write_errors),
            (
                "ctwatch_journal_recovered_truncated",
                "Bytes cut off torn or corrupt journal tails at open",
                s.recovered_truncated_bytes,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }
        for (name, help, h) in [
            ("ctwatch_journal_write", "Latency of each batch write to a journal segment", &s.write_latency),
            ("ctwatch_journal_fsync", "Latency of each journal fdatasync", &s.fsync_latency),
        ] {
            let h = ConstHistogram(h);
            h.encode(encoder.encode_descriptor(name, help, Some(&Unit::Seconds), h.metric_type())?)?;
        }
        Ok(())
    }
}
