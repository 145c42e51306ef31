//! The agent's Prometheus metrics, encoded as OpenMetrics or as the
//! Prometheus text format (0.0.4), whichever the scraper asks for.

mod journal;
mod nats;
mod process;
mod text_format;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ctwatch::{Container, EventKind, Runtime};
use ctwatch_hook::HookStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// An exposition format, with the `Content-Type` it is served under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4 (what Prometheus reads by default).
    Text,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` header for this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuntimeLabel {
    runtime: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

/// The `class` labels of `ctwatch_containers_by_privilege`: the
/// [`ctwatch_security::PrivilegeClass`] names, then `unknown` (no security profile read).
const PRIVILEGE_CLASSES: [&str; 5] = ["privileged", "elevated", "baseline", "restricted", "unknown"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReaderLabel {
    reader: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    arch: &'static str,
    os: &'static str,
}

/// The event kinds, in the order of `Metrics::events_by_kind`.
const KINDS: [EventKind; 7] = [
    EventKind::ContainerCreate,
    EventKind::ContainerRemove,
    EventKind::ExistingContainer,
    EventKind::ContainerUpdate,
    EventKind::ContainerPrecreate,
    EventKind::ContainerPolicyViolation,
    EventKind::ContainerStart,
];

/// Every metric the agent keeps.
pub struct Metrics {
    registry: Registry,
    enrichment_seconds: Family<RuntimeLabel, Histogram>,
    enrichment_failures: Family<RuntimeLabel, Counter>,
    ring_buffer_dropped: Counter,
    resyncs: Counter,
    queue_overflows: Family<QueueLabel, Counter>,
    source_fallbacks: Counter,
    process_events_unavailable: Counter,
    api_requests: Family<RequestLabels, Counter>,
    subscribers: Gauge,
    subscribers_dropped: Counter,
    namespace_cache_evictions: Counter,
    hook_answer_seconds: Histogram,
    hook_execs: Counter,
    hook_denied: Counter,
    hook_deadline_answers: Counter,
    hook_unreadable_argv: Counter,
    /// Runtime execs whose argv came from eBPF, and from /proc.
    hook_argv_reads: [Counter; 2],
    /// The hook's own counters, read when the metrics are encoded.
    hook_stats: OnceLock<Arc<HookStats>>,
    /// Their values as last copied into the counters above.
    hook_seen: Mutex<[u64; 6]>,
    /// The per-kind and per-runtime series, made once (no label allocation per event).
    events_by_kind: [Counter; 7],
    containers_by_runtime: [Gauge; Runtime::ALL.len()],
    /// Live containers by privilege class ([`PRIVILEGE_CLASSES`]).
    containers_by_privilege: [Gauge; PRIVILEGE_CLASSES.len()],
    /// Serialises encoding (the registry is read-only after setup).
    encode_lock: Mutex<()>,
    /// The journal, whose own stats are read when the metrics are encoded.
    journal: Arc<OnceLock<Arc<ctwatch_journal::Journal>>>,
    /// Set when the journal could not be opened (the agent runs without one).
    journal_open_failed: Arc<std::sync::atomic::AtomicBool>,
    /// The NATS sink, whose own stats are read when the metrics are encoded.
    nats: Arc<OnceLock<Arc<ctwatch_nats::SinkStats>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn runtime_label(runtime: Runtime) -> RuntimeLabel {
    RuntimeLabel { runtime: runtime.as_str() }
}

impl Metrics {
    /// A fresh set of metrics, all zero: every labelled series that can be
    /// known in advance (per runtime, per event kind) exists from the start.
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let journal = Arc::new(OnceLock::new());
        let journal_open_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        root.register_collector(Box::new(journal::JournalCollector {
            journal: journal.clone(),
            open_failed: journal_open_failed.clone(),
        }));
        let nats = Arc::new(OnceLock::new());
        root.register_collector(Box::new(nats::NatsCollector(nats.clone())));
        let registry = root.sub_registry_with_prefix("ctwatch");
        registry.register(
            "build",
            "ctwatch's version and build target",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                arch: std::env::consts::ARCH,
                os: std::env::consts::OS,
            }),
        );
        let containers = Family::<RuntimeLabel, Gauge>::default();
        registry.register("containers", "Live containers tracked, by runtime", containers.clone());
        let events = Family::<KindLabel, Counter>::default();
        registry.register("events", "Events published, by kind", events.clone());
        let enrichment_seconds = Family::<RuntimeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register_with_unit(
            "enrichment_duration",
            "Time from a container's create to its runtime's complete answer, by runtime",
            Unit::Seconds,
            enrichment_seconds.clone(),
        );
        let enrichment_failures = Family::<RuntimeLabel, Counter>::default();
        registry.register(
            "enrichment_failures",
            "Enrichment answers that were incomplete (a runtime down or too slow), by runtime",
            enrichment_failures.clone(),
        );
        let ring_buffer_dropped = Counter::<u64, AtomicU64>::default();
        registry.register(
            "ring_buffer_dropped",
            "eBPF records the kernel could not put in the ring buffer (repaired by a rescan)",
            ring_buffer_dropped.clone(),
        );
        let resyncs = Counter::<u64, AtomicU64>::default();
        registry.register("resyncs", "Rescans of cgroupfs made to repair lost kernel events", resyncs.clone());
        let queue_overflows = Family::<QueueLabel, Counter>::default();
        registry.register(
            "queue_overflows",
            "Items a bounded queue or table of the pipeline could not take, by queue (each repaired as its overflow policy says)",
            queue_overflows.clone(),
        );
        let source_fallbacks = Counter::<u64, AtomicU64>::default();
        registry.register(
            "source_fallbacks",
            "Times the kernel source ended and the agent fell back to inotify (--source auto)",
            source_fallbacks.clone(),
        );
        let process_events_unavailable = Counter::<u64, AtomicU64>::default();
        registry.register(
            "process_events_unavailable",
            "Times the eBPF process events could not load with the eBPF source (starts and exits then come from /proc, the hook and the runtimes)",
            process_events_unavailable.clone(),
        );
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register("api_requests", "API requests, by method and gRPC status code", api_requests.clone());
        let subscribers = Gauge::default();
        registry.register("subscribers", "Event subscribers connected (Watch streams included)", subscribers.clone());
        let subscribers_dropped = Counter::<u64, AtomicU64>::default();
        registry.register(
            "subscribers_dropped",
            "Subscribers dropped because they fell too far behind",
            subscribers_dropped.clone(),
        );
        let namespace_cache_evictions = Counter::<u64, AtomicU64>::default();
        registry.register(
            "namespace_cache_evictions",
            "Containers' namespaces let go from the full namespace cache (read from /proc again when next asked)",
            namespace_cache_evictions.clone(),
        );
        let hook_answer_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register_with_unit(
            "hook_answer_duration",
            "How long the runtime hook held a container create's runtime exec before answering",
            Unit::Seconds,
            hook_answer_seconds.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::<u64, AtomicU64>::default();
            registry.register(name, help, c.clone());
            c
        };
        let hook_execs = counter(registry, "hook_execs", "Runtime execs the hook held and answered");
        let hook_denied = counter(registry, "hook_denied", "Container creates the hook's policy refused");
        let hook_deadline_answers = counter(
            registry,
            "hook_deadline_answers",
            "Runtime execs answered by the deadline because ctwatch was too slow",
        );
        let hook_unreadable_argv = counter(
            registry,
            "hook_unreadable_argv",
            "Runtime execs whose arguments could not be read (answered with the default)",
        );
        let argv_reads = Family::<ReaderLabel, Counter>::default();
        registry.register(
            "hook_argv_reads",
            "Runtime execs whose arguments the hook took from the eBPF capture (reader=ebpf) or read from /proc (reader=proc)",
            argv_reads.clone(),
        );
        let hook_argv_reads = ["ebpf", "proc"].map(|reader| argv_reads.get_or_create(&ReaderLabel { reader }).clone());
        let events_by_kind = KINDS.map(|k| events.get_or_create(&KindLabel { kind: k.as_str() }).clone());
        let containers_by_runtime = Runtime::ALL.map(|r| containers.get_or_create(&runtime_label(r)).clone());
        let by_privilege = Family::<ClassLabel, Gauge>::default();
        registry.register(
            "containers_by_privilege",
            "Live containers by privilege class (privileged, elevated, baseline, restricted; unknown: no OCI config read)",
            by_privilege.clone(),
        );
        let containers_by_privilege =
            PRIVILEGE_CLASSES.map(|class| by_privilege.get_or_create(&ClassLabel { class }).clone());
        for r in Runtime::ALL {
            let _ = enrichment_seconds.get_or_create(&runtime_label(r));
            let _ = enrichment_failures.get_or_create(&runtime_label(r));
        }
        Metrics {
            events_by_kind,
            containers_by_runtime,
            containers_by_privilege,
            registry: root,
            enrichment_seconds,
            enrichment_failures,
            ring_buffer_dropped,
            resyncs,
            queue_overflows,
            source_fallbacks,
            process_events_unavailable,
            api_requests,
            subscribers,
            subscribers_dropped,
            namespace_cache_evictions,
            hook_answer_seconds,
            hook_execs,
            hook_denied,
            hook_deadline_answers,
            hook_unreadable_argv,
            hook_argv_reads,
            hook_stats: OnceLock::new(),
            hook_seen: Mutex::new([0; 6]),
            encode_lock: Mutex::new(()),
            journal,
            journal_open_failed,
            nats,
        }
    }

    /// Counts a published event.
    pub fn event(&self, kind: EventKind) {
        if let Some(i) = KINDS.iter().position(|k| *k == kind) {
            self.events_by_kind[i].inc();
        }
    }

    /// One more live container of `runtime`.
    pub fn container_seen(&self, runtime: Runtime) {
        self.runtime_gauge(runtime).inc();
    }

    /// One live container of `runtime` fewer.
    pub fn container_gone(&self, runtime: Runtime) {
        self.runtime_gauge(runtime).dec();
    }

    /// One more live container of `c`'s privilege class.
    pub fn privilege_seen(&self, c: &Container) {
        self.privilege_gauge(c).inc();
    }

    /// One live container of `c`'s privilege class fewer.
    pub fn privilege_gone(&self, c: &Container) {
        self.privilege_gauge(c).dec();
    }

    fn privilege_gauge(&self, c: &Container) -> &Gauge {
        let class = c.security.as_deref().map_or("unknown", |p| p.privilege_class().as_str());
        let i = PRIVILEGE_CLASSES.iter().position(|k| *k == class).unwrap_or(PRIVILEGE_CLASSES.len() - 1);
        &self.containers_by_privilege[i]
    }

    fn runtime_gauge(&self, runtime: Runtime) -> &Gauge {
        let i = Runtime::ALL.iter().position(|r| *r == runtime).unwrap_or(Runtime::ALL.len() - 1);
        &self.containers_by_runtime[i]
    }

    /// A complete enrichment answer after `elapsed`.
    pub fn enrichment_done(&self, runtime: Runtime, elapsed: Duration) {
        self.enrichment_seconds.get_or_create(&runtime_label(runtime)).observe(elapsed.as_secs_f64());
    }

    /// An incomplete enrichment answer.
    pub fn enrichment_failed(&self, runtime: Runtime) {
        self.enrichment_failures.get_or_create(&runtime_label(runtime)).inc();
    }

    /// `n` more records lost by the ring buffer.
    pub fn ring_buffer_dropped(&self, n: u64) {
        self.ring_buffer_dropped.inc_by(n);
    }

    /// One more rescan.
    pub fn resync(&self) {
        self.resyncs.inc();
    }

    /// `n` items the bounded queue or table `queue` could not take.
    pub fn queue_overflow(&self, queue: &'static str, n: u64) {
        self.queue_overflows.get_or_create(&QueueLabel { queue }).inc_by(n);
    }

    /// How many items `queue` could not take so far.
    pub fn queue_overflows(&self, queue: &'static str) -> u64 {
        self.queue_overflows.get_or_create(&QueueLabel { queue }).get()
    }

    /// The kernel source ended and inotify took over.
    pub fn source_fallback(&self) {
        self.source_fallbacks.inc();
    }

    /// The eBPF process events could not load.
    pub fn process_events_unavailable(&self) {
        self.process_events_unavailable.inc();
    }

    /// An API request answered with gRPC status `code` (its canonical name: `OK`, `NOT_FOUND`...).
    pub fn api_request(&self, method: &'static str, code: &'static str) {
        self.api_requests.get_or_create(&RequestLabels { method, code }).inc();
    }

    /// Makes the series of `method` answered with `code` exist (at 0) before any such request.
    pub fn expect_api_request(&self, method: &'static str, code: &'static str) {
        let _ = self.api_requests.get_or_create(&RequestLabels { method, code });
    }

    /// One more subscriber connected.
    pub fn subscriber_joined(&self) {
        self.subscribers.inc();
    }

    /// A subscriber went away (hung up, was dropped, or the agent stopped).
    pub fn subscriber_left(&self) {
        self.subscribers.dec();
    }

    /// `n` containers were let go from the full namespace cache.
    pub fn namespace_cache_evicted(&self, n: u64) {
        self.namespace_cache_evictions.inc_by(n);
    }

    /// `n` subscribers were dropped for falling behind.
    pub fn subscribers_dropped(&self, n: usize) {
        self.subscribers_dropped.inc_by(n as u64);
    }

    /// The hook held a create's runtime exec for `held` before answering it.
    pub fn hook_create_answered(&self, held: Duration) {
        self.hook_answer_seconds.observe(held.as_secs_f64());
    }

    /// Reports the runtime hook's counters from now on (read at each encode,
    /// so counting costs the event path nothing).
    pub fn follow_hook(&self, stats: Arc<HookStats>) {
        let _ = self.hook_stats.set(stats);
    }

    /// Reports the journal's stats from now on (read at each encode).
    pub fn follow_journal(&self, journal: Arc<ctwatch_journal::Journal>) {
        let _ = self.journal.set(journal);
    }

    /// Records that the journal could not be opened: the agent runs without
    /// one (`ctwatch_journal_failing` 1, `ctwatch_journal_open_errors_total` 1).
    pub fn journal_open_failed(&self) {
        self.journal_open_failed.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reports the NATS sink's stats from now on (read at each encode).
    pub fn follow_nats(&self, stats: Arc<ctwatch_nats::SinkStats>) {
        let _ = self.nats.set(stats);
    }

    /// Brings the hook counters up to the hook's own.
    fn sync_hook(&self) {
        let Some(stats) = self.hook_stats.get() else { return };
        let now = [
            &stats.events,
            &stats.denied,
            &stats.deadline_answers,
            &stats.unreadable,
            &stats.argv_from_ebpf,
            &stats.argv_from_proc,
        ]
        .map(|c| c.load(Ordering::Relaxed));
        let mut seen = self.hook_seen.lock().unwrap_or_else(|e| e.into_inner());
        let counters = [
            &self.hook_execs,
            &self.hook_denied,
            &self.hook_deadline_answers,
            &self.hook_unreadable_argv,
            &self.hook_argv_reads[0],
            &self.hook_argv_reads[1],
        ];
        for ((counter, now), seen) in counters.into_iter().zip(now).zip(seen.iter_mut()) {
            counter.inc_by(now.saturating_sub(*seen));
            *seen = now;
        }
    }

    /// Everything, in `format`.
    pub fn encode(&self, format: Format) -> String {
        let _guard = self.encode_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.sync_hook();
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        match format {
            Format::OpenMetrics => {
                let _ = prometheus_client::encoding::text::encode_eof(&mut out);
                out
            }
            Format::Text => text_format::from_openmetrics(&out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_counters_follow_the_hooks_own() {
        let metrics = Metrics::new();
        let stats = Arc::new(HookStats::default());
        metrics.follow_hook(stats.clone());
        stats.events.store(5, Ordering::Relaxed);
        stats.denied.store(1, Ordering::Relaxed);
        metrics.encode(Format::Text);
        stats.events.store(9, Ordering::Relaxed);
        stats.deadline_answers.store(2, Ordering::Relaxed);
        stats.unreadable.store(1, Ordering::Relaxed);
        stats.argv_from_ebpf.store(7, Ordering::Relaxed);
        stats.argv_from_proc.store(2, Ordering::Relaxed);
        metrics.hook_create_answered(Duration::from_micros(300));
        let text = metrics.encode(Format::Text);
        for line in [
            "ctwatch_hook_execs_total 9",
            "ctwatch_hook_denied_total 1",
            "ctwatch_hook_deadline_answers_total 2",
            "ctwatch_hook_unreadable_argv_total 1",
            "ctwatch_hook_argv_reads_total{reader=\"ebpf\"} 7",
            "ctwatch_hook_argv_reads_total{reader=\"proc\"} 2",
            "ctwatch_hook_answer_duration_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn zero_series_help_build_info_and_process_metrics_from_the_start() {
        let metrics = Metrics::new();
        metrics.expect_api_request("Get", "OK");
        let text = metrics.encode(Format::Text);
        for line in [
            "ctwatch_events_total{kind=\"container_create\"} 0",
            "ctwatch_events_total{kind=\"container_policy_violation\"} 0",
            "ctwatch_containers{runtime=\"podman\"} 0",
            "ctwatch_containers_by_privilege{class=\"privileged\"} 0",
            "ctwatch_containers_by_privilege{class=\"unknown\"} 0",
            "ctwatch_enrichment_failures_total{runtime=\"docker\"} 0",
            "ctwatch_enrichment_duration_seconds_count{runtime=\"containerd\"} 0",
            "ctwatch_api_requests_total{method=\"Get\",code=\"OK\"} 0",
            "# TYPE ctwatch_events_total counter",
            "# TYPE ctwatch_build_info gauge",
            "# TYPE process_cpu_seconds_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let build = format!("ctwatch_build_info{{version=\"{}\",", env!("CARGO_PKG_VERSION"));
        assert!(text.lines().any(|l| l.starts_with(&build) && l.ends_with("} 1")), "{text}");
        for name in [
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            let value: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} in\n{text}"));
            assert!(value > 0.0, "{name} {value}");
        }
        // Every family has HELP and TYPE, under the same name; no OpenMetrics-only lines.
        let helps: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# HELP ")?.split(' ').next()).collect();
        let types: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        assert_eq!(helps, types);
        assert!(!text.contains("# EOF") && !text.contains("# UNIT") && !text.contains("_created"), "{text}");

        let om = metrics.encode(Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"), "{om}");
        for line in [
            "# TYPE ctwatch_events counter",
            "# TYPE ctwatch_build info",
            "# UNIT ctwatch_enrichment_duration_seconds seconds",
            "# UNIT process_cpu_seconds seconds",
        ] {
            assert!(om.lines().any(|l| l == line), "{line} in\n{om}");
        }
    }
}
