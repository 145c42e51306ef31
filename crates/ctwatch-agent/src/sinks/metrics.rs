//! The pipeline's counters as a sink: losses the kernel source reports
//! (ring buffer drops) are copied into the metrics as they are seen.
//! Counting never blocks, so it needs no queue.
//! (Events by kind and live containers by runtime are counted by the hub as
//! it publishes, in `crate::hub`.)

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ctwatch_ebpf::EbpfStats;

use super::{Output, Sink};
use crate::metrics::Metrics;

/// Copies the kernel source's counters into the metrics.
pub struct MetricsSink {
    metrics: Arc<Metrics>,
    ebpf: Option<Arc<EbpfStats>>,
    dropped_seen: u64,
}

impl MetricsSink {
    /// A sink for `metrics`, following the eBPF source's counters when it runs.
    pub fn new(metrics: Arc<Metrics>, ebpf: Option<Arc<EbpfStats>>) -> Self {
        MetricsSink { metrics, ebpf, dropped_seen: 0 }
    }
}

impl Sink for MetricsSink {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn take(&mut self, _output: Output<'_>) {
        if let Some(stats) = &self.ebpf {
            let dropped = stats.dropped.load(Ordering::Relaxed);
            if dropped > self.dropped_seen {
                self.metrics.ring_buffer_dropped(dropped - self.dropped_seen);
                self.dropped_seen = dropped;
            }
        }
    }
}
