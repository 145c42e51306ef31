//! Bad input and missing privileges: one line on stderr, exit code 2, no panic.

mod common;

use common::*;

fn assert_clean_failure(args: &[&str], as_nobody: bool, expect: &str) {
    let bin = ctwatch_bin();
    let out = if as_nobody {
        output(
            "setpriv",
            &[&["--reuid=65534", "--regid=65534", "--clear-groups", bin.to_str().unwrap()], args].concat(),
        )
    } else {
        output(bin.to_str().unwrap(), args)
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: exit code 2, stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: one line, got: {stderr}");
    assert!(stderr.starts_with("ctwatch: "), "{stderr}");
    assert!(stderr.contains(expect), "{args:?}: {stderr:?} should mention {expect:?}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn unknown_flag() {
    assert_clean_failure(&["watch", "--bogus"], false, "--bogus");
    assert_clean_failure(&["frobnicate"], false, "frobnicate");
}

#[test]
fn bad_values() {
    assert_clean_failure(&["watch", "--grace", "soon"], false, "--grace");
    assert_clean_failure(&["watch", "--format", "xml"], false, "xml");
    assert_clean_failure(&["ls", "--log-level", "loud=="], false, "--log-level");
}

#[test]
fn no_cgroupfs_there() {
    require_root();
    assert_clean_failure(
        &["watch", "--cgroup-root", "/nonexistent/cgroup"],
        false,
        "no cgroup filesystem at /nonexistent/cgroup",
    );
    assert_clean_failure(&["ls", "--cgroup-root", "/tmp"], false, "not a cgroup filesystem");
    assert_clean_failure(&["ls", "--cgroup-root", "/etc/hostname"], false, "not a cgroup filesystem");
}

#[test]
fn not_root() {
    require_root();
    assert_clean_failure(&["watch"], true, "must run as root");
    assert_clean_failure(&["ls"], true, "must run as root");
}

#[test]
fn help_explains_and_succeeds() {
    let out = output(ctwatch_bin().to_str().unwrap(), &["watch", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--cgroup-root", "--grace", "--format", "--state-root"] {
        assert!(help.contains(flag), "watch --help mentions {flag}:\n{help}");
    }
}
