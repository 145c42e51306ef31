//! Clients nobody here wrote: a stock Python grpcio client generated from
//! `proto/` (no channel options), the standard health service and server
//! reflection, and `ctwatch health` as a probe would run it.

mod common;

use std::path::Path;
use std::process::Command;

use common::serve::Serve;
use common::*;
use serde_json::Value;

/// The Python of the venv that scripts/setup-host.sh fills with grpcio (Debian's own is externally managed).
const PYTHON: &str = "/var/lib/ctwatch-test/venv/bin/python3";

/// Generates the Python modules of `proto/` with grpcio-tools into `dir`.
fn generate_python(dir: &Path) {
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let out = Command::new(PYTHON)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", dir.display()))
        .arg(format!("--grpc_python_out={}", dir.display()))
        .arg("ctwatch/v1/ctwatch.proto")
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "grpc_tools.protoc failed (scripts/setup-host.sh installs grpcio-tools): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_stock_python_client_uses_every_method_over_the_unix_socket() {
    require_root();
    let serve = Serve::start(&["--no-enrich"]);
    let generated = tempfile::tempdir().unwrap();
    generate_python(generated.path());
    let id = hex_id(&unique("py"));
    let cgroup = default_hierarchy().join("docker").join(&id);
    std::fs::create_dir_all(cgroup.parent().unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/stock_client.py");
    let out = Command::new(PYTHON)
        .arg(&script)
        .arg(generated.path())
        .arg(&serve.socket)
        .arg(&cgroup)
        .arg(&id)
        .output()
        .expect("python3 runs");
    let _ = std::fs::remove_dir(&cgroup);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the Python client failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();

    // Both spellings of a unix target, with grpc's default :authority.
    assert_eq!(seen["list_ok"].as_array().unwrap().len(), 2, "{seen}");
    assert_eq!(seen["health"]["(server)"], "SERVING", "{seen}");
    assert_eq!(seen["health"]["ctwatch.v1.Containers"], "SERVING", "{seen}");
    assert_eq!(seen["unknown_service"], "NOT_FOUND", "{seen}");
    let services: Vec<&str> = seen["services"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    for service in ["ctwatch.v1.Containers", "grpc.health.v1.Health"] {
        assert!(services.contains(&service), "reflection lists {service}: {services:?}");
    }
    assert!(seen["descriptor_files"].as_u64().unwrap() >= 1, "{seen}");
    assert_eq!(seen["events"], serde_json::json!(["container_create", "container_remove"]), "{seen}");
    assert_eq!(seen["get"]["container_id"], id.as_str());
    assert_eq!(seen["get"]["runtime"], "docker");
    assert_eq!(seen["missing"], "NOT_FOUND");
}

#[test]
fn ctwatch_health_is_a_probe() {
    require_root();
    let serve = Serve::start(&["--no-enrich"]);
    let health = |extra: &[&str]| {
        Command::new(ctwatch_bin()).arg("health").arg("--socket").arg(&serve.socket).args(extra).output().unwrap()
    };
    let ok = health(&[]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "SERVING");
    let ok = health(&["--service", "ctwatch.v1.Containers"]);
    assert_eq!(ok.status.code(), Some(0));
    let unknown = health(&["--service", "no.such.Service"]);
    assert_eq!(unknown.status.code(), Some(2), "an unknown service is an error");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("NotFound"));
    let missing =
        Command::new(ctwatch_bin()).args(["health", "--socket", "/nonexistent/ctwatch.sock"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/ctwatch.sock"));
}
