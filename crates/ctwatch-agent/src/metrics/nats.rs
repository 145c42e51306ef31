//! The NATS sink's metrics, read from its [`SinkStats`] at each scrape.

use std::sync::{Arc, OnceLock};

use ctwatch_nats::SinkStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Encodes the NATS sink's stats, once there is a sink (none without `--nats-url`).
#[derive(Debug)]
pub(crate) struct NatsCollector(pub(crate) Arc<OnceLock<Arc<SinkStats>>>);

impl Collector for NatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.0.get() else { return Ok(()) };
        let gauges = [
            ("ctwatch_nats_backlog", "Journal events not yet acked by NATS JetStream", s.backlog()),
            ("ctwatch_nats_acked_seq", "The last journal seq NATS JetStream acked (0: none)", s.acked()),
            ("ctwatch_nats_connected", "1 while the NATS sink has a working session", u64::from(s.connected())),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value.min(i64::MAX as u64) as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let counters = [
            ("ctwatch_nats_published", "Events sent to NATS JetStream (re-sends included)", s.sent()),
            ("ctwatch_nats_acked", "Events NATS JetStream acked (re-sends included)", s.published()),
            (
                "ctwatch_nats_duplicates",
                "Acks saying the server already had the event (a re-send it dropped)",
                s.duplicates(),
            ),
            (
                "ctwatch_nats_failures",
                "NATS sessions that failed (each followed by a backoff and a resume)",
                s.errors(),
            ),
            ("ctwatch_nats_sessions", "NATS sessions started", s.sessions()),
            ("ctwatch_nats_gaps", "Journal events retention dropped before they were sent", s.gaps()),
            ("ctwatch_nats_kv_puts", "Container records put in the key-value bucket", s.kv_puts()),
            ("ctwatch_nats_kv_deletes", "Container keys deleted from the key-value bucket", s.kv_deletes()),
            ("ctwatch_nats_heartbeats", "Node heartbeats written to the key-value bucket", s.heartbeats()),
            ("ctwatch_nats_reconciles", "Reconciliations of the bucket with the live containers", s.reconciles()),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }
        Ok(())
    }
}
