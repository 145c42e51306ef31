//! The standard `process_*` metrics of the agent's own process, read from
//! `/proc/self` at each scrape (the names and meanings of the other Prometheus
//! clients' process collectors).

use procfs::process::{LimitValue, Process};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use tracing::debug;

/// Reads `/proc/self` when the metrics are encoded.
#[derive(Debug, Default)]
pub(crate) struct ProcessCollector;

/// One reading of the process's numbers.
struct Reading {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    start_time_seconds: f64,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

fn read() -> procfs::ProcResult<Reading> {
    let me = Process::myself()?;
    let stat = me.stat()?;
    let ticks = procfs::ticks_per_second() as f64;
    let boot = procfs::boot_time_secs()? as f64;
    let max_fds = me.limits().ok().map(|l| match l.max_open_files.soft_limit {
        LimitValue::Value(n) => n,
        LimitValue::Unlimited => u64::MAX,
    });
    Ok(Reading {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: stat.rss * procfs::page_size(),
        virtual_bytes: stat.vsize,
        start_time_seconds: boot + stat.starttime as f64 / ticks,
        open_fds: me.fd_count().ok().map(|n| n as u64),
        max_fds,
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = match read() {
            Ok(r) => r,
            Err(e) => {
                debug!("process metrics: cannot read /proc/self: {e}");
                return Ok(());
            }
        };
        let cpu = ConstCounter::new(r.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent in seconds",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let gauges = [
            ("process_resident_memory", "Resident memory size in bytes", Some(Unit::Bytes), Some(r.resident_bytes)),
            ("process_virtual_memory", "Virtual memory size in bytes", Some(Unit::Bytes), Some(r.virtual_bytes)),
            ("process_open_fds", "Number of open file descriptors", None, r.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors", None, r.max_fds),
        ];
        for (name, help, unit, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())?)?;
        }
        let start = ConstGauge::new(r.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time",
            "Start time of the process since unix epoch in seconds",
            Some(&Unit::Seconds),
            start.metric_type(),
        )?)?;
        Ok(())
    }
}
