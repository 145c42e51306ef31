//! What ships in `deploy/` and the `Dockerfile`, checked against the real
//! tools: systemd's own analyzer, the unit's sandbox applied by hand to a real
//! `ctwatch serve` (PID 1 is not systemd here), the DaemonSet against the
//! README, and the image built by the real dockerd from local images only.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::serve::{watch_until, Watched};
use common::*;
use ctwatch_api::pb;
use serde_json::Value;

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn unit_file() -> PathBuf {
    repo().join("deploy/ctwatch.service")
}

/// Runs a command, returning (success, stdout + stderr).
fn run_both(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The `[Service]` values of `key` in the unit, in order.
fn unit_values(key: &str) -> Vec<String> {
    let text = fs::read_to_string(unit_file()).unwrap();
    let mut section = "";
    let mut values = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" {
            if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                values.push(v.trim().to_string());
            }
        }
    }
    values
}

// ---------------------------------------------------------------- systemd unit

#[test]
fn systemd_unit_verifies_clean() {
    // `verify` checks that ExecStart's binary exists, and needs the unit
    // files it depends on: a root with systemd's units, the unit, and this
    // build's ctwatch at the path the unit names (a hard link, same fs).
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    fs::create_dir_all(r.join("usr/local/bin")).unwrap();
    fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    let (ok, out) = run_both(Command::new("cp").args(["-a", "/usr/lib/systemd/system"]).arg(r.join("usr/lib/systemd")));
    assert!(ok, "copying systemd's units: {out}");
    fs::hard_link(ctwatch_bin(), r.join("usr/local/bin/ctwatch")).unwrap();
    fs::copy(unit_file(), r.join("etc/systemd/system/ctwatch.service")).unwrap();
    let (ok, out) = run_both(
        Command::new("systemd-analyze").arg("verify").arg(format!("--root={}", r.display())).arg("ctwatch.service"),
    );
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify deploy/ctwatch.service is not clean:\n{out}");

    // It is read at all: a misspelt key in a copy is reported.
    let bad = fs::read_to_string(unit_file()).unwrap().replace("LockPersonality=", "LockPersonalty=");
    fs::write(r.join("etc/systemd/system/ctwatch.service"), bad).unwrap();
    let (_, out) = run_both(
        Command::new("systemd-analyze").arg("verify").arg(format!("--root={}", r.display())).arg("ctwatch.service"),
    );
    assert!(out.contains("Unknown key 'LockPersonalty'"), "verify did not read the unit: {out}");

    // Readiness is the agent's own notification, from its main process.
    assert_eq!(unit_values("Type"), ["notify"]);
    assert_eq!(unit_values("NotifyAccess"), ["main"]);
    assert!(unit_values("ExecStart")[0].starts_with("/usr/local/bin/ctwatch serve "));
}

#[test]
fn systemd_unit_exposure_is_at_most_medium() {
    let (ok, out) =
        run_both(Command::new("systemd-analyze").args(["security", "--offline=true", "--no-pager"]).arg(unit_file()));
    assert!(ok, "systemd-analyze security: {out}");
    // "→ Overall exposure level for ctwatch.service: 3.5 OK 🙂"
    let line = out.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{out}"));
    let mut words = line.rsplit_once(':').unwrap().1.split_whitespace();
    let exposure: f64 = words.next().unwrap().parse().unwrap();
    let level = words.next().unwrap().to_string();
    eprintln!("systemd-analyze security: exposure {exposure} {level}");
    // systemd's scale: PERFECT, SAFE < 1, OK < 5, MEDIUM < 7.5, EXPOSED, UNSAFE, DANGEROUS.
    assert!(["PERFECT", "SAFE", "OK", "MEDIUM"].contains(&level.as_str()), "exposure {exposure} {level}:\n{out}");
    assert!(exposure < 7.0, "exposure {exposure} {level}");
    // Each hardening setting the unit claims is counted as such.
    for setting in [
        "NoNewPrivileges=",
        "ProtectKernelTunables=",
        "ProtectKernelModules=",
        "MemoryDenyWriteExecute=",
        "LockPersonality=",
    ] {
        assert!(out.lines().any(|l| l.starts_with('✓') && l.contains(setting)), "{setting} not in effect:\n{out}");
    }
}

