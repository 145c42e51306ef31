//! The agent's `/metrics` end to end: a real `ctwatch serve`, a real container
//! cgroup, the real `promtool check metrics`, and a real Prometheus scraping it.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::serve::{free_port, http, metric, HttpAnswer, Serve};
use common::*;
use ctwatch_api::pb;
use serde_json::Value;

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// What Prometheus 2.x sends.
const PROMETHEUS_ACCEPT: &str = "Accept: application/openmetrics-text;version=1.0.0,\
     application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// A tool from the Debian package `prometheus`; fails the test (never skips it) when missing.
fn prometheus_tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found in PATH: install it with `apt-get install -y prometheus` (scripts/setup-host.sh does)")
        })
}

/// `promtool check metrics` on `text`: its exit code and everything it printed.
fn promtool_check(text: &str) -> (i32, String) {
    let mut child = Command::new(prometheus_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), printed)
}

fn scrape_as(addr: &str, headers: &[&str]) -> HttpAnswer {
    let answer = http(addr, "GET", "/metrics", headers);
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer
}

/// The families a text-format exposition declares: (name, type) from its TYPE lines.
fn typed_families(text: &str) -> Vec<(&str, &str)> {
    text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' ')).collect()
}

#[test]
fn metrics_pass_promtool_negotiate_the_format_and_exist_from_the_start() {
    require_root();
    prometheus_tool("promtool");
    let addr = format!("127.0.0.1:{}", free_port());
    let serve = Serve::start(&["--metrics-addr", &addr]);

    // Right after start: every series that can be known in advance is there, at 0.
    let first = scrape_as(&addr, &[]);
    for series in [
        "ctwatch_events_total{kind=\"container_policy_violation\"}",
        "ctwatch_events_total{kind=\"container_precreate\"}",
        "ctwatch_enrichment_failures_total{runtime=\"garden\"}",
        "ctwatch_enrichment_duration_seconds_count{runtime=\"crio\"}",
        "ctwatch_api_requests_total{method=\"ResolvePath\",code=\"OK\"}",
        "ctwatch_api_requests_total{method=\"Watch\",code=\"OK\"}",
        "ctwatch_api_requests_total{method=\"Get\",code=\"NOT_FOUND\"}",
        "ctwatch_api_requests_total{method=\"List\",code=\"INVALID_ARGUMENT\"}",
        "ctwatch_containers{runtime=\"garden\"}",
    ] {
        assert_eq!(metric(&first.body, &format!("{series} ")), Some(0.0), "{series} in\n{}", first.body);
    }
    for kind in ["container_create", "container_remove", "existing_container", "container_update"] {
        let series = format!("ctwatch_events_total{{kind=\"{kind}\"}} ");
        assert!(metric(&first.body, &series).is_some(), "{series} in\n{}", first.body);
    }

    // A container comes and goes (a real cgroup mkdir/rmdir), and a Get of a missing ID.
    let mut tree = CgroupTree::new();
    let id = hex_id(&unique("metrics"));
    let dir = tree.mkdir_p(&default_hierarchy(), &format!("docker/{id}"));
    let before = |text: &str, kind: &str| metric(text, &format!("ctwatch_events_total{{kind=\"{kind}\"}} ")).unwrap();
    let (creates, removes) = (before(&first.body, "container_create"), before(&first.body, "container_remove"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while before(&scrape_as(&addr, &[]).body, "container_create") <= creates {
        assert!(Instant::now() < deadline, "container_create never counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    tree.rmdir(&dir);
    while before(&scrape_as(&addr, &[]).body, "container_remove") <= removes {
        assert!(Instant::now() < deadline, "container_remove never counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let missing = rt.block_on(async {
        let mut client = serve.client().await;
        client.get(pb::GetRequest { id: hex_id(&unique("metrics-missing")) }).await
    });
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);

    // The text format (no Accept, and an explicit one): what its header says, promtool-clean.
    let text = scrape_as(&addr, &[]);
    assert_eq!(text.header("content-type"), Some(TEXT));
    let explicit = scrape_as(&addr, &["Accept: text/plain;version=0.0.4"]);
    assert_eq!(explicit.header("content-type"), Some(TEXT));
    let (code, printed) = promtool_check(&text.body);
    assert_eq!((code, printed.as_str()), (0, ""), "promtool check metrics on\n{}", text.body);
    let body = &text.body;
    assert!(!body.contains("# EOF") && !body.contains("# UNIT") && !body.contains("_created"), "{body}");
    assert!(metric(body, "ctwatch_api_requests_total{method=\"Get\",code=\"NOT_FOUND\"} ").unwrap() >= 1.0, "{body}");
    assert!(!body.contains("code=\"NotFound\"") && !body.contains("code=\"Ok\""), "{body}");
    // Every family: HELP then TYPE under the same name; counters named with _total.
    let families = typed_families(body);
    let helps: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("# HELP ")?.split(' ').next()).collect();
    assert_eq!(helps, families.iter().map(|(n, _)| *n).collect::<Vec<_>>(), "{body}");
    for (name, kind) in &families {
        assert_ne!(*kind, "untyped", "{name}");
        assert_eq!(*kind == "counter", name.ends_with("_total"), "{name} {kind}");
    }
    for (name, kind) in [
        ("ctwatch_events_total", "counter"),
        ("ctwatch_build_info", "gauge"),
        ("ctwatch_enrichment_duration_seconds", "histogram"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert!(families.contains(&(name, kind)), "# TYPE {name} {kind} in\n{body}");
    }
    let build = format!("ctwatch_build_info{{version=\"{}\",", env!("CARGO_PKG_VERSION"));
    assert!(body.lines().any(|l| l.starts_with(&build) && l.ends_with("} 1")), "{body}");
    let started = metric(body, "process_start_time_seconds ").unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(started > now - 600.0 && started <= now + 1.0, "process_start_time_seconds {started}, now {now}");
    assert!(
        metric(body, "process_open_fds ").unwrap() > 0.0
            && metric(body, "process_resident_memory_bytes ").unwrap() > 0.0
    );

    // OpenMetrics when asked for (as Prometheus asks), with its own metadata.
    for accept in [PROMETHEUS_ACCEPT, "Accept: application/openmetrics-text"] {
        let om = scrape_as(&addr, &[accept]);
        assert_eq!(om.header("content-type"), Some(OPENMETRICS), "{accept}");
        assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
        for line in [
            "# TYPE ctwatch_events counter",
            "# TYPE ctwatch_build info",
            "# UNIT ctwatch_enrichment_duration_seconds seconds",
            "# TYPE process_cpu_seconds counter",
        ] {
            assert!(om.body.lines().any(|l| l == line), "{line} in\n{}", om.body);
        }
        assert!(om.body.contains("ctwatch_events_total{kind=\"container_create\"} "), "{}", om.body);
    }

    // HEAD: the headers, no body; other paths 404; other methods 405.
    let head = http(&addr, "HEAD", "/metrics", &[]);
    assert_eq!((head.status, head.header("content-type"), head.body.as_str()), (200, Some(TEXT), ""));
    let head_om = http(&addr, "HEAD", "/metrics", &["Accept: application/openmetrics-text"]);
    assert_eq!((head_om.status, head_om.header("content-type")), (200, Some(OPENMETRICS)));
    assert_eq!(http(&addr, "GET", "/nope", &[]).status, 404);
    assert_eq!(http(&addr, "GET", "/metrics/x", &[]).status, 404);
    let post = http(&addr, "POST", "/metrics", &["Content-Length: 0"]);
    assert_eq!(post.status, 405);
    assert!(post.header("allow").is_some_and(|a| a.contains("GET")), "{:?}", post.headers);
    drop(serve);
}

/// Reads `url` (a Prometheus API path) from `addr` as JSON.
fn api(addr: &str, path: &str) -> Value {
    let answer = http(addr, "GET", path, &[]);
    assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", answer.body))
}

/// Kills the Prometheus server when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_the_agent_and_types_its_metrics() {
    require_root();
    let prometheus = prometheus_tool("prometheus");
    let addr = format!("127.0.0.1:{}", free_port());
    let serve = Serve::start(&["--no-enrich", "--metrics-addr", &addr]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: ctwatch\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let _prometheus = Killed(child);

    // Until a scrape has stored the agent's series, the target is up, and the metadata is in.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (target, metadata) = loop {
        let ready = std::net::TcpStream::connect(&web).is_ok();
        if ready {
            let targets = api(&web, "/api/v1/targets");
            let target = targets["data"]["activeTargets"].as_array().and_then(|t| t.first()).cloned();
            let metadata = api(&web, "/api/v1/metadata");
            if let Some(target) = target.filter(|t| t["health"] == "up") {
                if metadata["data"].as_object().is_some_and(|m| m.keys().any(|k| k.starts_with("ctwatch_events"))) {
                    break (target, metadata);
                }
            }
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped the agent");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(target["lastError"], "", "{target}");
    // Prometheus asks for OpenMetrics, where a counter's family has no _total.
    let data = &metadata["data"];
    let kind = |name: &str| data[name][0]["type"].as_str().map(str::to_string);
    assert_eq!(kind("ctwatch_events").as_deref(), Some("counter"), "{metadata}");
    assert_eq!(kind("process_cpu_seconds").as_deref(), Some("counter"), "{metadata}");
    assert_eq!(kind("ctwatch_containers").as_deref(), Some("gauge"), "{metadata}");
    assert_eq!(kind("ctwatch_enrichment_duration_seconds").as_deref(), Some("histogram"), "{metadata}");
    assert_eq!(data["ctwatch_events"][0]["help"], "Events published, by kind.", "{metadata}");
    // And the samples are stored under their real names.
    let query = api(&web, "/api/v1/query?query=ctwatch_events_total%7Bkind%3D%22container_policy_violation%22%7D");
    let result = &query["data"]["result"];
    assert_eq!(result.as_array().map(Vec::len), Some(1), "{query}");
    assert_eq!(result[0]["value"][1], "0", "{query}");
    drop(serve);
}

#[test]
fn nats_sink_metrics_pass_promtool_and_show_the_backlog() {
    require_root();
    prometheus_tool("promtool");
    // A NATS that is not up: the sink's metrics are there, the backlog grows.
    let store = tempfile::tempdir().unwrap();
    let mut nats = ctwatch_nats::testing::NatsServer::not_started(store.path()).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut tree = CgroupTree::new();
    let root = tree.mkdir_p(&default_hierarchy(), &unique("metrics-nats"));
    let serve = Serve::start(&[
        "--no-enrich",
        "--cgroup-root",
        root.to_str().unwrap(),
        "--metrics-addr",
        &addr,
        "--nats-url",
        &nats.url(),
        "--node-name",
        "metrics-node",
    ]);
    tree.mkdir_p(&root, &format!("docker/{}", hex_id(&unique("metrics-nats"))));
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&scrape_as(&addr, &[]).body, "ctwatch_nats_backlog ") != Some(1.0) {
        assert!(Instant::now() < deadline, "no backlog of 1 in\n{}", scrape_as(&addr, &[]).body);
        std::thread::sleep(Duration::from_millis(100));
    }
    let down = scrape_as(&addr, &[]).body;
    let (code, printed) = promtool_check(&down);
    assert_eq!((code, printed.as_str()), (0, ""), "promtool check metrics on\n{down}");
    let families = typed_families(&down);
    for (name, kind) in [
        ("ctwatch_nats_backlog", "gauge"),
        ("ctwatch_nats_acked_seq", "gauge"),
        ("ctwatch_nats_connected", "gauge"),
        ("ctwatch_nats_published_total", "counter"),
        ("ctwatch_nats_acked_total", "counter"),
        ("ctwatch_nats_failures_total", "counter"),
        ("ctwatch_nats_duplicates_total", "counter"),
    ] {
        assert!(families.contains(&(name, kind)), "# TYPE {name} {kind} in\n{down}");
    }
    assert_eq!(metric(&down, "ctwatch_nats_connected "), Some(0.0));
    assert_eq!(metric(&down, "ctwatch_nats_acked_total "), Some(0.0));
    // NATS comes up: the backlog is sent and acked.
    nats.restart().unwrap();
    while metric(&scrape_as(&addr, &[]).body, "ctwatch_nats_backlog ") != Some(0.0) {
        assert!(Instant::now() < deadline + Duration::from_secs(30), "the backlog was never sent");
        std::thread::sleep(Duration::from_millis(100));
    }
    let up = scrape_as(&addr, &[]).body;
    assert_eq!(metric(&up, "ctwatch_nats_connected "), Some(1.0), "{up}");
    assert_eq!(metric(&up, "ctwatch_nats_acked_seq "), metric(&up, "ctwatch_journal_newest_seq "), "{up}");
    assert!(metric(&up, "ctwatch_nats_acked_total ").unwrap() >= 1.0, "{up}");
    assert!(metric(&up, "ctwatch_nats_published_total ").unwrap() >= 1.0, "{up}");
    assert!(metric(&up, "ctwatch_nats_failures_total ").unwrap() >= 1.0, "{up}");
    let (code, printed) = promtool_check(&up);
    assert_eq!((code, printed.as_str()), (0, ""), "promtool check metrics on\n{up}");
    drop(serve);
}
