//! Issue 17 against the real runtimes: the `security` profile ctwatch derives
//! from the config.json each runtime wrote equals what the runtime itself says
//! (`docker inspect`, `podman inspect`, containerd's stored spec), and the
//! Pod Security Standards in the hook's policy refuse what they must (enforce)
//! while `ctwatch check` on the saved configs gives the hook's verdicts.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::Value;

const DOCKER: &str = "/usr/bin/docker";
const IMAGE: &str = "local/busybox:1";
const TASKS: &str = "/run/containerd/io.containerd.runtime.v2.task";

/// Removes a Docker container when dropped.
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = output(DOCKER, &["rm", "-f", &self.0]);
    }
}

/// `docker create ARGS IMAGE sleep 120` then `docker start`; see [`docker_create_with_image`].
fn docker_create_start(name: &str, args: &[&str]) -> (String, bool, String, Vec<u8>) {
    let mut all = args.to_vec();
    all.push(IMAGE);
    docker_create_with_image(name, &all)
}

/// `ctwatch check` on a config saved as `<dir>/<id>/config.json`: its JSON and exit code.
fn check(dir: &Path, id: &str, config: &[u8], extra: &[&str]) -> (Value, i32) {
    let bundle = dir.join(id);
    fs::create_dir_all(&bundle).unwrap();
    let path = bundle.join("config.json");
    fs::write(&path, config).unwrap();
    let mut args = vec!["check", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = output(ctwatch_bin().to_str().unwrap(), &args);
    let code = out.status.code().unwrap_or(-1);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (json, code)
}

fn inspect(cmd: &str, id: &str) -> Value {
    let text = run(cmd, &["inspect", id]);
    serde_json::from_str::<Value>(&text).unwrap()[0].clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

fn cap(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

#[test]
fn docker_run_flags_give_the_fields_docker_inspect_says() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("default", &[]),
        ("privileged", &["--privileged"]),
        ("capadd", &["--cap-add", "SYS_ADMIN"]),
        ("pidhost", &["--pid", "host"]),
        ("nethost", &["--network", "host"]),
        ("ipchost", &["--ipc", "host"]),
        ("sock", &["-v", "/var/run/docker.sock:/var/run/docker.sock"]),
        ("root", &["-v", "/:/host:ro"]),
        ("unconfined", &["--security-opt", "seccomp=unconfined"]),
        ("nnp", &["--security-opt", "no-new-privileges"]),
        ("readonly", &["--read-only"]),
        ("user", &["-u", "1000:1000"]),
        ("memory", &["--memory", "64m"]),
        ("device", &["--device", "/dev/null"]),
    ];
    for (tag, args) in cases {
        let name = unique(&format!("sec-{tag}"));
        let _remove = RemoveOnDrop(name.clone());
        let (id, started, stderr, config) = docker_create_start(&name, args);
        let (out, code) = check(dir.path(), &id, &config, &["--runtime", "docker"]);
        assert_eq!(code, 0, "no policy: exit 0");
        let s = &out["security"];
        let i = inspect(DOCKER, &id);
        let hc = &i["HostConfig"];
        let what = format!("{tag}: {s:#}");
        // Every case: the fields docker inspect has, whatever the flag.
        assert_eq!(s["privileged"], hc["Privileged"], "{what}");
        let added: Vec<String> = strings(&hc["CapAdd"]).iter().map(|c| cap(c)).collect();
        assert_eq!(
            strings(&s["capabilities_added"]),
            if hc["Privileged"] == true { strings(&s["capabilities_added"]) } else { added },
            "{what}"
        );
        for (mode, ns) in [("PidMode", "pid"), ("NetworkMode", "network"), ("IpcMode", "ipc")] {
            let host = strings(&s["host_namespaces"]).contains(&ns.to_string());
            assert_eq!(host, hc[mode] == "host", "{tag}: {mode} = {} vs {what}", hc[mode]);
        }
        let secopt = strings(&hc["SecurityOpt"]);
        let unconfined = secopt.iter().any(|o| o == "seccomp=unconfined") || hc["Privileged"] == true;
        assert_eq!(s["seccomp"], if unconfined { "unconfined" } else { "runtime_default" }, "{what}");
        assert_eq!(
            s["no_new_privileges"].as_bool().unwrap(),
            secopt.iter().any(|o| o.starts_with("no-new-privileges") && !o.ends_with("false")),
            "{what}"
        );
        assert_eq!(s["read_only_rootfs"], hc["ReadonlyRootfs"], "{what}");
        let user = i["Config"]["User"].as_str().unwrap();
        let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
        let uid: u64 = if uid.is_empty() { 0 } else { uid.parse().unwrap() };
        assert_eq!(s["run_as_uid"].as_u64(), Some(uid), "{what}");
        assert_eq!(s["run_as_gid"].as_u64(), Some(if gid.is_empty() { 0 } else { gid.parse().unwrap() }), "{what}");
        assert_eq!(s["run_as_root"], uid == 0, "{what}");
        let memory = hc["Memory"].as_i64().unwrap();
        assert_eq!(s["limits"]["memory_bytes"], if memory > 0 { Value::from(memory) } else { Value::Null }, "{what}");
        // Bind mounts: docker inspect's Mounts of type bind, and nothing the runtime made.
        let binds: Vec<(String, String, bool)> = i["Mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["Type"] == "bind")
            .map(|m| {
                (m["Source"].as_str().unwrap().into(), m["Destination"].as_str().unwrap().into(), m["RW"] == false)
            })
            .collect();
        let host_mounts: Vec<(String, String, bool)> = s["host_mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["source"].as_str().unwrap().into(),
                    m["destination"].as_str().unwrap().into(),
                    m["read_only"] == true,
                )
            })
            .collect();
        assert_eq!(host_mounts, binds, "{what}");
        for m in s["host_mounts"].as_array().unwrap() {
            assert_eq!(m["sensitive"], true, "{tag}: / and the docker socket are sensitive: {m}");
        }
        // Devices docker was asked for are made in the container (as the host's node).
        for d in hc["Devices"].as_array().into_iter().flatten() {
            let path = d["PathInContainer"].as_str().unwrap();
            let made = s["devices"].as_array().unwrap().iter().find(|x| x["path"] == path);
            let made = made.unwrap_or_else(|| panic!("{tag}: device {path} in {what}"));
            let meta = std::os::unix::fs::MetadataExt::rdev(&fs::metadata(d["PathOnHost"].as_str().unwrap()).unwrap());
            assert_eq!(
                (made["major"].as_u64(), made["minor"].as_u64()),
                (Some(libc::major(meta) as u64), Some(libc::minor(meta) as u64))
            );
        }
        // And the flag did what it says (so a derivation that ignored it fails).
        let expect_started = *tag != "privileged"; // this VM's bounding set lacks CAP_SYS_RESOURCE (HOST-NOTES)
        assert_eq!(started, expect_started, "{tag}: {stderr}");
        match *tag {
            "default" => {
                assert_eq!(out["pss"]["baseline"], serde_json::json!([]), "{what}");
                assert_eq!(out["privilege_class"], "baseline");
            }
            "privileged" => assert_eq!(
                (s["privileged"].as_bool(), out["privilege_class"].as_str()),
                (Some(true), Some("privileged"))
            ),
            "capadd" => assert_eq!(strings(&s["capabilities_added"]), ["CAP_SYS_ADMIN"]),
            "pidhost" | "nethost" | "ipchost" => assert_eq!(out["pss"]["baseline"][0]["check"], "Host Namespaces"),
            "sock" => assert_eq!(s["host_mounts"][0]["source"], "/var/run/docker.sock"),
            "root" => assert_eq!(
                (s["host_mounts"][0]["source"].as_str(), s["host_mounts"][0]["read_only"].as_bool()),
                (Some("/"), Some(true))
            ),
            "unconfined" => assert_eq!(s["seccomp"], "unconfined"),
            "nnp" => assert_eq!(s["no_new_privileges"], true),
            "readonly" => assert_eq!(s["read_only_rootfs"], true),
            "user" => assert_eq!((s["run_as_uid"].as_u64(), s["run_as_gid"].as_u64()), (Some(1000), Some(1000))),
            "memory" => assert_eq!(s["limits"]["memory_bytes"], 64 << 20),
            "device" => assert!(s["devices"].as_array().unwrap().iter().any(|d| d["path"] == "/dev/null")),
            _ => unreachable!(),
        }
        run(DOCKER, &["rm", "-f", &name]);
    }
}