/// The capability names the unit keeps, lower case without `cap_`.
fn unit_capabilities() -> Vec<String> {
    unit_values("CapabilityBoundingSet")
        .join(" ")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// The kernel's capability numbers, for reading /proc/<pid>/status.
fn capability_bit(name: &str) -> u32 {
    const NAMES: &[&str] = &[
        "chown",
        "dac_override",
        "dac_read_search",
        "fowner",
        "fsetid",
        "kill",
        "setgid",
        "setuid",
        "setpcap",
        "linux_immutable",
        "net_bind_service",
        "net_broadcast",
        "net_admin",
        "net_raw",
        "ipc_lock",
        "ipc_owner",
        "sys_module",
        "sys_rawio",
        "sys_chroot",
        "sys_ptrace",
        "sys_pacct",
        "sys_admin",
        "sys_boot",
        "sys_nice",
        "sys_resource",
        "sys_time",
        "sys_tty_config",
        "mknod",
        "lease",
        "audit_write",
        "audit_control",
        "setfcap",
        "mac_override",
        "mac_admin",
        "syslog",
        "wake_alarm",
        "block_suspend",
        "audit_read",
        "perfmon",
        "bpf",
        "checkpoint_restore",
    ];
    NAMES.iter().position(|n| *n == name).unwrap_or_else(|| panic!("unknown capability {name}")) as u32
}

fn status_field(pid: u32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The unit's file-system sandbox, as systemd builds it, by hand (run by
/// `unshare -m -u` as root, before capabilities are dropped). `$1`: the
/// directories that stay writable (RuntimeDirectory=, ReadWritePaths=).
const SANDBOX_MOUNTS: &str = r#"set -eu
writable="$1"; shift
# PrivateDevices=: a fresh /dev with the pseudo devices only.
stash=$(mktemp -d /run/ctwatch-test-dev.XXXXXX)
mount --rbind /dev "$stash"
mount -t tmpfs -o nosuid,noexec,mode=0755 tmpfs /dev
for n in null zero full random urandom tty; do touch "/dev/$n"; mount --bind "$stash/$n" "/dev/$n"; done
mkdir /dev/pts /dev/shm
ln -s /proc/self/fd /dev/fd; ln -s /proc/self/fd/0 /dev/stdin; ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
umount -l "$stash"; rmdir "$stash"
# ProtectSystem=strict, ProtectHome=read-only, ProtectKernelTunables=,
# ProtectControlGroups=: every mount read-only (/, /run, /home, /sys with
# cgroupfs, bpffs and tracefs) ...
awk '{print $5}' /proc/self/mountinfo | grep -v '^/dev/' | sort -u | while read -r mp; do
  mount -o remount,bind,ro "$mp" || echo "sandbox: $mp stays writable" >&2
done
# ... except /proc (not /proc/sys) and /dev, as systemd leaves them ...
mount -o remount,bind,rw /proc
mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys
mount -o remount,bind,rw /dev
# PrivateTmp=.
mount -t tmpfs -o nosuid,nodev tmpfs /tmp
mount -t tmpfs -o nosuid,nodev tmpfs /var/tmp
# ProtectKernelLogs=.
mount --bind /dev/null /proc/kmsg
# ... and the writable paths.
for p in $writable; do mount --bind "$p" "$p"; mount -o remount,bind,rw "$p"; done
umask 0077
exec "$@"
"#;

/// Receives notify datagrams into a shared list, each with when it came.
fn notify_listener(path: &Path) -> Arc<Mutex<Vec<(Instant, String)>>> {
    let socket = UnixDatagram::bind(path).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            sink.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
    });
    got
}

fn wait_for_notify(got: &Arc<Mutex<Vec<(Instant, String)>>>, what: &str, timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((at, _)) = got.lock().unwrap().iter().find(|(_, m)| m.lines().any(|l| l == what)) {
            return *at;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} on NOTIFY_SOCKET after {timeout:?}; got {:?}",
            got.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hardened_unit_sandbox_still_serves_and_notifies_ready_after_the_socket_answers() {
    require_root();
    let python = Path::new("/usr/bin/python3");
    let seccomp_ok = Command::new(python).args(["-c", "import seccomp"]).status().is_ok_and(|s| s.success());
    assert!(seccomp_ok, "python3-seccomp is missing: run scripts/setup-host.sh");

    // Everything under a directory of this test's own in /run (not /tmp:
    // the agent gets a private /tmp).
    let name = unique("deploy");
    let dir = PathBuf::from("/run").join(&name);
    fs::create_dir_all(dir.join("api")).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
    struct Cleanup(Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            self.0.iter().for_each(|d| drop(fs::remove_dir_all(d)));
        }
    }
    let _cleanup = Cleanup(vec![dir.clone(), pin_dir.clone()]);
    let socket = dir.join("api/ctwatch.sock");
    let notify_path = dir.join("notify.sock");
    let notified = notify_listener(&notify_path);

    // A container running before the agent starts: the scan at start must
    // have found it by the time READY=1 is sent.
    let early = hex_id(&format!("{name}-early"));
    let mut tree = CgroupTree::new();
    tree.mkdir_p(&default_hierarchy(), &format!("docker/{early}"));

    // unshare (mount, UTS namespaces: ProtectHostname=) → mounts → setpriv
    // (CapabilityBoundingSet=, NoNewPrivileges=, no inheritable or ambient
    // capabilities) → unit_seccomp.py (the unit's seccomp settings) → ctwatch.
    // The unit's own ExecStart arguments, with this test's socket, a free
    // metrics port, and a group that exists here (`daemon`, not root's: the
    // chown needs CAP_CHOWN, as with the unit's `ctwatch` group).
    let metrics_addr = format!("127.0.0.1:{}", common::serve::free_port());
    let group = nix::unistd::Group::from_name("daemon").unwrap().expect("a daemon group");
    let exec_start = unit_values("ExecStart")[0].clone();
    let mut serve_args: Vec<String> = exec_start.split_whitespace().skip(1).map(String::from).collect();
    for (flag, value) in [
        ("--socket", socket.to_str().unwrap()),
        ("--socket-group", "daemon"),
        ("--metrics-addr", metrics_addr.as_str()),
    ] {
        let at = serve_args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("ExecStart has no {flag}"));
        serve_args[at + 1] = value.to_string();
    }
    assert!(serve_args.iter().any(|a| a == "--keep-pinned"));
    let bounding = unit_capabilities().iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",");
    // The sandbox hides /tmp, where the repository may live (a CI clone):
    // run copies of the script, the unit and the binary from this test's directory.
    let seccomp_script = dir.join("unit_seccomp.py");
    fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/unit_seccomp.py"), &seccomp_script).unwrap();
    let unit_copy = dir.join("ctwatch.service");
    fs::copy(unit_file(), &unit_copy).unwrap();
    let binary = dir.join("ctwatch");
    fs::copy(ctwatch_bin(), &binary).unwrap();
    let writable = format!("{} /sys/fs/bpf", dir.join("api").display());
    let mut child = Command::new("unshare")
        .args(["--mount", "--uts", "--propagation", "slave", "--", "sh", "-c", SANDBOX_MOUNTS, "sandbox", &writable])
        .args(["setpriv", &format!("--bounding-set=-all,{bounding}"), "--inh-caps=-all", "--ambient-caps=-all"])
        .args(["--no-new-privs", "--"])
        .arg(python)
        .arg(&seccomp_script)
        .arg(&unit_copy)
        .arg("--")
        .arg(&binary)
        .args(&serve_args)
        .args(["--pin-path"])
        .arg(&pin_dir)
        // Every part on, and required: a capability the sandbox lacks fails the start.
        .args(["--source", "ebpf", "--hook", "on", "--enrich-deadline", "5s"])
        .env("CTWATCH_LOG", "info")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = log.clone();
    let stderr = child.stderr.take().unwrap();
    let verbose = std::env::var_os("CTWATCH_TEST_VERBOSE").is_some();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if verbose {
                eprintln!("[sandboxed serve] {line}");
            }
            sink.lock().unwrap().push(line);
        }
    });
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), nix::sys::signal::SIGKILL);
        }
    }
    let _kill = Kill(pid);

    // READY=1 arrives, and right then the socket answers with the scan's
    // result (ls is a real client: it fails when nothing answers).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !notified.lock().unwrap().iter().any(|(_, m)| m.lines().any(|l| l == "READY=1")) && Instant::now() < deadline
    {
        if let Some(status) = child.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(200)); // the last log lines
            panic!("the sandboxed agent exited before READY=1 ({status}); log: {:#?}", log.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready_at = wait_for_notify(&notified, "READY=1", Duration::ZERO);
    assert!(
        notified.lock().unwrap().iter().all(|(at, m)| *at >= ready_at || !m.contains("WATCHDOG=1")),
        "a keep-alive before READY=1"
    );
    let ls =
        Command::new(ctwatch_bin()).arg("ls").arg("--socket").arg(&socket).args(["--format", "json"]).output().unwrap();
    assert!(ls.status.success(), "ctwatch ls right after READY=1: {}", String::from_utf8_lossy(&ls.stderr));
    let listed = String::from_utf8_lossy(&ls.stdout);
    assert!(listed.contains(&early), "the container from before the start is not listed at READY=1: {listed}");

    // The sandbox really is on the agent (the exec chain keeps the PID).
    // (What this machine's own bounding set lacks cannot be kept: CAP_SYS_RESOURCE here.)
    let ours = u64::from_str_radix(&status_field(std::process::id(), "CapBnd"), 16).unwrap();
    let expected: u64 = unit_capabilities().iter().map(|c| 1u64 << capability_bit(c)).sum::<u64>() & ours;
    let bnd = u64::from_str_radix(&status_field(pid, "CapBnd"), 16).unwrap();
    assert_eq!(bnd, expected, "CapBnd {bnd:x}, unit {expected:x}");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2", "seccomp filter mode");
    let filters: u32 = status_field(pid, "Seccomp_filters").parse().unwrap();
    assert!(filters >= 5, "{filters} seccomp filters");
    let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let mount_opts = |mp: &str| {
        mountinfo
            .lines()
            .rfind(|l| l.split_whitespace().nth(4) == Some(mp))
            .map(|l| l.split_whitespace().nth(5).unwrap().to_string())
            .unwrap_or_else(|| panic!("{mp} not mounted for the agent"))
    };
    for (mp, want) in [("/", "ro"), ("/usr", "ro"), ("/tmp", "rw"), ("/sys/fs/bpf", "rw")] {
        if mp == "/usr" && !mountinfo.lines().any(|l| l.split_whitespace().nth(4) == Some("/usr")) {
            continue; // /usr on the root fs
        }
        assert!(mount_opts(mp).split(',').any(|o| o == want), "{mp} is not {want} for the agent");
    }
    assert!(pin_dir.join("ctwatch_containers").exists(), "the map was not pinned in the writable bpffs");
    let socket_meta = fs::metadata(&socket).unwrap();
    assert_eq!((socket_meta.gid(), socket_meta.mode() & 0o777), (group.gid.as_raw(), 0o660), "the socket's group");
    let metrics = common::serve::scrape(&metrics_addr);
    assert!(metrics.contains("ctwatch_containers"), "metrics over TCP: {metrics}");

    // A real container: its create (enriched from Docker over the read-only
    // /run) and the hook's precreate (argv read through /proc/<pid>/mem).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut client = rt.block_on(ctwatch_api::client::connect(&socket)).unwrap();
    let mut stream = rt.block_on(client.watch(pb::WatchRequest::default())).unwrap().into_inner();
    let mut watched = Watched::default();
    rt.block_on(watch_until(&mut stream, &mut watched, Duration::from_secs(10), "synced", |w| w.synced));
    let id = run("/usr/bin/docker", &["run", "-d", "--name", &name, "local/busybox:1", "sleep", "60"]);
    struct RmContainer(String);
    impl Drop for RmContainer {
        fn drop(&mut self) {
            let _ = Command::new("/usr/bin/docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let _rm = RmContainer(name.clone());
    rt.block_on(watch_until(&mut stream, &mut watched, Duration::from_secs(30), "the docker container", |w| {
        w.has("container_create", &id) && w.has("container_precreate", &id)
    }));
    let created = watched.find("container_create", &id).unwrap().container.clone().unwrap();
    assert_eq!((created.container_name.as_str(), created.runtime.as_str()), (name.as_str(), "docker"));

    // Keep-alives while it answers, and STOPPING=1 on SIGTERM; a clean exit.
    wait_for_notify(&notified, "WATCHDOG=1", Duration::from_secs(10));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}; log: {:#?}", log.lock().unwrap());
    wait_for_notify(&notified, "STOPPING=1", Duration::from_secs(5));
    assert!(!socket.exists(), "the socket outlived the agent");
    assert!(pin_dir.join("ctwatch_containers").exists(), "--keep-pinned (the unit's) did not keep the map");
}

// ------------------------------------------------------------------ DaemonSet

/// The YAML documents of a file as JSON, through Debian's python3-yaml.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = Command::new("/usr/bin/python3").args(["-c", script]).arg(path).output().unwrap();
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The absolute host paths named in backquotes in the README's Kubernetes
/// paragraphs (`/proc` is the host's through hostPID, not a mount).
fn readme_deployment_paths() -> BTreeSet<String> {
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme.find("*Kubernetes.*").expect("the README's *Kubernetes.* deployment paragraph");
    let section = &readme[start..];
    let end = section.find("\n## ").unwrap_or(section.len());
    section[..end]
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.len() > 1
                && s.starts_with('/')
                && !s.contains(' ')
                && !s.starts_with("/host/")
                && !s.starts_with("/proc/")
        })
        .map(|s| s.trim_end_matches('/').to_string())
        .collect()
}

#[test]
fn daemonset_is_valid_against_the_kubernetes_schemas() {
    // Kubernetes' own OpenAPI schemas (kubernetes-validate, installed by
    // scripts/setup-host.sh), strict: an unknown field fails too. The oldest
    // and newest minor versions it knows that matter here.
    let validate = Path::new("/var/lib/ctwatch-test/venv/bin/kubernetes-validate");
    assert!(validate.exists(), "{} is missing: run scripts/setup-host.sh", validate.display());
    let manifest = repo().join("deploy/daemonset.yaml");
    for version in ["1.26", "1.30", "1.37"] {
        let (ok, out) = run_both(Command::new(validate).args(["--strict", "-k", version]).arg(&manifest));
        assert!(ok && out.matches(" passed for resource ").count() == 2, "Kubernetes {version}:\n{out}");
    }
    // It does reject what is wrong.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("daemonset.yaml");
    fs::write(&bad, fs::read_to_string(&manifest).unwrap().replace("hostPID: true", "hostPid: true")).unwrap();
    let (ok, out) = run_both(Command::new(validate).arg("--strict").arg(&bad));
    assert!(!ok && out.contains("'hostPid' was unexpected"), "{out}");
}

#[test]
fn daemonset_mounts_what_the_readme_names_and_probes_the_health_service() {
    let docs = yaml_documents(&repo().join("deploy/daemonset.yaml"));
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Namespace", "DaemonSet"]);
    let ds = &docs[1];
    assert_eq!(ds["apiVersion"], "apps/v1");
    assert_eq!(ds["metadata"]["namespace"], docs[0]["metadata"]["name"]);
    let selector = &ds["spec"]["selector"]["matchLabels"];
    let pod = &ds["spec"]["template"];
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][k], v, "the selector does not match the pod's labels");
    }
    let spec = &pod["spec"];
    assert_eq!(spec["hostPID"], true, "PIDs, /proc/<pid>/root and /proc/1/ns/cgroup must be the host's");
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // A versioned image of ours, the workspace's version.
    let image = c["image"].as_str().unwrap();
    let (repo_name, tag) = image.rsplit_once(':').expect("the image has a tag");
    assert!(!repo_name.contains('/'), "{image}: names a registry; we publish none (set yours when you push)");
    assert_ne!(tag, "latest");
    assert_eq!(tag, env!("CARGO_PKG_VERSION"), "the image tag is not the workspace version");

    // The host's cgroup namespace, then ctwatch as the image installs it.
    let command: Vec<&str> = c["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(command, ["nsenter", "--cgroup=/proc/1/ns/cgroup", "--", "/usr/local/bin/ctwatch"]);
    let dockerfile = fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/ctwatch\"]"));
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(args[0], "serve");
    let socket = args.iter().find_map(|a| a.strip_prefix("--socket=")).expect("--socket=");

    // Probes: `ctwatch health` on the agent's socket, for start, readiness and liveness.
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let cmd: Vec<&str> = c[probe]["exec"]["command"]
            .as_array()
            .unwrap_or_else(|| panic!("no exec {probe}"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(cmd, ["/usr/local/bin/ctwatch", "health", &format!("--socket={socket}")], "{probe}");
        assert!(c[probe]["timeoutSeconds"].as_u64().unwrap() >= 2, "{probe}");
    }

    // The cluster view: NATS settings from the optional ConfigMap, the
    // credentials from the optional Secret as files, the node's name from Kubernetes.
    let secret =
        spec["volumes"].as_array().unwrap().iter().find(|v| v.get("secret").is_some()).expect("a Secret volume");
    assert_eq!(secret["secret"]["secretName"], "ctwatch-nats");
    assert_eq!(secret["secret"]["optional"], true, "an agent without NATS must start without the Secret");
    let secret_mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == secret["name"]).unwrap();
    assert_eq!(secret_mount["mountPath"], "/etc/ctwatch/nats");
    assert_eq!(secret_mount["readOnly"], true);
    let env_from = c["envFrom"].as_array().expect("envFrom");
    assert_eq!(env_from[0]["configMapRef"]["name"], "ctwatch-nats");
    assert_eq!(env_from[0]["configMapRef"]["optional"], true);
    let node_name =
        c["env"].as_array().unwrap().iter().find(|e| e["name"] == "CTWATCH_NODE_NAME").expect("CTWATCH_NODE_NAME");
    assert_eq!(node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    let manifest = fs::read_to_string(repo().join("deploy/daemonset.yaml")).unwrap();
    assert!(manifest.contains("CTWATCH_NATS_CREDS=/etc/ctwatch/nats/creds"), "the example names the mounted file");
    assert!(!args.iter().any(|a| a.starts_with("--nats")), "NATS settings come from the ConfigMap, not the args");

    // Mounts: name → (host path, mount path, read-only).
    let volumes: Vec<(String, String)> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v.get("secret").is_none())
        .map(|v| (v["name"].as_str().unwrap().into(), v["hostPath"]["path"].as_str().expect("hostPath").into()))
        .collect();
    let mounts: Vec<(String, String, String, bool)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] != secret["name"])
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            let host = volumes.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no volume {name}")).1.clone();
            (name.into(), host, m["mountPath"].as_str().unwrap().into(), m["readOnly"] == true)
        })
        .collect();
    assert_eq!(volumes.len(), mounts.len(), "a volume nobody mounts");
    let covering = |host_path: &str| {
        mounts
            .iter()
            .filter(|(_, h, _, _)| host_path == h || host_path.starts_with(&format!("{}/", h.trim_end_matches('/'))))
            .max_by_key(|(_, h, _, _)| h.len())
    };

    // Every host path the README names is mounted (itself or a parent).
    let named = readme_deployment_paths();
    for p in [
        "/usr/bin",
        "/usr/sbin",
        "/usr/local/bin",
        "/usr/libexec/podman",
        "/run/containerd",
        "/run/docker.sock",
        "/run/podman",
        "/run/k3s/containerd",
        "/var/lib/docker",
        "/var/lib/containers",
        "/run/runc",
        "/sys/fs/cgroup",
        "/sys/fs/bpf",
        "/sys/kernel/tracing",
        "/sys/kernel/btf",
        "/run/ctwatch",
    ] {
        assert!(named.contains(p), "the README's deployment paragraph does not name `{p}`: {named:?}");
    }
    for p in &named {
        assert!(covering(p).is_some(), "the README names {p}, the DaemonSet does not mount it");
    }
    // Where the agent must not write, it cannot; where it must, it can.
    for p in ["/var/lib/docker", "/var/lib/containers", "/sys/fs/cgroup", "/usr/bin", "/run/containerd"] {
        assert!(covering(p).unwrap().3, "{p} is mounted writable");
    }
    for p in ["/sys/fs/bpf", "/run/ctwatch"] {
        assert!(!covering(p).unwrap().3, "{p} must be writable");
    }
    // Runtime state is where runtimes say it is: the same path inside.
    for p in ["/run/containerd", "/run/runc", "/run/docker", "/var/lib/docker", "/sys/fs/cgroup", "/sys/fs/bpf"] {
        let (_, host, inside, _) = covering(p).unwrap();
        assert_eq!(host, inside, "{p} is not at the host's path inside");
    }

    // Paths the agent is told (runtime binaries, sockets) exist inside as
    // mounts of the host paths they stand for.
    for arg in &args {
        let Some(path) = arg.strip_prefix("--runtime-path=").or_else(|| arg.strip_prefix("--docker-socket=")) else {
            continue;
        };
        let (_, host, inside, _) = mounts
            .iter()
            .filter(|(_, _, inside, _)| path.starts_with(&format!("{inside}/")))
            .max_by_key(|(_, _, inside, _)| inside.len())
            .unwrap_or_else(|| panic!("{path} is in no mount"));
        let host_path = format!("{host}{}", &path[inside.len()..]);
        assert!(covering(&host_path).is_some(), "{path} ({host_path})");
    }
    assert!(args.contains(&"--docker-socket=/host/run/docker.sock"));
    assert!(args.contains(&"--runtime-path=/host/usr/sbin/runc"));
}