/// A runc wrapper for `podman --runtime`: saves each bundle's config.json, then runs runc.
fn podman_wrapper(dir: &Path) -> PathBuf {
    let path = dir.join("runc-wrapper");
    let save = dir.join("saved");
    fs::create_dir_all(&save).unwrap();
    fs::write(
        &path,
        format!(
            "#!/bin/sh\nprev=\nfor a in \"$@\"; do if [ \"$prev\" = --bundle ] || [ \"$prev\" = -b ]; then \
             b=\"$a\"; fi; prev=\"$a\"; done\nif [ -n \"$b\" ] && [ -f \"$b/config.json\" ]; then cp \"$b/config.json\" \
             {}/config.json; fi\nexec /usr/sbin/runc \"$@\"\n",
            save.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

#[test]
fn podman_and_ctr_configs_give_what_they_say() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let wrapper = podman_wrapper(dir.path());
    let name = unique("sec-podman");
    let podman = |args: &[&str]| {
        let mut all = vec!["--runtime", wrapper.to_str().unwrap(), "--cgroup-manager", "cgroupfs"];
        all.extend_from_slice(args);
        run("podman", &all)
    };
    let id = podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "--cap-add",
        "SYS_ADMIN",
        "--pid",
        "host",
        "-u",
        "1000:1000",
        "--read-only",
        "--memory",
        "64m",
        "--security-opt",
        "no-new-privileges",
        "-v",
        "/etc:/hostetc:ro",
        "localhost/local/busybox:1",
        "sleep",
        "120",
    ]);
    let config = fs::read(dir.path().join("saved/config.json")).unwrap();
    let i = inspect("podman", &id);
    let _ = output("podman", &["rm", "-f", "-t", "0", &id]);
    let (out, _) = check(dir.path(), &id, &config, &[]);
    assert_eq!(out["container"]["runtime"], "podman", "podman's annotations name it");
    let s = &out["security"];
    let hc = &i["HostConfig"];
    let added: Vec<String> = strings(&hc["CapAdd"]).iter().map(|c| cap(c)).collect();
    assert_eq!(strings(&s["capabilities_added"]), added);
    assert!(added.contains(&"CAP_SYS_ADMIN".to_string()));
    assert_eq!(hc["PidMode"], "host");
    assert!(strings(&s["host_namespaces"]).contains(&"pid".to_string()), "{s}");
    assert_eq!(i["Config"]["User"], "1000:1000");
    assert_eq!((s["run_as_uid"].as_u64(), s["run_as_gid"].as_u64()), (Some(1000), Some(1000)));
    assert_eq!(s["read_only_rootfs"], hc["ReadonlyRootfs"]);
    assert_eq!(s["read_only_rootfs"], true);
    assert_eq!(s["limits"]["memory_bytes"], hc["Memory"]);
    assert_eq!(s["no_new_privileges"], true);
    let binds: Vec<(&str, &str, bool)> = i["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["Type"] == "bind")
        .map(|m| (m["Source"].as_str().unwrap(), m["Destination"].as_str().unwrap(), m["RW"] == false))
        .collect();
    let host_mounts: Vec<(&str, &str, bool)> = s["host_mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["source"].as_str().unwrap(), m["destination"].as_str().unwrap(), m["read_only"] == true))
        .collect();
    assert_eq!(host_mounts, binds);
    assert_eq!(host_mounts, [("/etc", "/hostetc", true)]);
    assert_eq!(s["host_mounts"][0]["sensitive"], true);

    // ctr: containerd keeps the spec it gave runc; the bundle holds the same file.
    let ctr_id = unique("sec-ctr");
    run_detached(
        "ctr",
        &[
            "-n",
            "default",
            "run",
            "-d",
            "--net-host",
            "--cap-add",
            "CAP_NET_ADMIN",
            "--read-only",
            "--memory-limit",
            "67108864",
            "--seccomp",
            "--mount",
            "type=bind,src=/srv,dst=/srv,options=rbind:ro",
            "docker.io/local/busybox:1",
            &ctr_id,
            "sleep",
            "120",
        ],
    );
    let cleanup = || {
        let _ = output("ctr", &["-n", "default", "task", "kill", "-s", "KILL", &ctr_id]);
        thread::sleep(Duration::from_millis(300));
        let _ = output("ctr", &["-n", "default", "task", "delete", &ctr_id]);
        let _ = output("ctr", &["-n", "default", "containers", "delete", &ctr_id]);
    };
    let bundle_config = fs::read(format!("{TASKS}/default/{ctr_id}/config.json"));
    let info: Value = serde_json::from_str(&run("ctr", &["-n", "default", "containers", "info", &ctr_id])).unwrap();
    cleanup();
    let (out, _) = check(dir.path(), &ctr_id, &bundle_config.unwrap(), &[]);
    let s = &out["security"];
    let spec = &info["Spec"];
    let spec_ns: Vec<&str> =
        spec["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
    assert!(!spec_ns.contains(&"network"));
    assert!(strings(&s["host_namespaces"]).contains(&"network".to_string()), "{s}");
    assert_eq!(strings(&s["capabilities_added"]), ["CAP_NET_ADMIN"]);
    assert_eq!(s["read_only_rootfs"], spec["root"]["readonly"]);
    assert_eq!(s["read_only_rootfs"], true);
    assert_eq!(s["limits"]["memory_bytes"], spec["linux"]["resources"]["memory"]["limit"]);
    assert_eq!(s["limits"]["memory_bytes"], 67108864);
    assert_eq!(s["seccomp"], "runtime_default", "ctr --seccomp applies containerd's default profile");
    assert_eq!(s["host_mounts"][0]["source"], "/srv");
    assert_eq!(s["host_mounts"][0]["sensitive"], false);
}

/// A policy in `dir`: `mode`, `profile`, scoped to images `scope`, with `extra` TOML.
fn write_policy(dir: &Path, file: &str, profile: &str, scope: &str, extra: &str) -> PathBuf {
    let path = dir.join(file);
    fs::write(&path, format!("mode = \"enforce\"\nprofile = \"{profile}\"\n{extra}\n[scope]\nimage = [\"{scope}\"]\n"))
        .unwrap();
    path
}

/// `ctwatch watch` with the hook and a policy.
fn hook_watch(policy: &Path) -> Watch {
    Watch::start_with("auto", &["--no-existing", "--hook", "on", "--policy", policy.to_str().unwrap()])
}

fn docker_pid(id: &str) -> u32 {
    run(DOCKER, &["inspect", "-f", "{{.State.Pid}}", id]).parse().unwrap()
}

/// One `docker run` under a hook: (id, started, stderr, config seen).
fn docker_run_under(image: &str, tag: &str, args: &[&str]) -> (String, bool, String, Vec<u8>, RemoveOnDrop) {
    let name = unique(tag);
    let remove = RemoveOnDrop(name.clone());
    let mut all: Vec<&str> = args.to_vec();
    all.push(image);
    let (id, started, stderr, config) = docker_create_with_image(&name, &all);
    (id, started, stderr, config, remove)
}

/// `docker create ARGS IMAGE sleep 120` (the image last of `args_and_image`)
/// then `docker start`, copying the bundle's config.json while it exists (a
/// refused or failing start removes it at once). Returns the ID, whether it
/// started, the start's stderr and the config.
fn docker_create_with_image(name: &str, args_and_image: &[&str]) -> (String, bool, String, Vec<u8>) {
    let (image, args) = args_and_image.split_last().unwrap();
    let mut all = vec!["create", "--name", name];
    all.extend_from_slice(args);
    all.extend_from_slice(&[image, "sleep", "120"]);
    let id = run(DOCKER, &all);
    let path = PathBuf::from(format!("{TASKS}/moby/{id}/config.json"));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        thread::spawn(move || {
            let mut last = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Ok(bytes) = fs::read(&path) {
                    if serde_json::from_slice::<Value>(&bytes).is_ok() {
                        last = bytes;
                    }
                }
                thread::sleep(Duration::from_micros(300));
            }
            if let Ok(bytes) = fs::read(&path) {
                if serde_json::from_slice::<Value>(&bytes).is_ok() {
                    last = bytes;
                }
            }
            last
        })
    };
    let out = output(DOCKER, &["start", name]);
    done.store(true, Ordering::Relaxed);
    let config = watcher.join().unwrap();
    assert!(!config.is_empty(), "the bundle's config.json of {name} was seen");
    (id, out.status.success(), String::from_utf8_lossy(&out.stderr).to_string(), config)
}

/// The hook refused it: EPERM on the runtime's exec, a violation naming
/// `check`, its process never ran, and `ctwatch check` on the config it was
/// given says the same.
fn assert_refused(
    watch: &mut Watch,
    dir: &Path,
    policy: &Path,
    run: (String, bool, String, Vec<u8>, RemoveOnDrop),
    check_name: &str,
    field: &str,
) {
    let (id, started, stderr, config, _remove) = run;
    assert!(!started, "{check_name}: refused");
    assert!(stderr.contains("operation not permitted"), "refused by the hook, not failed otherwise: {stderr}");
    watch.wait_for("container_policy_violation", &id);
    let verdict = watch.event("container_policy_violation", &id)["hook"]["verdict"].clone();
    assert_eq!((verdict["denied"].as_bool(), verdict["rule"].as_str()), (Some(true), Some(check_name)), "{verdict}");
    assert!(verdict["reason"].as_str().unwrap().contains(&format!("{check_name}: {field} = ")), "{verdict}");
    assert_eq!(docker_pid(&id), 0, "never ran");
    let bundle = format!("{TASKS}/moby/{id}");
    let (out, code) = check(dir, &id, &config, &["--bundle", &bundle, "--policy", policy.to_str().unwrap()]);
    assert_eq!(out["container"]["image"], watch.event("container_policy_violation", &id)["args"]["container_image"]);
    assert_eq!(code, 1, "check says it breaks the policy");
    assert_eq!(out["verdict"], verdict, "check gives the hook's verdict");
}

fn assert_runs(watch: &mut Watch, dir: &Path, policy: &Path, run: (String, bool, String, Vec<u8>, RemoveOnDrop)) {
    let (id, started, stderr, config, _remove) = run;
    assert!(started, "runs: {stderr}");
    watch.wait_for("container_create", &id);
    watch.drain_for(Duration::from_millis(300));
    assert!(!has_event(&watch.seen, "container_policy_violation", &id), "no violation for {id}");
    assert!(docker_pid(&id) > 0);
    let bundle = format!("{TASKS}/moby/{id}");
    let (out, code) = check(dir, &id, &config, &["--bundle", &bundle, "--policy", policy.to_str().unwrap()]);
    assert_eq!(out["container"]["image"], watch.event("container_create", &id)["args"]["container_image"]);
    assert_eq!((code, &out["verdict"]), (0, &Value::Null), "check allows it too: {out:#}");
}

#[test]
fn enforce_restricted_and_baseline_with_an_exemption() {
    require_root();
    let checked = "local/ctwatch-sec-checked:1";
    let exempt = "local/ctwatch-sec-exempt:1";
    run(DOCKER, &["tag", IMAGE, checked]);
    run(DOCKER, &["tag", IMAGE, exempt]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // restricted: root, privileged, host PID are refused; the hardened container runs.
    let policy = write_policy(d, "restricted.toml", "restricted", "local/ctwatch-sec-*", "");
    let mut watch = hook_watch(&policy);
    let r = docker_run_under(checked, "sec-r-root", &[]);
    assert_refused(&mut watch, d, &policy, r, "Privilege Escalation", "no_new_privileges");
    let r = docker_run_under(checked, "sec-r-priv", &["--privileged"]);
    assert_refused(&mut watch, d, &policy, r, "Privileged Containers", "privileged");
    let r = docker_run_under(checked, "sec-r-pid", &["--pid", "host", "-u", "1000:1000", "--cap-drop", "ALL"]);
    assert_refused(&mut watch, d, &policy, r, "Host Namespaces", "host_namespaces");
    let r = docker_run_under(
        checked,
        "sec-r-ok",
        &["-u", "1000:1000", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only"],
    );
    assert_runs(&mut watch, d, &policy, r);
    drop(watch);

    // baseline: -u 0 runs, --privileged and the docker socket are refused, an exempt image runs anyway.
    let policy = write_policy(
        d,
        "baseline.toml",
        "baseline",
        "local/ctwatch-sec-*",
        "[exempt]\nimage = [\"local/ctwatch-sec-exempt:*\"]",
    );
    let mut watch = hook_watch(&policy);
    let r = docker_run_under(checked, "sec-b-root", &["-u", "0"]);
    assert_runs(&mut watch, d, &policy, r);
    let r = docker_run_under(checked, "sec-b-priv", &["--privileged"]);
    assert_refused(&mut watch, d, &policy, r, "Privileged Containers", "privileged");
    let r = docker_run_under(checked, "sec-b-sock", &["-v", "/var/run/docker.sock:/var/run/docker.sock"]);
    assert_refused(&mut watch, d, &policy, r, "HostPath Volumes", "host_mounts");
    let r = docker_run_under(exempt, "sec-b-exempt", &["--pid", "host"]);
    assert_runs(&mut watch, d, &policy, r);
    let r = docker_run_under(checked, "sec-b-notexempt", &["--pid", "host"]);
    assert_refused(&mut watch, d, &policy, r, "Host Namespaces", "host_namespaces");
}

#[test]
fn check_is_clear_about_bad_input_and_enforce_never_passes_it() {
    let dir = tempfile::tempdir().unwrap();
    let bin = ctwatch_bin();
    let bad = dir.path().join("bad.json");
    fs::write(&bad, "{\"process\": ").unwrap();
    let out = output(bin.to_str().unwrap(), &["check", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("ctwatch: ") && stderr.contains("not a valid OCI config") && stderr.lines().count() == 1,
        "{stderr}"
    );
    // Enforce: as the hook, an unreadable config breaks the `unverifiable` rule.
    let policy = dir.path().join("p.toml");
    fs::write(&policy, "mode = \"enforce\"\nprofile = \"baseline\"\n").unwrap();
    let (out, code) = {
        let o = output(bin.to_str().unwrap(), &["check", bad.to_str().unwrap(), "--policy", policy.to_str().unwrap()]);
        (serde_json::from_slice::<Value>(&o.stdout).unwrap(), o.status.code())
    };
    assert_eq!(
        (code, out["verdict"]["rule"].as_str(), out["verdict"]["denied"].as_bool()),
        (Some(1), Some("unverifiable"), Some(true))
    );
    // A bad policy is an error, not an empty policy.
    fs::write(&policy, "profile = \"strictest\"\n").unwrap();
    let out = output(bin.to_str().unwrap(), &["check", bad.to_str().unwrap(), "--policy", policy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown variant"));
    // Audit mode: a violation is exit 1 too, with denied false.
    let config = dir.path().join("abc").join("config.json");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(&config, r#"{"process":{"user":{"uid":0}},"linux":{"namespaces":[{"type":"mount"}]}}"#).unwrap();
    fs::write(&policy, "profile = \"baseline\"\n").unwrap();
    let o = output(bin.to_str().unwrap(), &["check", config.to_str().unwrap(), "--policy", policy.to_str().unwrap()]);
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(out["verdict"]["denied"], false);
    assert_eq!(out["verdict"]["rule"], "Host Namespaces");
    assert_eq!(out["container"]["id"], "abc", "the bundle directory names the container");
    assert_eq!(out["privilege_class"], "elevated");
}

/// A CRI pod (host network, as this VM needs) with a hardened container
/// (`securityContext`: runAsUser 1000, drop ALL, read-only root, no privilege
/// escalation, seccomp RuntimeDefault) and a plain one, through containerd's
/// CRI plugin as kubelet would: each field of the config containerd wrote
/// is what the securityContext asked for, and `ctwatch check` decides as the
/// PSS say (and exempts by pod namespace).
#[test]
fn a_cri_pods_security_context_gives_its_fields() {
    use ctwatch_protos::cri::v1::{
        security_profile::ProfileType, Capability, ContainerConfig, ContainerMetadata, CreateContainerRequest,
        ImageSpec, Int64Value, LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
        LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
        RunPodSandboxRequest, SecurityProfile,
    };
    require_root();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut cri = rt.block_on(common::cri::connect());
    let name = unique("sec-pod");
    let namespace = "ctwatch-sec-test";
    let h = hex_id(&name);
    let uid = format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
    let node_network = || NamespaceOption { network: NamespaceMode::Node as i32, ..NamespaceOption::default() };
    let sandbox = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(node_network()),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    };
    let sandbox_id = rt
        .block_on(
            cri.run_pod_sandbox(RunPodSandboxRequest { config: Some(sandbox.clone()), runtime_handler: String::new() }),
        )
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let hardened = LinuxContainerSecurityContext {
        capabilities: Some(Capability { drop_capabilities: vec!["ALL".into()], ..Capability::default() }),
        namespace_options: Some(node_network()),
        run_as_user: Some(Int64Value { value: 1000 }),
        run_as_group: Some(Int64Value { value: 1000 }),
        readonly_rootfs: true,
        no_new_privs: true,
        seccomp: Some(SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            ..SecurityProfile::default()
        }),
        // What kubelet passes for procMount: Default (a CRI client that passes none gets an unmasked /proc).
        masked_paths: ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"].map(String::from).to_vec(),
        readonly_paths: ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
            .map(String::from)
            .to_vec(),
        ..LinuxContainerSecurityContext::default()
    };
    let plain = LinuxContainerSecurityContext {
        namespace_options: Some(node_network()),
        ..LinuxContainerSecurityContext::default()
    };
    let mut ids = Vec::new();
    for (container, context) in [("hardened", hardened), ("plain", plain)] {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: container.into(), attempt: 0 }),
            image: Some(ImageSpec { image: "docker.io/local/busybox:1".into(), ..ImageSpec::default() }),
            command: vec!["sleep".into(), "60".into()],
            linux: Some(LinuxContainerConfig { security_context: Some(context), ..LinuxContainerConfig::default() }),
            ..ContainerConfig::default()
        };
        let id = rt
            .block_on(cri.create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox_id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox.clone()),
            }))
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        ids.push(id);
    }
    // Created, not started: containerd keeps the spec it will give runc; read it back from its store
    // (checked while the sandbox runs, as the hook does: its containers join the sandbox's namespaces by its PID).
    let spec_of = |id: &str| -> Vec<u8> {
        let info: Value = serde_json::from_str(&run("ctr", &["-n", "k8s.io", "containers", "info", id])).unwrap();
        serde_json::to_vec(&info["Spec"]).unwrap()
    };
    let (hardened_spec, plain_spec) = (spec_of(&ids[0]), spec_of(&ids[1]));
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = check(dir.path(), &ids[0], &hardened_spec, &[]);
    assert_eq!(out["container"]["runtime"], "containerd");
    assert_eq!(out["container"]["pod_namespace"], namespace, "from the CRI annotations");
    let s = &out["security"];
    assert_eq!(
        (s["run_as_uid"].as_u64(), s["run_as_gid"].as_u64(), s["run_as_root"].as_bool()),
        (Some(1000), Some(1000), Some(false))
    );
    assert_eq!(s["capabilities_bounding"], serde_json::json!([]), "drop ALL");
    assert_eq!(s["capabilities_dropped"].as_array().unwrap().len(), 14);
    assert_eq!((s["read_only_rootfs"].as_bool(), s["no_new_privileges"].as_bool()), (Some(true), Some(true)));
    assert_eq!(s["seccomp"], "runtime_default");
    assert!(strings(&s["host_namespaces"]).contains(&"network".to_string()), "hostNetwork pod: {s}");
    assert!(s["joined_namespaces"]["pid"].as_str().unwrap().starts_with("/proc/"), "the sandbox's own PID namespace");
    assert_eq!(s["proc_unmasked"], false);
    let failed: Vec<&str> =
        out["pss"]["restricted"].as_array().unwrap().iter().map(|v| v["check"].as_str().unwrap()).collect();
    assert_eq!(failed, ["Host Namespaces"], "only hostNetwork keeps it from restricted");

    let (out, _) = check(dir.path(), &ids[1], &plain_spec, &[]);
    let s = &out["security"];
    assert_eq!((s["run_as_uid"].as_u64(), s["no_new_privileges"].as_bool()), (Some(0), Some(false)));
    assert_eq!(s["seccomp"], "unconfined", "containerd without seccomp_default: no filter");
    assert!(strings(&s["capabilities_added"]).is_empty());
    assert_eq!(s["proc_unmasked"], true, "no masked paths passed, none set");

    // Exempt by pod namespace: allowed; not exempt: the first check named.
    let policy = dir.path().join("pod.toml");
    fs::write(
        &policy,
        format!("mode = \"enforce\"\nprofile = \"restricted\"\n[exempt]\npod_namespace = [\"{namespace}\"]\n"),
    )
    .unwrap();
    let (out, code) = check(dir.path(), &ids[0], &hardened_spec, &["--policy", policy.to_str().unwrap()]);
    assert_eq!((code, &out["verdict"]), (0, &Value::Null));
    fs::write(&policy, "mode = \"enforce\"\nprofile = \"restricted\"\n[exempt]\npod_namespace = [\"kube-system\"]\n")
        .unwrap();
    let (out, code) = check(dir.path(), &ids[0], &hardened_spec, &["--policy", policy.to_str().unwrap()]);
    assert_eq!((code, out["verdict"]["rule"].as_str()), (1, Some("Host Namespaces")));
    rt.block_on(common::cri::remove_pod(&mut cri, &sandbox_id));
    // Once the sandbox is gone its namespaces cannot be looked at: offline, they are only "joined".
    let (out, _) = check(dir.path(), &ids[0], &hardened_spec, &[]);
    assert!(!strings(&out["security"]["host_namespaces"]).contains(&"network".to_string()));
}