// ---------------------------------------------------------------------- image

const RUNTIME_IMAGE: &str = "local/debian:bookworm-minbase";

#[test]
fn dockerfile_builds_an_image_that_runs_ctwatch() {
    require_root();
    let docker = |args: &[&str]| run_both(Command::new("/usr/bin/docker").args(args).env("DOCKER_BUILDKIT", "0"));
    let (ok, out) = docker(&["image", "inspect", RUNTIME_IMAGE]);
    assert!(ok, "{RUNTIME_IMAGE} (Debian bookworm, debootstrap) is missing: run scripts/setup-host.sh\n{out}");

    let dockerfile = repo().join("Dockerfile");
    let text = fs::read_to_string(&dockerfile).unwrap();
    // The defaults are the public images, versioned, of the same Debian release.
    let default = |arg: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("ARG {arg}=")))
            .unwrap_or_else(|| panic!("no ARG {arg}= default"))
            .to_string()
    };
    let (builder, runtime) = (default("BUILDER_IMAGE"), default("RUNTIME_IMAGE"));
    assert!(builder.starts_with("docker.io/library/rust:1.") && builder.ends_with("-bookworm"), "{builder}");
    assert_eq!(runtime, "docker.io/library/debian:bookworm-slim");
    let ignore = fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for excluded in ["target", ".git"] {
        assert!(ignore.lines().any(|l| l == excluded), ".dockerignore does not exclude {excluded}");
    }

    // The classic builder (this engine has no BuildKit client) parses the
    // whole file, every stage, before it builds: a bad instruction in the
    // Rust stage fails the `prebuilt` target too. So the Rust stage is parsed
    // here; it is not run (no registry: no Rust image to run it in).
    let context = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ctx = context.path();
    let (ok, out) = run_both(Command::new("strip").arg("-o").arg(ctx.join("ctwatch")).arg(ctwatch_bin()));
    assert!(ok, "strip: {out}");
    // The context holds what the prebuilt stage copies: LICENSE and the binary.
    fs::copy(repo().join("LICENSE"), ctx.join("LICENSE")).unwrap();
    let bad = ctx.join("Dockerfile.bad");
    fs::write(&bad, text.replace("RUN cargo build", "RUNN cargo build")).unwrap();
    let build = |file: &Path, tag: &str| {
        docker(&[
            "build",
            "-f",
            file.to_str().unwrap(),
            "--target",
            "prebuilt",
            "--build-arg",
            &format!("RUNTIME_IMAGE={RUNTIME_IMAGE}"),
            "--build-arg",
            "PREBUILT=ctwatch",
            "-t",
            tag,
            ctx.to_str().unwrap(),
        ])
    };
    let (ok, out) = build(&bad, "local/ctwatch-test-bad:0");
    assert!(!ok && out.contains("unknown instruction: RUNN"), "a broken Rust stage was not caught:\n{out}");

    // A default build goes through the prebuilt stage with the classic
    // builder, usually without a binary: that stage must not fail then.
    let (ok, out) = docker(&[
        "build",
        "-f",
        dockerfile.to_str().unwrap(),
        "--target",
        "prebuilt",
        "--build-arg",
        &format!("RUNTIME_IMAGE={RUNTIME_IMAGE}"),
        "--build-arg",
        "PREBUILT=no-such-binary",
        "-t",
        "local/ctwatch-test-nobinary:0",
        ctx.to_str().unwrap(),
    ]);
    let _ = docker(&["rmi", "-f", "local/ctwatch-test-nobinary:0"]);
    assert!(ok && out.contains("no no-such-binary in the build context"), "{out}");

    let tag = format!("local/{}:{}", unique("image"), env!("CARGO_PKG_VERSION"));
    struct Rmi(String);
    impl Drop for Rmi {
        fn drop(&mut self) {
            let _ = Command::new("/usr/bin/docker").args(["rmi", "-f", &self.0]).output();
        }
    }
    let _rmi = Rmi(tag.clone());
    let (ok, out) = build(&dockerfile, &tag);
    assert!(ok, "docker build --target prebuilt:\n{out}");

    // It runs: `ctwatch --version` as the entrypoint, nsenter for the DaemonSet, on bookworm.
    let (ok, out) = docker(&["run", "--rm", &tag, "--version"]);
    assert!(ok && out.trim() == format!("ctwatch {}", env!("CARGO_PKG_VERSION")), "{out}");
    let (ok, out) = docker(&["run", "--rm", "--entrypoint", "nsenter", &tag, "--version"]);
    assert!(ok && out.contains("util-linux"), "{out}");
    let (ok, out) =
        docker(&["run", "--rm", "--entrypoint", "sh", &tag, "-c", ". /etc/os-release; echo $VERSION_CODENAME"]);
    assert!(ok && out.trim() == "bookworm", "{out}");
    let (ok, out) = docker(&["run", "--rm", "--entrypoint", "cat", &tag, "/usr/share/doc/ctwatch/LICENSE"]);
    assert!(ok && out.contains("Apache License") && out.contains("Version 2.0, January 2004"), "{out}");
    let (ok, out) = docker(&["image", "inspect", "--format", "{{json .Config.Entrypoint}} {{json .Config.Cmd}}", &tag]);
    assert!(ok && out.trim() == r#"["/usr/local/bin/ctwatch"] ["serve"]"#, "{out}");
}

// ------------------------------------------------ the DaemonSet's pod, in Docker

/// Builds the image's `prebuilt` target with this build's binary (local images only).
fn build_prebuilt_image(tag: &str) {
    let context = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let ctx = context.path();
    let (ok, out) = run_both(Command::new("strip").arg("-o").arg(ctx.join("ctwatch")).arg(ctwatch_bin()));
    assert!(ok, "strip: {out}");
    fs::copy(repo().join("LICENSE"), ctx.join("LICENSE")).unwrap();
    let (ok, out) = run_both(
        Command::new("/usr/bin/docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-f"])
            .arg(repo().join("Dockerfile"))
            .args(["--target", "prebuilt", "--build-arg", &format!("RUNTIME_IMAGE={RUNTIME_IMAGE}")])
            .args(["--build-arg", "PREBUILT=ctwatch", "-t", tag])
            .arg(ctx),
    );
    assert!(ok, "docker build --target prebuilt:\n{out}");
}

/// Removes containers, images, directories when dropped.
struct DockerCleanup {
    containers: Vec<String>,
    images: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("/usr/bin/docker").args(["rm", "-f", c]).output();
        }
        for i in &self.images {
            let _ = Command::new("/usr/bin/docker").args(["rmi", "-f", i]).output();
        }
        for d in &self.dirs {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// `docker run` arguments standing for the DaemonSet's pod: its mounts, its
/// command and arguments. Where this VM cannot do what a node does, the
/// substitutes are: capabilities instead of `privileged` (runc here cannot
/// apply a full set: no CAP_SYS_RESOURCE), no mount propagation flags (`/` is
/// a private mount here), dockerd's cgroup namespace instead of PID 1's
/// (PID 1 here is no init, and even root may not open its /proc/1/ns), and the
/// test's own socket directory and pin path.
fn pod_as_docker_run(name: &str, image: &str, run_dir: &Path, pin_dir: &Path, nsenter: bool) -> Vec<String> {
    let docs = yaml_documents(&repo().join("deploy/daemonset.yaml"));
    let spec = &docs[1]["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let mut run: Vec<String> =
        ["run", "-d", "--name", name, "--pid=host", "--cgroupns=private"].iter().map(|s| s.to_string()).collect();
    assert_eq!(spec["hostPID"], true);
    assert_eq!(c["securityContext"]["privileged"], true);
    for cap in ["SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH", "CHOWN"] {
        run.push(format!("--cap-add={cap}"));
    }
    run.extend(["--security-opt=seccomp=unconfined".into(), "--security-opt=apparmor=unconfined".into()]);
    for m in c["volumeMounts"].as_array().unwrap() {
        let vol = spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == m["name"]).unwrap();
        let Some(host) = vol["hostPath"]["path"].as_str() else {
            continue; // the optional NATS Secret: none here
        };
        let mut host = host.to_string();
        let inside = m["mountPath"].as_str().unwrap();
        if inside == "/run/ctwatch" {
            host = run_dir.display().to_string();
        }
        if inside == "/var/lib/ctwatch" {
            // The journal: the test's own, not the host's.
            let state = run_dir.join("state");
            fs::create_dir_all(&state).unwrap();
            host = state.display().to_string();
        }
        if !Path::new(&host).exists() {
            continue; // DirectoryOrCreate: kubelet would make an empty one
        }
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        run.push(format!("--volume={host}:{inside}{ro}"));
    }
    let command: Vec<String> = c["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
    let dockerd = fs::read_to_string("/var/run/docker.pid").expect("dockerd's pid file").trim().to_string();
    let (entrypoint, mut rest) = if nsenter {
        let args = command[1..]
            .iter()
            .map(|a| a.replace("/proc/1/ns/cgroup", &format!("/proc/{dockerd}/ns/cgroup")))
            .collect::<Vec<_>>();
        (command[0].clone(), args)
    } else {
        (command.last().unwrap().clone(), Vec::new())
    };
    run.push(format!("--entrypoint={entrypoint}"));
    run.push(image.to_string());
    rest.extend(c["args"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()));
    rest.push(format!("--pin-path={}", pin_dir.display()));
    run.extend(rest);
    run
}

/// Polls `ctwatch <args>` until it succeeds; its stdout.
fn ctwatch_until_ok(args: &[&str], timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = Command::new(ctwatch_bin()).args(args).output().unwrap();
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if Instant::now() > deadline {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn daemonset_pod_in_a_private_cgroup_namespace_finds_host_pids_through_nsenter() {
    require_root();
    let name = unique("pod");
    let image = format!("local/{name}:{}", env!("CARGO_PKG_VERSION"));
    let mut cleanup = DockerCleanup { containers: vec![], images: vec![image.clone()], dirs: vec![] };
    build_prebuilt_image(&image);
    // dockerd stands for the host's init: it must be in our cgroup namespace.
    let dockerd = fs::read_to_string("/var/run/docker.pid").unwrap().trim().to_string();
    assert_eq!(
        fs::read_link(format!("/proc/{dockerd}/ns/cgroup")).unwrap(),
        fs::read_link("/proc/self/ns/cgroup").unwrap()
    );

    // The pod as shipped (nsenter), and the same without nsenter.
    let mut sockets = Vec::new();
    for (suffix, nsenter) in [("agent", true), ("no-nsenter", false)] {
        let container = format!("{name}-{suffix}");
        let run_dir = PathBuf::from("/run").join(&container);
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&container);
        fs::create_dir_all(&run_dir).unwrap();
        cleanup.containers.push(container.clone());
        cleanup.dirs.extend([run_dir.clone(), pin_dir.clone()]);
        let args = pod_as_docker_run(&container, &image, &run_dir, &pin_dir, nsenter);
        let (ok, out) = run_both(Command::new("/usr/bin/docker").args(&args));
        assert!(ok, "docker {args:?}:\n{out}");
        sockets.push((container, run_dir.join("ctwatch.sock")));
    }
    let logs = |container: &str| run_both(Command::new("/usr/bin/docker").args(["logs", container])).1;
    for (container, socket) in &sockets {
        let answered = ctwatch_until_ok(&["ls", "--socket", socket.to_str().unwrap()], Duration::from_secs(60));
        assert!(answered.is_ok(), "{container} does not answer: {answered:?}\n{}", logs(container));
    }
    let (agent, socket) = &sockets[0];
    let agent_log = logs(agent);
    assert!(agent_log.contains("runtime binary hooked path=/host/usr/sbin/runc"), "{agent_log}");

    // A container started now: the agent knows its PID (host PID, host cgroup path).
    let victim = format!("{name}-victim");
    cleanup.containers.push(victim.clone());
    let id = run("/usr/bin/docker", &["run", "-d", "--name", &victim, "local/busybox:1", "sleep", "60"]);
    let pid = run("/usr/bin/docker", &["inspect", "-f", "{{.State.Pid}}", &victim]);
    let found = ctwatch_until_ok(&["pid", "--socket", socket.to_str().unwrap(), &pid], Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("the pod's agent does not know PID {pid}: {e}\n{}", logs(agent)));
    let record: Value = serde_json::from_str(&found).unwrap();
    assert_eq!(
        (record["container_id"].as_str(), record["container_name"].as_str()),
        (Some(id.as_str()), Some(victim.as_str()))
    );
    assert_eq!(record["container_image"], "local/busybox:1", "enriched through /host/run/docker.sock");

    // Without nsenter the kernel prints the PID's cgroup relative to the
    // agent's own cgroup namespace ("/../<id>"): no container matches.
    let out =
        Command::new(ctwatch_bin()).args(["pid", "--socket", sockets[1].1.to_str().unwrap(), &pid]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("/../"), "without nsenter: {err}");
}
